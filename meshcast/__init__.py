"""Meshcast: a multi-region service mesh. This package is the shared core; it imports no component."""

__version__ = "0.1.0"

"""Support for tests and benchmarks: lightweight simulated dataplanes that speak the real protocols."""

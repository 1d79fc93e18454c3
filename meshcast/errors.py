"""Errors shared by every component.

Each error renders as one line an operator can act on; the API maps them to HTTP statuses
(`http_status`) and the CLI prints `str(error)` and exits non-zero.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


class MeshcastError(Exception):
    """Base of every error Meshcast reports to a user."""

    http_status = 500


@dataclass(frozen=True)
class Violation:
    """One broken rule: where (`path`, e.g. ``spec.inbound[0].port``) and what (`message`)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def format_loc(loc: Iterable[int | str], prefix: str = "") -> str:
    """('spec', 'inbound', 0, 'port') -> 'spec.inbound[0].port': a field path as `Violation.path` spells it."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"  # a key with spaces, dots or control characters stays on one line
    return out


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class ValidationError(MeshcastError):
    """A document broke one or more rules. Nothing was stored."""

    http_status = 400

    def __init__(self, subject: str, violations: Sequence[Violation]) -> None:
        self.subject = subject
        self.violations = tuple(violations)
        body = "; ".join(str(v) for v in self.violations)
        super().__init__(f"{subject}: {body}" if subject else body)


class NotFound(MeshcastError):
    http_status = 404


class AlreadyExists(MeshcastError):
    http_status = 409


class Conflict(MeshcastError):
    """Optimistic concurrency failed: the resource changed since the version the caller read."""

    http_status = 409


class Unauthorized(MeshcastError):
    http_status = 401


class Forbidden(MeshcastError):
    http_status = 403


class StoreUnavailable(MeshcastError):
    """The backing store (etcd) could not be reached in time."""

    http_status = 503


class StoreUnauthorized(MeshcastError):
    """The backing store (etcd) refused our credentials, or denied a request to the user they name.

    A deployment error (wrong password, missing role or permission), not the API caller's: it maps to 500.
    """

    http_status = 500


def api_error_message(response: Any) -> str:
    """The one-line reason in a control plane API error answer (`{"error": ...}`), or its text, for any client
    response object with `.json()`, `.text` and `.reason_phrase` (httpx)."""
    try:
        return str(response.json().get("error") or response.text)
    except ValueError:
        return str(response.text.strip() or response.reason_phrase)

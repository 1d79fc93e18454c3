"""Identity for the mesh: the CA hierarchy and workload certificates (SPIFFE IDs), and control-plane tokens.

See design.md, "Identity and security". `ca` signs, `workload` requests and verifies, `tokens` issues
and checks dataplane and zone tokens; `certinfo` reads what a sidecar needs of a certificate.

Importing the package loads no `cryptography`: the names below are imported from their modules on first use
(PEP 562). The long-lived sidecar uses `_files`, `spiffe` and `certinfo`, which need only the standard library,
and so stays ~8 MB smaller (docs/benchmarks.md); `from meshcast.pki import MeshCA` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshcast.pki._clock import CLOCK_SKEW
    from meshcast.pki.ca import DEFAULT_INTERMEDIATE_VALIDITY, DEFAULT_ROOT_VALIDITY, DEFAULT_WORKLOAD_TTL, MeshCA
    from meshcast.pki.spiffe import parse_id, spiffe_id_of, trust_domain_id, workload_id
    from meshcast.pki.tokens import DATAPLANE, INGRESS, KINDS, ZONE, TokenClaims, TokenIssuer, TokenVerifier, key_id
    from meshcast.pki.workload import TrustBundle, build_csr, generate_workload_key, verify_chain

_EXPORTS = {
    "_clock": ("CLOCK_SKEW",),
    "ca": ("DEFAULT_INTERMEDIATE_VALIDITY", "DEFAULT_ROOT_VALIDITY", "DEFAULT_WORKLOAD_TTL", "MeshCA"),
    "spiffe": ("parse_id", "spiffe_id_of", "trust_domain_id", "workload_id"),
    "tokens": ("DATAPLANE", "INGRESS", "KINDS", "ZONE", "TokenClaims", "TokenIssuer", "TokenVerifier", "key_id"),
    "workload": ("TrustBundle", "build_csr", "generate_workload_key", "verify_chain"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "CLOCK_SKEW",
    "DATAPLANE",
    "DEFAULT_INTERMEDIATE_VALIDITY",
    "DEFAULT_ROOT_VALIDITY",
    "DEFAULT_WORKLOAD_TTL",
    "INGRESS",
    "KINDS",
    "ZONE",
    "MeshCA",
    "TokenClaims",
    "TokenIssuer",
    "TokenVerifier",
    "TrustBundle",
    "build_csr",
    "generate_workload_key",
    "key_id",
    "parse_id",
    "spiffe_id_of",
    "trust_domain_id",
    "verify_chain",
    "workload_id",
]


if not TYPE_CHECKING:  # mypy sees the imports above; a misspelt name stays an error for it

    def __getattr__(name: str) -> Any:
        home = _HOME.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
        globals()[name] = value
        return value

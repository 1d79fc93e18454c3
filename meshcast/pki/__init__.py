"""Identity for the mesh: the CA hierarchy and workload certificates (SPIFFE IDs), and control-plane tokens.

See design.md, "Identity and security". `ca` signs, `workload` requests and verifies, `tokens` issues
and checks dataplane and zone tokens.
"""

from meshcast.pki.ca import (
    CLOCK_SKEW,
    DEFAULT_INTERMEDIATE_VALIDITY,
    DEFAULT_ROOT_VALIDITY,
    DEFAULT_WORKLOAD_TTL,
    MeshCA,
)
from meshcast.pki.spiffe import parse_id, spiffe_id_of, trust_domain_id, workload_id
from meshcast.pki.tokens import (
    DATAPLANE,
    KINDS,
    ZONE,
    TokenClaims,
    TokenIssuer,
    TokenVerifier,
    key_id,
)
from meshcast.pki.workload import TrustBundle, build_csr, generate_workload_key, verify_chain

__all__ = [
    "CLOCK_SKEW",
    "DATAPLANE",
    "DEFAULT_INTERMEDIATE_VALIDITY",
    "DEFAULT_ROOT_VALIDITY",
    "DEFAULT_WORKLOAD_TTL",
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

"""A fresh workload key and its CSR, made in a short-lived child process so the sidecar never imports `cryptography`.

Key generation happens once per certificate (at start and at each renewal), while `cryptography` would stay in the
long-lived sidecar's memory for good (about 8 MB, docs/benchmarks.md). So the sidecar runs
`python -m dataplane.transport.keygen spiffe://<mesh>/<service>`, which writes one JSON object to its standard
output: `{"key": <PKCS#8 PEM>, "csr": <PEM>}`. The key travels over that pipe only, between two processes of the
sidecar: it never touches the disk here and never leaves the host (only the CSR goes to the zone CP).
"""

from __future__ import annotations

import json
import sys

from meshcast.errors import MeshcastError

TIMEOUT = 30.0


class KeygenError(MeshcastError):
    """The child process could not make a key and a CSR; the caller retries like any renewal failure."""


async def generate_key_and_csr(spiffe_id: str) -> tuple[bytes, bytes]:
    """(private key PEM, CSR PEM) for `spiffe_id`, from a child process. Raises KeygenError or trio.TooSlowError."""
    import trio  # loaded by the sidecar already; not at the top, so that the child does not load it

    command = [sys.executable, "-m", __name__, spiffe_id]
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode != 0:
        last = (result.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise KeygenError(f"key generation failed (exit {result.returncode}): {last}")
    try:
        made = json.loads(result.stdout)
        return made["key"].encode(), made["csr"].encode()
    except (ValueError, KeyError, TypeError, AttributeError):
        raise KeygenError("key generation printed no key and CSR") from None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m dataplane.transport.keygen spiffe://<mesh>/<service>", file=sys.stderr)
        return 2
    from cryptography.hazmat.primitives import serialization

    from meshcast.pki import build_csr, generate_workload_key

    key = generate_workload_key()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    json.dump({"key": key_pem.decode(), "csr": build_csr(key, argv[0]).decode()}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

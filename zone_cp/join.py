"""A federated zone CP joining the global CP: its zone token buys the etcd credentials of the zone's own user.

The credentials are kept in `<state_dir>/global-credentials.json` (0600), so a zone CP restarted while the global
CP is unreachable still reaches the global etcd. A token the global CP refuses (forged, another zone's, a disabled
zone) stops the zone CP with the global CP's one-line reason: it is not retried and no saved credentials are used
in its place. An expired token is the exception when credentials were saved by an earlier join: the zone has
joined already, its etcd user is what grants (or, once an operator removes it, denies) access, and a zone CP that
could not restart a month after it joined (zone tokens last 720 h by default) would be a time bomb. It starts from
the saved credentials and says so.
"""

from __future__ import annotations

import json
import logging

import trio

from meshcast.errors import MeshcastError, api_error_message
from meshcast.pki import _files
from zone_cp.config import ZoneCPConfig

log = logging.getLogger("meshcast.zone_cp.join")

CREDENTIALS_FILE = "global-credentials.json"
ATTEMPTS = 5


async def join_global(config: ZoneCPConfig) -> tuple[str | None, str | None]:
    """(etcd user, password) for the global etcd; (None, None) when it runs without authentication."""
    import httpx

    path = config.state_dir / CREDENTIALS_FILE
    if not config.global_cp:
        raise MeshcastError("--zone-token-file needs --global-cp: the global control plane's API URL")
    url = config.global_cp.rstrip("/") + "/v1/zones/join"
    problem = ""
    async with httpx.AsyncClient(timeout=10) as client:
        for attempt in range(ATTEMPTS):
            try:
                response = await client.post(url, headers={"authorization": f"Bearer {config.zone_token}"})
            except httpx.HTTPError as exc:
                problem = f"unreachable ({exc!r})"
                await trio.sleep(0.2 * 2**attempt)
                continue
            if response.status_code == 401 and "token expired at" in api_error_message(response) \
                    and path.exists():
                problem = f"the zone token has expired ({api_error_message(response)})"
                break
            if response.status_code in (400, 401, 403):
                raise MeshcastError(f"the global control plane refused zone {config.zone}'s token: "
                                    f"{api_error_message(response)} (HTTP {response.status_code})")
            if response.status_code != 200:
                problem = f"{api_error_message(response)} (HTTP {response.status_code})"
                await trio.sleep(0.2 * 2**attempt)
                continue
            body = response.json()
            if body.get("zone") != config.zone:
                raise MeshcastError(f"the zone token is for zone {body.get('zone')!r}, not {config.zone!r} (--zone)")
            _files.ensure_dir(path.parent)
            _files.write_private(path, json.dumps(body).encode())
            log.info("joined the global control plane as zone %s", config.zone)
            return body.get("etcdUser"), body.get("etcdPassword")
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        raise MeshcastError(f"cannot join the global control plane at {config.global_cp}: {problem}; "
                            "no saved credentials to start from") from None
    log.warning("global control plane at %s: %s; using the saved credentials", config.global_cp, problem)
    return body.get("etcdUser"), body.get("etcdPassword")

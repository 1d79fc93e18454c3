"""The sidecar's agent: keeps it registered, identified and configured by its zone control plane.

Theory of operation. On start the agent loads what it saved last time (the last accepted snapshot and its
identity: key 0600, certificate chain, trust bundle) and hands them to the proxy at once, so a sidecar restarted
while its zone CP is down serves from that state. Then, forever: register the Dataplane with the token, hold the
config stream, and for each snapshot validate it (`dataplane.config.parse_snapshot`), make sure an identity exists
when the mesh has mTLS on, apply it, save it atomically, and ACK; an invalid snapshot is NACKed with its reason and
the previous one stays in force. When the stream breaks the agent reconnects with capped, jittered back-off and the
proxy keeps its last configuration meanwhile. A separate task renews the certificate at two thirds of its life with
a fresh key (the key never leaves the sidecar: the CP signs a CSR; a short-lived child process makes both, see
`dataplane.transport.keygen`); it retries until it succeeds, and the proxy serves with the old certificate until
then. Heartbeats go up the stream at the interval the CP asks for.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from dataplane.config import InvalidConfig, ProxyConfig, parse_snapshot
from dataplane.transport.keygen import generate_key_and_csr
from dataplane.transport.tls import Identity
from meshcast.errors import MeshcastError
from meshcast.pki import _files
from meshcast.pki.spiffe import ZONE_TAG, workload_tags
from meshcast.wire.configstream import ProtocolError
from meshcast.wire.cpclient import ControlPlaneClient, ControlPlaneError
from meshcast.wire.h2duplex import StreamClosed

log = logging.getLogger("meshcast.dataplane.agent")

CONFIG_FILE = "config.json"
IDENTITY_DIR = "identity"
_RECOVERABLE = (MeshcastError, StreamClosed, ProtocolError, OSError, trio.TooSlowError)


class ControlPlaneAgent:
    def __init__(
        self,
        *,
        cp_url: str,
        token: str,
        dataplane: Mapping[str, Any],
        state_dir: Path,
        on_config: Callable[[ProxyConfig], None] = lambda config: None,
        on_identity: Callable[[Identity], None] = lambda identity: None,
        cp_ssl_context: ssl.SSLContext | None = None,
        max_backoff: float = 5.0,
    ) -> None:
        self.client = ControlPlaneClient(cp_url, token, ssl_context=cp_ssl_context)
        self.doc = dict(dataplane)
        self.mesh = str(self.doc.get("mesh") or "default")
        self.name = str(self.doc["name"])
        spec = self.doc["spec"]
        # The identity: an edge gateway's own name, else the first inbound's service.
        self.service = str(spec.get("gateway") or spec["inbound"][0]["service"])
        self.state_dir = state_dir
        self.on_config = on_config
        self.on_identity = on_identity
        self.max_backoff = max_backoff
        self.config: ProxyConfig | None = None
        self.version: str | None = None
        self.identity: Identity | None = None
        self.connected = False
        self.last_error: str | None = None
        self._identity_changed = trio.Event()
        self._ready = trio.Event()

    # --- persistence ------------------------------------------------------------------------------------------

    def load_saved(self) -> bool:
        """Apply the state saved by an earlier run; True if there was a usable config."""
        identity_dir = self.state_dir / IDENTITY_DIR
        try:
            identity = Identity(
                (identity_dir / "key.pem").read_bytes(),
                (identity_dir / "chain.pem").read_bytes(),
                (identity_dir / "bundle.pem").read_bytes(),
            )
            if identity.not_after <= datetime.now(UTC):
                log.warning("saved certificate expired at %s: a new one is needed", identity.not_after)
            elif not self._names_registration(identity):
                log.warning("saved certificate names %s %s, not this Dataplane's service and tags: a new one is "
                            "needed", identity.spiffe_id, identity.leaf.tags)
            else:
                self._set_identity(identity)
        except (OSError, ValueError):
            pass
        try:
            saved = json.loads((self.state_dir / CONFIG_FILE).read_bytes())
            config = parse_snapshot(saved["snapshot"], mesh=self.mesh, name=self.name)
        except (OSError, ValueError, KeyError, InvalidConfig) as exc:
            log.info("no usable saved config (%s): waiting for the control plane", exc)
            return False
        self.version = str(saved.get("version"))
        self.config = config
        self.on_config(config)
        log.info("serving saved config %s until the control plane answers", self.version)
        return True

    def _names_registration(self, identity: Identity) -> bool:
        """Whether a saved certificate names this Dataplane's service and the tags the zone CP would sign for it now
        (callers are selected by them, `from` MeshSubset), its zone aside; a restart after a change of them must
        not serve the old ones until the next renewal."""
        inbounds = [i for i in self.doc["spec"].get("inbound") or [] if i.get("service") == self.service]
        expected = {k: v for k, v in workload_tags(i.get("tags") or {} for i in inbounds).items() if k != ZONE_TAG}
        tags = {k: v for k, v in identity.leaf.tags.items() if k != ZONE_TAG}
        return identity.spiffe_id == f"spiffe://{self.mesh}/{self.service}" and tags == expected

    def _save_config(self, version: str, snapshot: dict[str, Any]) -> None:
        _files.ensure_dir(self.state_dir)
        data = json.dumps({"version": version, "snapshot": snapshot}).encode()
        _files.write_atomic(self.state_dir / CONFIG_FILE, data, mode=0o600)

    def _save_identity(self, identity: Identity) -> None:
        directory = self.state_dir / IDENTITY_DIR
        _files.ensure_dir(directory)
        _files.write_public(directory / "chain.pem", identity.chain_pem)
        _files.write_public(directory / "bundle.pem", identity.bundle_pem)
        _files.write_private(directory / "key.pem", identity.key_pem)

    def _set_identity(self, identity: Identity) -> None:
        self.identity = identity
        self.on_identity(identity)
        self._identity_changed.set()
        self._identity_changed = trio.Event()

    # --- lifetime ---------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run forever; `started` once a config is in force (saved, or the first one from the control plane)."""
        if self.load_saved() and (self.identity is not None or not self.config_needs_identity()):
            self._ready.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stay_connected)
            nursery.start_soon(self._rotate_forever)
            await self._ready.wait()
            task_status.started()

    async def follow_saved(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                           interval: float = 0.5) -> None:
        """Worker mode (`--workers N`): apply what the leading process saves, instead of talking to the CP.

        The leader writes the config and identity atomically (rename), so a worker polling their modification
        times always reads a whole file; it is `started` once it has a config (and an identity if needed)."""
        seen: tuple[float, ...] = ()
        started = False
        while True:
            stamps = tuple(_mtime(self.state_dir / name) for name in (CONFIG_FILE, f"{IDENTITY_DIR}/chain.pem"))
            if stamps != seen:
                seen = stamps
                if self.load_saved() and not started and (self.identity or not self.config_needs_identity()):
                    started = True
                    task_status.started()
            await trio.sleep(interval)

    def config_needs_identity(self) -> bool:
        return self.config is not None and self.config.mtls.enabled

    async def _stay_connected(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._session()
                backoff = 0.1
            except _RECOVERABLE as exc:
                self._lost(exc, backoff)
            except BaseExceptionGroup as group:
                # The session's nursery wraps what went wrong; anything but a lost control plane is a bug, or the
                # cancellation that stops the agent: raise that alone. A lost control plane that came with it (the
                # stream closing after the deregistration of a draining sidecar) must not outlive the cancellation.
                recoverable, rest = group.split(_RECOVERABLE)
                if rest is not None:
                    raise rest from None
                if recoverable is None:
                    raise
                self._lost(_first_leaf(recoverable), backoff)
            self.connected = False
            await trio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self.max_backoff)

    def _lost(self, exc: BaseException, backoff: float) -> None:
        self.connected = False
        self.last_error = str(exc) or type(exc).__name__
        log.warning("control plane unavailable (%s); retrying in %.1fs", self.last_error, backoff)

    async def _session(self) -> None:
        registered = await self.client.register(self.doc)
        interval = float(registered.get("heartbeatInterval", 2.0))
        async with self.client.config_stream(self.mesh, self.name) as stream, trio.open_nursery() as nursery:
            self.connected = True
            self.last_error = None
            nursery.start_soon(self._heartbeat, stream, interval)
            async for event in stream.snapshots():
                try:
                    config = parse_snapshot(event.snapshot, mesh=self.mesh, name=self.name)
                except InvalidConfig as exc:
                    log.warning("refusing config %s: %s", event.version, exc)
                    await stream.nack(event, str(exc))
                    continue
                if config.mtls.enabled and self.identity is None:
                    await self.renew_identity()
                self.config, self.version = config, event.version
                self.on_config(config)
                self._save_config(event.version, event.snapshot)
                await stream.ack(event)
                self._ready.set()
            nursery.cancel_scope.cancel()
        raise StreamClosed("the control plane ended the config stream")

    async def _heartbeat(self, stream: Any, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            await stream.heartbeat()

    async def renew_identity(self) -> Identity:
        """A fresh key, a CSR signed by the zone CP; applied and saved. Raises when the CP cannot sign."""
        key_pem, csr = await generate_key_and_csr(f"spiffe://{self.mesh}/{self.service}")
        issued = await self.client.sign_certificate(self.mesh, self.name, csr, self.service)
        identity = Identity(key_pem, issued["certificate"].encode(), issued["trustBundle"].encode())
        self._save_identity(identity)
        self._set_identity(identity)
        log.info("certificate for %s valid until %s", identity.spiffe_id, identity.not_after.isoformat())
        return identity

    async def _rotate_forever(self) -> None:
        retry = 1.0
        while True:
            identity = self.identity
            if identity is None:
                await self._identity_changed.wait()
                continue
            # At least a second between renewals, whatever the certificate says: never a tight loop on the CP.
            delay = max(1.0, (identity.rotate_at() - datetime.now(UTC)).total_seconds())
            if delay > 0:
                with trio.move_on_after(delay):
                    await self._identity_changed.wait()  # replaced early (e.g. first snapshot): re-plan
                    continue
            try:
                await self.renew_identity()
                retry = 1.0
            except (ControlPlaneError, *_RECOVERABLE) as exc:
                log.warning("certificate renewal failed (%s); retrying in %.0fs", exc, retry)
                await trio.sleep(retry)
                retry = min(retry * 2, 30.0)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns / 1e9
    except OSError:
        return 0.0

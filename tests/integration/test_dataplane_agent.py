"""The sidecar's agent against a real zone control plane: identity, config, persistence, restart, rotation."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio

from dataplane.agent import ControlPlaneAgent
from dataplane.config import ProxyConfig
from dataplane.transport.tls import Identity
from meshcast.testing.simdp import SimDataplane
from tests.integration.test_zone_cp import dataplane
from tests.support.zone import ZoneCPProcess


def _agent(cp: ZoneCPProcess, state: Path, doc: dict[str, Any], **kw: Any) -> ControlPlaneAgent:
    service = doc["spec"]["inbound"][0]["service"]
    return ControlPlaneAgent(cp_url=cp.url, token=cp.token(service), dataplane=doc, state_dir=state, **kw)


async def _wait(predicate: Any, within: float = 10.0) -> None:
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - polls the agent's plain attributes; no event to wait on
            await trio.sleep(0.05)


async def test_agent_gets_identity_and_config_and_serves_them_after_a_restart_without_cp(tmp_path: Path) -> None:
    cp = ZoneCPProcess(tmp_path / "cp", "--heartbeat-timeout", "3", "--heartbeat-interval", "0.5")
    cp.start()
    state = tmp_path / "sidecar"
    configs: list[ProxyConfig] = []
    identities: list[Identity] = []
    web_doc = dataplane("web-1", "web", 10010, ["backend"])
    try:
        agent = _agent(cp, state, web_doc, on_config=configs.append, on_identity=identities.append)
        backend = SimDataplane(cp.url, cp.token("backend"), dataplane("backend-1", "backend", 10001))
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            assert agent.identity is not None and agent.identity.spiffe_id == "spiffe://default/web"
            await nursery.start(backend.run)
            await _wait(lambda: bool(configs) and len(configs[-1].outbound[0].endpoints) == 1)
            assert configs[-1].outbound[0].endpoints[0].port == 10001
            assert agent.connected
            nursery.cancel_scope.cancel()
        key_file = state / "identity" / "key.pem"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert (state / "config.json").exists()
    finally:
        cp.stop()

    # The zone CP is gone. A restarted sidecar starts at once from what it saved, and keeps trying the CP.
    restarted_configs: list[ProxyConfig] = []
    restarted = ControlPlaneAgent(cp_url=cp.url, token="unused-while-down", dataplane=web_doc, state_dir=state,
                                  on_config=restarted_configs.append)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(2):
            await nursery.start(restarted.run)
        assert restarted_configs and restarted_configs[-1].outbound[0].endpoints[0].port == 10001
        assert restarted.identity is not None and restarted.identity.spiffe_id == "spiffe://default/web"
        await _wait(lambda: restarted.last_error is not None)
        assert not restarted.connected
        nursery.cancel_scope.cancel()


async def test_certificate_rotates_at_two_thirds_of_its_life(tmp_path: Path) -> None:
    cp = ZoneCPProcess(tmp_path / "cp")
    cp.start()
    try:
        (tmp_path / "mesh.yaml").write_text("type: Mesh\nname: short\nspec:\n  mtls: {certTTL: 10s}\n")
        assert (await cp.acli("apply", "-f", str(tmp_path / "mesh.yaml"))).returncode == 0
        doc = {**dataplane("api-1", "api", 10020), "mesh": "short"}
        identities: list[Identity] = []
        agent = ControlPlaneAgent(cp_url=cp.url, token=cp.token("api", mesh="short"), dataplane=doc,
                                  state_dir=tmp_path / "sidecar", on_identity=identities.append)
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            first = agent.identity
            assert first is not None
            assert first.not_after - first.issued_at == timedelta(seconds=10)
            await _wait(lambda: agent.identity is not first, within=12)
            renewed_at = datetime.now(UTC)
            second = agent.identity
            assert second is not None and second.spiffe_id == "spiffe://short/api"
            # Renewed about two thirds into its life, before it expired, with a fresh key.
            assert first.issued_at + timedelta(seconds=6) <= renewed_at < first.not_after
            assert second.key_pem != first.key_pem
            await trio.sleep(1.5)
            assert len(identities) == 2, "renewed again long before two thirds of the new certificate's life"
            nursery.cancel_scope.cancel()
    finally:
        cp.stop()


def test_a_sidecar_waiting_for_its_first_config_stops_on_sigterm(tmp_path: Path) -> None:
    """A refused token keeps a sidecar retrying without a config; SIGTERM must still stop it (it was ignored)."""
    import json
    import signal
    import subprocess

    from tests.support.zone import meshcast_cmd

    cp = ZoneCPProcess(tmp_path / "cp")
    cp.start()
    try:
        (tmp_path / "token").write_text("not-a-token")
        (tmp_path / "dp.json").write_text(json.dumps(dataplane("web-1", "web", 10001)))
        proc = subprocess.Popen(meshcast_cmd("dataplane", "run", "--cp", cp.url,
                                             "--token-file", str(tmp_path / "token"),
                                             "--dataplane-file", str(tmp_path / "dp.json"), "--admin-addr",
                                             "127.0.0.1:0", "--state-dir", str(tmp_path / "state")),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline().decode()  # the admin endpoint is up: signals are handled from here on
            assert "waiting for a config" in line, line
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        cp.stop()

"""A zone control plane on the etcd store across an etcd crash: nothing is lost and its watch resumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from meshcast.testing.simdp import SimDataplane
from tests.integration.test_zone_cp import MESH_YAML, dataplane
from tests.support.zone import ZoneCPProcess

pytestmark = pytest.mark.etcd


def _endpoint_ports(snapshot: dict[str, Any]) -> set[int]:
    return {e["port"] for e in snapshot["outbound"][0]["endpoints"]}


async def test_etcd_killed_and_restarted_under_a_running_zone_cp(etcd: Any, tmp_path: Path) -> None:
    cp = ZoneCPProcess(tmp_path / "state", "--store", "etcd", "--etcd-endpoints", etcd.client_url)
    cp.start()
    try:
        (tmp_path / "mesh.yaml").write_text(MESH_YAML)
        assert (await cp.acli("apply", "-f", str(tmp_path / "mesh.yaml"))).returncode == 0
        web = SimDataplane(cp.url, cp.token("web"), dataplane("web-1", "web", 10010, ["backend"]))
        b1 = SimDataplane(cp.url, cp.token("backend"), dataplane("backend-1", "backend", 10001))
        b2 = SimDataplane(cp.url, cp.token("backend"), dataplane("backend-2", "backend", 10002))
        async with trio.open_nursery() as nursery:
            await nursery.start(web.run)
            await nursery.start(b1.run)
            await web.wait_for(lambda s: _endpoint_ports(s) == {10001})

            await trio.to_thread.run_sync(etcd.kill)
            # The zone keeps its sidecars' config while the store is gone; the API says the store is unreachable.
            down = await cp.acli("get", "meshes")
            assert down.returncode != 0 and "HTTP 503" in down.stderr, down.stderr
            await trio.sleep(0.5)
            assert _endpoint_ports(web.snapshot or {}) == {10001}

            await trio.to_thread.run_sync(etcd.start)
            # A change made after the restart reaches the sidecar: the control plane's watch resumed.
            with trio.fail_after(20):
                while True:
                    try:
                        await nursery.start(b2.run)
                        break
                    except Exception:
                        await trio.sleep(0.2)
            await web.wait_for(lambda s: _endpoint_ports(s) == {10001, 10002}, within=20)
            nursery.cancel_scope.cancel()

        meshes = {d["name"] for d in yaml.safe_load_all((await cp.acli("get", "meshes", "-o", "yaml")).stdout)}
        assert meshes == {"default", "payments"}
        dps = {d["name"] for d in yaml.safe_load_all((await cp.acli("get", "dataplanes", "-o", "yaml")).stdout)}
        assert dps == {"web-1", "backend-1", "backend-2"}
    finally:
        cp.stop()

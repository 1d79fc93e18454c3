"""The speaker's IO loop against a fake ExaBGP (pipes) and a readiness server on loopback: no BGP daemon."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

import bgp.speaker
from bgp.settings import parse_region
from bgp.speaker import Speaker, probe_ready, says_draining


@dataclass
class Gateway:
    """A readiness endpoint: `mode` is "200", "503", "draining" (503 saying so, as a draining gateway does), "hang"
    or "close" (accept, then close without answering)."""

    mode: str = "200"
    port: int = 0
    requests: int = 0


async def _serve(gateway: Gateway, stream: trio.SocketStream) -> None:
    gateway.requests += 1
    async with stream:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            data += chunk
        if gateway.mode == "hang":
            await trio.sleep_forever()
        if gateway.mode == "close":
            return
        status = 200 if gateway.mode == "200" else 503
        body = b'{"ready": false, "draining": true}' if gateway.mode == "draining" else b""
        await stream.send_all(f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
                              .encode() + body)


@asynccontextmanager
async def gateway_running() -> AsyncIterator[Gateway]:
    gateway = Gateway()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"),
                                        lambda s: _serve(gateway, s), 0)
        gateway.port = listeners[0].socket.getsockname()[1]
        yield gateway
        nursery.cancel_scope.cancel()


@dataclass
class FakeExaBGP:
    """Our side of the speaker's pipes: reads its commands, answers them (`done` unless told otherwise)."""

    to_speaker: trio.lowlevel.FdStream
    from_speaker: trio.lowlevel.FdStream
    commands: list[str] = field(default_factory=list)
    refuse: set[int] = field(default_factory=set)  # indexes of commands to answer `error`
    _buffer: bytes = b""
    _sending: trio.Lock = field(default_factory=trio.Lock)

    async def send(self, data: bytes) -> None:
        """Every write to the speaker goes through here: the answers and a test's own messages may overlap."""
        async with self._sending:
            await self.to_speaker.send_all(data)

    async def run(self) -> None:
        try:
            while True:
                data = await self.from_speaker.receive_some(4096)
                if not data:
                    return
                self._buffer += data
                while b"\n" in self._buffer:
                    line, self._buffer = self._buffer.split(b"\n", 1)
                    self.commands.append(line.decode())
                    answer = b"error\n" if len(self.commands) - 1 in self.refuse else b"done\n"
                    await self.send(answer)
        except trio.ClosedResourceError:
            return  # the test closed the speaker's stdin

    async def wait_for(self, predicate: Any, within: float = 5.0) -> None:
        deadline = trio.current_time() + within
        while not predicate(self.commands):  # polled: commands arrive from another task's reads
            if trio.current_time() > deadline:
                raise AssertionError(f"commands so far: {self.commands}")
            await trio.sleep(0.01)


def region(tmp_path: Path, port: int, **changes: Any) -> Any:
    doc: dict[str, Any] = {
        "region": "eu-west", "routerId": "10.255.1.2", "localAs": 65001, "prefixes": ["198.51.100.1/32"],
        "peers": [{"address": "10.255.1.1", "as": 65000}],
        "attributes": {"med": 100},
        "readiness": {"url": f"http://127.0.0.1:{port}/ready", "interval": 0.1, "timeout": 0.09},
        "stateDir": str(tmp_path),
        "metrics": "127.0.0.1:0",  # any free port: tests run side by side
    }
    doc.update(changes)
    return parse_region(doc)


@asynccontextmanager
async def speaker_running(settings: Any) -> AsyncIterator[tuple[FakeExaBGP, trio.Event]]:
    """Runs the speaker on pipes; closing our end of its stdin (as a dying ExaBGP would) must end it."""
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    fake = FakeExaBGP(trio.lowlevel.FdStream(stdin_w), trio.lowlevel.FdStream(stdout_r))
    finished = trio.Event()

    async def speak(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await Speaker(settings, stdin_fd=stdin_r, stdout_fd=stdout_w).run(task_status=task_status)
        finished.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(speak)
        os.close(stdin_r)  # the speaker holds its own duplicates
        os.close(stdout_w)
        nursery.start_soon(fake.run)
        yield fake, finished
        await fake.to_speaker.aclose()
        with trio.fail_after(3):
            await finished.wait()
        await fake.from_speaker.aclose()


ANNOUNCE = "neighbor 10.255.1.1 announce route 198.51.100.1/32 next-hop self med 100 as-path [ 65001 ]"
WITHDRAW = "neighbor 10.255.1.1 withdraw route 198.51.100.1/32 next-hop self"


async def test_announces_when_ready_withdraws_when_not_and_exits_when_stdin_closes(tmp_path: Path) -> None:
    async with gateway_running() as gw, speaker_running(region(tmp_path, gw.port)) as (fake, finished):
        await fake.wait_for(lambda c: c == [ANNOUNCE])
        status = json.loads((tmp_path / "eu-west.status.json").read_text())
        assert status["announced"] is True and status["state"] == "announced"
        assert status["attributes"]["asPath"] == {"10.255.1.1": [65001]}
        gw.mode = "503"
        await fake.wait_for(lambda c: c == [ANNOUNCE, WITHDRAW])
        gw.mode = "200"
        await fake.wait_for(lambda c: c == [ANNOUNCE, WITHDRAW, ANNOUNCE])
        await trio.sleep(0.1)  # for our `done` to reach the speaker
    assert finished.is_set()
    status = json.loads((tmp_path / "eu-west.status.json").read_text())
    assert status["running"] is False and status["exabgp"]["pendingAcks"] == 0
    assert [h["action"] for h in status["history"]] == ["announce", "withdraw", "announce"]


def scrape(status_file: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The speaker's /metrics (its address from the status file), by series name and labels."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    address = json.loads(status_file.read_text())["metricsAddress"]
    text = httpx.get(f"http://{address}/metrics", timeout=5).text
    return {(sample.name, tuple(sorted((k, v) for k, v in sample.labels.items() if k != "region"))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def test_metrics_follow_the_route_the_probes_and_the_sessions(tmp_path: Path) -> None:
    status_file = tmp_path / "eu-west.status.json"
    async with gateway_running() as gw, speaker_running(region(tmp_path, gw.port)) as (fake, _):
        await fake.wait_for(lambda c: c == [ANNOUNCE])
        await fake.send(b"neighbor 10.255.1.1 up\n")
        await trio.sleep(0.05)
        up = await trio.to_thread.run_sync(scrape, status_file)
        assert up[("meshcast_bgp_announced", ())] == 1
        assert up[("meshcast_bgp_route_state", (("state", "announced"),))] == 1
        assert up[("meshcast_bgp_route_state", (("state", "withdrawn"),))] == 0
        assert up[("meshcast_bgp_route_changes_total", (("action", "announce"),))] == 1
        assert up[("meshcast_bgp_probes_total", (("observation", "ready"),))] >= 2
        assert up[("meshcast_bgp_session_established", (("peer", "10.255.1.1"),))] == 1
        assert up[("meshcast_bgp_commands_total", ())] == 1
        assert up[("meshcast_bgp_probe_duration_seconds_count", ())] >= 2
        assert up[("meshcast_bgp_last_probe_timestamp_seconds", ())] > 0
        gw.mode = "503"
        await fake.wait_for(lambda c: c == [ANNOUNCE, WITHDRAW])
        await trio.sleep(0.05)
        down = await trio.to_thread.run_sync(scrape, status_file)
        assert down[("meshcast_bgp_announced", ())] == 0
        assert down[("meshcast_bgp_route_state", (("state", "withdrawn"),))] == 1
        assert down[("meshcast_bgp_route_changes_total", (("action", "withdraw"),))] == 1
        assert down[("meshcast_bgp_probes_total", (("observation", "unready"),))] >= 3
        assert down[("meshcast_bgp_commands_refused_total", ())] == 0


async def test_a_draining_gateway_is_withdrawn_on_the_first_probe_that_says_so(tmp_path: Path) -> None:
    """No `fall` to wait for: a drain is the gateway going away on purpose, and every probe spent before the
    withdraw is time its new connections are left unanswered."""
    async with gateway_running() as gw, speaker_running(region(tmp_path, gw.port)) as (fake, _):
        await fake.wait_for(lambda c: c == [ANNOUNCE])
        gw.mode = "draining"
        await fake.wait_for(lambda c: c == [ANNOUNCE, WITHDRAW])
        await trio.sleep(0.05)  # the status file is written right after the command
        status = json.loads((tmp_path / "eu-west.status.json").read_text())
        assert "U" not in status["recentProbes"] and status["recentProbes"].endswith("D")
        assert status["history"][-1]["probe"] == "HTTP 503, draining"


@pytest.mark.parametrize("body, draining", [
    (b'{"ready": false, "draining": true}', True),
    (b'{"draining": "yes"}', False), (b'{"draining": false}', False), (b"[true]", False), (b"", False),
    (b"\xff not json", False),
])
def test_only_a_json_object_saying_draining_true_is_a_drain(body: bytes, draining: bool) -> None:
    assert says_draining(body) is draining


@pytest.mark.parametrize("mode", ["hang", "close"])
async def test_a_gateway_that_does_not_answer_is_unready(tmp_path: Path, mode: str) -> None:
    async with gateway_running() as gw, speaker_running(region(tmp_path, gw.port)) as (fake, _):
        await fake.wait_for(lambda c: c == [ANNOUNCE])
        gw.mode = mode
        await fake.wait_for(lambda c: c == [ANNOUNCE, WITHDRAW])


async def test_drain_file_withdraws_regardless(tmp_path: Path) -> None:
    async with gateway_running() as gw, speaker_running(region(tmp_path, gw.port)) as (fake, _):
        await fake.wait_for(lambda c: c == [ANNOUNCE])
        (tmp_path / "eu-west.drain").write_text("")
        await fake.wait_for(lambda c: c == [ANNOUNCE, WITHDRAW], within=2.0)
        status = json.loads((tmp_path / "eu-west.status.json").read_text())
        assert status["state"] == "drained" and status["drained"] is True
        (tmp_path / "eu-west.drain").unlink()
        await fake.wait_for(lambda c: c == [ANNOUNCE, WITHDRAW, ANNOUNCE])


async def test_refused_command_is_resent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bgp.speaker, "RESYNC_EVERY", 0.1)
    async with gateway_running() as gw, speaker_running(region(tmp_path, gw.port)) as (fake, _):
        fake.refuse = {0}
        await fake.wait_for(lambda c: c == [ANNOUNCE, ANNOUNCE])
        status = json.loads((tmp_path / "eu-west.status.json").read_text())
        assert status["exabgp"]["errors"] == 1 and status["exabgp"]["lastError"] == ANNOUNCE


async def test_graceful_restart_sends_end_of_rib_after_deciding(tmp_path: Path) -> None:
    async with gateway_running() as gw:
        settings = region(tmp_path, gw.port, gracefulRestart=5)
        async with speaker_running(settings) as (fake, _):
            await fake.send(b"neighbor 10.255.1.1 up\n")
            await fake.wait_for(lambda c: len(c) >= 2)
            assert fake.commands[:2] == [ANNOUNCE, "neighbor 10.255.1.1 announce eor ipv4 unicast"]
            await fake.send(b"neighbor 10.255.1.1 down - hold timer expired\n")
            await trio.sleep(0.1)
            status = json.loads((tmp_path / "eu-west.status.json").read_text())
            assert status["sessions"] == {"10.255.1.1": "down: hold timer expired"}


DUAL_PEERS = [{"address": "10.255.1.1", "as": 65000}, {"address": "2001:db8:1::1", "as": 65000},
              {"address": "10.255.3.1", "as": 65001}]  # the last over iBGP: no AS path
DUAL_PREFIXES = ["198.51.100.1/32", "2001:db8:ff::1/128", "192.0.2.0/24"]


def dual_commands(verb: str) -> set[str]:
    """What a dual-stack region must send: each prefix to the peers of its family, and nothing else."""
    tail = {("announce", 65000): " next-hop self med 100 as-path [ 65001 ]",
            ("announce", 65001): " next-hop self med 100",
            ("withdraw", 65000): " next-hop self", ("withdraw", 65001): " next-hop self"}
    return {f"neighbor {peer} {verb} route {prefix}{tail[verb, asn]}"
            for peer, asn, prefixes in [("10.255.1.1", 65000, ["198.51.100.1/32", "192.0.2.0/24"]),
                                        ("2001:db8:1::1", 65000, ["2001:db8:ff::1/128"]),
                                        ("10.255.3.1", 65001, ["198.51.100.1/32", "192.0.2.0/24"])]
            for prefix in prefixes}


def family_mismatches(commands: list[str]) -> list[str]:
    """Route commands whose prefix is not of the neighbor's family (an IPv4 prefix to an IPv6 peer, or the reverse)."""
    out = []
    for command in commands:
        words = command.split()
        if words[2] in ("announce", "withdraw") and words[3] == "route" and (":" in words[1]) != (":" in words[4]):
            out.append(command)
    return out


async def test_a_dual_stack_region_sends_each_prefix_only_to_the_peers_of_its_family(tmp_path: Path) -> None:
    announce, withdraw = dual_commands("announce"), dual_commands("withdraw")
    n = len(announce)
    async with gateway_running() as gw:
        settings = region(tmp_path, gw.port, prefixes=DUAL_PREFIXES, peers=DUAL_PEERS)
        async with speaker_running(settings) as (fake, _):
            await fake.wait_for(lambda c: len(c) >= n)
            assert set(fake.commands) == announce and len(fake.commands) == n
            gw.mode = "503"
            await fake.wait_for(lambda c: len(c) >= 2 * n)
            assert set(fake.commands[n:]) == withdraw and len(fake.commands) == 2 * n
            gw.mode = "200"
            await fake.wait_for(lambda c: len(c) >= 3 * n)
            assert set(fake.commands[2 * n:]) == announce
            assert family_mismatches(fake.commands) == []
            await trio.sleep(0.05)  # the status file is written right after the commands
            status = json.loads((tmp_path / "eu-west.status.json").read_text())
            assert status["peerPrefixes"] == {"10.255.1.1": ["198.51.100.1/32", "192.0.2.0/24"],
                                              "2001:db8:1::1": ["2001:db8:ff::1/128"],
                                              "10.255.3.1": ["198.51.100.1/32", "192.0.2.0/24"]}


async def test_a_dual_stack_region_sends_end_of_rib_per_peer_for_its_families_only(tmp_path: Path) -> None:
    async with gateway_running() as gw:
        settings = region(tmp_path, gw.port, prefixes=DUAL_PREFIXES, peers=DUAL_PEERS, gracefulRestart=5)
        async with speaker_running(settings) as (fake, _):
            await fake.wait_for(lambda c: len(c) >= len(dual_commands("announce")))
            await fake.send(b"neighbor 2001:db8:1::1 up\nneighbor 10.255.1.1 up\n")
            await fake.wait_for(lambda c: sum("eor" in x for x in c) >= 2)
            await fake.send(b"neighbor 10.255.3.1 up\n")
            await fake.wait_for(lambda c: sum("eor" in x for x in c) >= 3)
            await trio.sleep(0.2)  # two more probes: no further End-of-RIB may follow
            assert sorted(c for c in fake.commands if "eor" in c) == [
                "neighbor 10.255.1.1 announce eor ipv4 unicast", "neighbor 10.255.3.1 announce eor ipv4 unicast",
                "neighbor 2001:db8:1::1 announce eor ipv6 unicast"]


async def test_shutdown_message_ends_the_speaker(tmp_path: Path) -> None:
    async with gateway_running() as gw, speaker_running(region(tmp_path, gw.port)) as (fake, finished):
        await fake.wait_for(lambda c: ANNOUNCE in c)  # a loaded machine may also see a probe time out
        await fake.send(b"shutdown 1 2\n")
        with trio.fail_after(2):
            await finished.wait()


async def test_probe_results() -> None:
    async with gateway_running() as gw:
        ok = await probe_ready("127.0.0.1", gw.port, "/ready", 1)
        assert ok.ok and ok.detail == "HTTP 200"
        gw.mode = "503"
        unready = await probe_ready("127.0.0.1", gw.port, "/ready", 1)
        assert (unready.ok, unready.detail, unready.draining) == (False, "HTTP 503", False)
        gw.mode = "draining"
        draining = await probe_ready("127.0.0.1", gw.port, "/ready", 1)
        assert (draining.ok, draining.detail, draining.draining) == (False, "HTTP 503, draining", True)
        gw.mode = "hang"
        result = await probe_ready("127.0.0.1", gw.port, "/ready", 0.05)
        assert not result.ok and result.detail == "no answer within 50 ms"
    refused = await probe_ready("127.0.0.1", 1, "/ready", 0.5)
    assert not refused.ok and refused.detail.startswith("cannot connect")

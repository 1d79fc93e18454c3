"""The BGP speaker: the program ExaBGP runs as its `process`. The only module of `bgp/` that does IO.

Theory of operation
-------------------
ExaBGP starts this program with a pipe on each side: we write text API commands to stdout and read ExaBGP's answers
(`done`/`error`) on stdin. Two tasks share one nursery:
- `_read_answers` matches answers to commands (`ApiChannel`). When stdin closes, ExaBGP is gone (stopped, killed,
  crashed): the nursery is cancelled and the program exits, so it never outlives its ExaBGP.
- `_probe_loop` ticks every `readiness.interval` (100 ms) on a fixed cadence: it reads the drain flag (a file),
  probes the gateway's readiness URL on loopback (`GET`, 200 = ready; any other status, a refused connection or no
  answer within `readiness.timeout` = unready; an unready answer whose JSON body says `"draining": true` = drained,
  like the flag), feeds the outcome to the `Damper` (bgp/fsm.py) and sends what it decides, one command per peer
  and prefix that peer carries (`RegionSettings.prefixes_for`: a dual-stack region's IPv4 prefixes go to its IPv4
  peers only, its IPv6 prefixes to its IPv6 peers only), flushed at once. Every change, and at least once a
  second, it rewrites the status file.
A command ExaBGP refuses (`error`) leaves ExaBGP's view uncertain: the speaker re-sends its current decision, at
most every `RESYNC_EVERY` seconds, until ExaBGP accepts it.
With graceful restart on, exabgp.conf sets `manual-eor`: when a session comes up (`neighbor A up`), the speaker
sends End-of-RIB for the family that session carries once it has decided (or after `EOR_DEADLINE`), so a restarted
ExaBGP does not make the router flush the stale route moments before the new speaker re-announces it.
The speaker keeps no state across restarts on purpose: ExaBGP keeps a dead speaker's routes and respawns it, and the
new one starts UNKNOWN and asserts its first decision either way (see bgp/fsm.py).
Prometheus metrics (bgp/metrics.py) are served from a thread on the region's `metrics` address, and their address
is in the status file.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import h11
import trio

from bgp.commands import (
    ApiChannel,
    CommandDone,
    CommandFailed,
    MessageReceived,
    NeighborDown,
    NeighborUp,
    ShutdownAnnounced,
    UnsolicitedAnswer,
    announce_command,
    as_path,
    eor_command,
    withdraw_command,
)
from bgp.fsm import Action, Damper, DampingRules, Observation, RouteState, Transition
from bgp.metrics import SpeakerMetrics, serve_metrics
from bgp.settings import RegionSettings
from bgp.status import write_status

log = logging.getLogger("meshcast.bgp.speaker")

STATUS_EVERY = 1.0  # seconds between status rewrites when nothing changes
RESYNC_EVERY = 5.0  # seconds between re-sends of the current decision after ExaBGP refused a command
EOR_DEADLINE = 1.0  # with graceful restart: seconds after a session comes up to send End-of-RIB if still undecided
RECENT_PROBES = 50
HISTORY = 20


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    latency_ms: float
    draining: bool = False  # the gateway said it is draining: withdraw now, no `fall` to wait for


MAX_BODY = 65536  # of an unready answer, read for its `draining` flag


def says_draining(body: bytes) -> bool:
    """An unready answer's JSON body with `"draining": true` (what `meshcast gateway run` answers once draining)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("draining") is True


async def probe_ready(host: str, port: int, target: str, within: float) -> ProbeResult:
    """One `GET target` on a fresh connection: ready only on a 2xx answer within `within` seconds. An unready
    answer whose JSON body says `"draining": true` is a drain (the gateway is going away on purpose)."""
    start = time.monotonic()

    def result(ok: bool, detail: str, draining: bool = False) -> ProbeResult:
        return ProbeResult(ok, detail, round((time.monotonic() - start) * 1000, 1), draining)

    with trio.move_on_after(within):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            return result(False, f"cannot connect: {exc.strerror or exc}")
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            request = h11.Request(method="GET", target=target, headers=[
                ("host", f"{host}:{port}"), ("connection", "close"), ("user-agent", "meshcast-bgp-speaker")])
            try:
                await stream.send_all(conn.send(request) + (conn.send(h11.EndOfMessage()) or b""))
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(4096))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                        if 200 <= status < 300:
                            return result(True, f"HTTP {status}")
                        body = b""  # read on: does it say it is draining?
                    elif isinstance(event, h11.Data):
                        body += event.data
                        if len(body) > MAX_BODY:
                            return result(False, f"HTTP {status}")
                    elif isinstance(event, h11.EndOfMessage):
                        draining = says_draining(body)
                        return result(False, f"HTTP {status}" + (", draining" if draining else ""), draining)
                    elif isinstance(event, h11.ConnectionClosed):
                        return result(False, "connection closed without an answer")
            except (trio.BrokenResourceError, OSError) as exc:
                return result(False, f"connection failed: {exc}")
            except h11.ProtocolError as exc:
                return result(False, f"not an HTTP answer: {exc}")
    return result(False, f"no answer within {within * 1000:.0f} ms")


class Speaker:
    """Owns one region's announcements through one ExaBGP: its damper, its command channel and its status file.

    `run()` returns when ExaBGP closes our stdin or announces its shutdown. It raises only on a broken API stream
    (`ApiProtocolError`) or a pipe ExaBGP closed under a write (`trio.BrokenResourceError`): both mean ExaBGP is gone.
    """

    def __init__(self, settings: RegionSettings, *, stdin_fd: int = 0, stdout_fd: int = 1) -> None:
        self.settings = settings
        interval = settings.readiness.interval
        d = settings.damping
        self.damper = Damper(DampingRules.from_seconds(rise=d.rise, fall=d.fall, flap_window=d.flap_window,
                                                       max_changes=d.max_changes, reuse=d.reuse, interval=interval))
        self.channel = ApiChannel()
        self.status_file = settings.status_file
        self.drain_file = settings.drain_file
        self._stdin_fd, self._stdout_fd = stdin_fd, stdout_fd
        self._attrs = settings.effective_attributes()
        self._recent: deque[str] = deque(maxlen=RECENT_PROBES)
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._last_probe: dict[str, Any] = {}
        self._reason = "starting: waiting for the gateway's first probes"
        self._since = time.time()
        self._started = self._since
        self._drained = False
        self._sent = self._errors = 0
        self._last_error: str | None = None
        self._resync_at: float | None = None  # trio time at which to re-send the current decision
        self._status_at = 0.0
        self._sessions: dict[str, str] = {str(p.address): "not established" for p in settings.peers}
        self._eor_due: dict[str, float] = {}  # peer address -> trio time by which to send End-of-RIB
        self.metrics = SpeakerMetrics(settings.region, self._sessions, [state.value for state in RouteState])
        self.metrics.route(self.damper.state.value, self.damper.announced)
        self.metrics_address: str | None = None  # host:port where /metrics is served, once it is

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        routes = "; ".join(f"{' '.join(map(str, s.prefixes_for(p)))} to {p.address}" for p in s.peers)
        log.info("region %s (%s): %s; probing %s every %.0f ms; rise %d, fall %d", s.region, s.role, routes,
                 s.readiness.url, s.readiness.interval * 1000, s.damping.rise, s.damping.fall)
        served = serve_metrics(self.metrics, *s.metrics) if s.metrics is not None else None
        if served is not None:
            host, port = str(served[0].server_address[0]), int(served[0].server_address[1])
            self.metrics_address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            log.info("metrics on http://%s/metrics", self.metrics_address)
        stdin = trio.lowlevel.FdStream(os.dup(self._stdin_fd))
        stdout = trio.lowlevel.FdStream(os.dup(self._stdout_fd))
        try:
            async with stdin, stdout, trio.open_nursery() as nursery:
                nursery.start_soon(self._read_answers, stdin, nursery.cancel_scope)
                nursery.start_soon(self._probe_loop, stdout, nursery.cancel_scope)
                task_status.started()
        finally:
            self._write_status(running=False)
            if served is not None:
                served[0].shutdown()
                served[0].server_close()

    async def _read_answers(self, stdin: trio.lowlevel.FdStream, scope: trio.CancelScope) -> None:
        while True:
            data = await stdin.receive_some(4096)
            if not data:
                log.info("ExaBGP closed our stdin: exiting")
                scope.cancel()
                return
            events = self.channel.receive_data(data)
            for event in events:
                if isinstance(event, CommandFailed):
                    self._errors += 1
                    self.metrics.refused.inc()
                    self._last_error = event.command
                    log.error("ExaBGP refused: %s", event.command)
                    if self._resync_at is None:
                        self._resync_at = trio.current_time() + RESYNC_EVERY
                elif isinstance(event, ShutdownAnnounced):
                    log.info("ExaBGP is shutting down: exiting")
                    scope.cancel()
                    return
                elif isinstance(event, UnsolicitedAnswer):
                    log.warning("answer %r with no command waiting (is api.ack off?)", event.answer)
                elif isinstance(event, NeighborUp):
                    log.info("BGP session with %s established", event.address)
                    self._sessions[event.address] = "established"
                    self.metrics.session(event.address, True)
                    if self.settings.graceful_restart:
                        self._eor_due[event.address] = trio.current_time() + EOR_DEADLINE
                elif isinstance(event, NeighborDown):
                    log.info("BGP session with %s down: %s", event.address, event.reason)
                    self._sessions[event.address] = f"down: {event.reason}"
                    self.metrics.session(event.address, False)
                    self._eor_due.pop(event.address, None)
                elif isinstance(event, MessageReceived):
                    log.debug("from ExaBGP: %s", event.line)
                elif isinstance(event, CommandDone):
                    pass
            if any(isinstance(e, CommandFailed | NeighborUp | NeighborDown) for e in events):
                self._write_status(running=True)  # worth showing at once

    async def _probe_loop(self, stdout: trio.lowlevel.FdStream, scope: trio.CancelScope) -> None:
        try:
            await self._probe_forever(stdout)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("ExaBGP closed our stdout: exiting")
            scope.cancel()

    async def _probe_forever(self, stdout: trio.lowlevel.FdStream) -> None:
        readiness = self.settings.readiness
        next_at = trio.current_time()
        while True:
            self._drained = self.drain_file.exists()
            probe = await probe_ready(readiness.host, readiness.port, readiness.target, readiness.timeout)
            self._last_probe = {"ok": probe.ok, "detail": probe.detail, "latencyMs": probe.latency_ms,
                                "at": time.time()}
            if self._drained or probe.draining:
                observation = Observation.DRAINED
            else:
                observation = Observation.READY if probe.ok else Observation.UNREADY
            self._recent.append(observation.value[0].upper())
            self.metrics.probed(observation.value, probe.latency_ms / 1000)
            transition = self.damper.step(observation)
            await self._apply(transition, stdout, probe)
            if self._eor_due:
                await self._send_eors(stdout)
            next_at += readiness.interval
            now = trio.current_time()
            if next_at < now:  # a slow tick: keep the cadence from here rather than probing in a burst
                next_at = now
            await trio.sleep_until(next_at)

    async def _apply(self, transition: Transition, stdout: trio.lowlevel.FdStream, probe: ProbeResult) -> None:
        changed = transition.before is not transition.after
        if transition.action is not Action.NONE:
            self.metrics.changed(transition.action.value)
            await self._send(stdout, transition.action)
            self._history.append({"at": time.time(), "action": transition.action.value,
                                  "reason": transition.reason, "probe": probe.detail})
            log.info("%s %s: %s (last probe: %s)", transition.action.value,
                     " ".join(map(str, self.settings.prefixes)), transition.reason, probe.detail)
        elif self._resync_at is not None and trio.current_time() >= self._resync_at:
            action = self._current_action()
            if action is not Action.NONE:
                log.warning("re-sending %s after ExaBGP refused a command", action.value)
                await self._send(stdout, action)
            self._resync_at = None
        if changed:
            self.metrics.route(transition.after.value, self.damper.announced)
            self._since = time.time()
            if transition.reason:
                self._reason = transition.reason
            elif transition.after is RouteState.WITHDRAWN:
                self._reason = "waiting for the gateway to be ready (rise)"
            elif transition.after is RouteState.UNKNOWN:
                self._reason = "starting"
        if changed or time.monotonic() - self._status_at >= STATUS_EVERY:
            self._write_status(running=True)

    async def _send_eors(self, stdout: trio.lowlevel.FdStream) -> None:
        decided = self.damper.state is not RouteState.UNKNOWN
        now = trio.current_time()
        payload = bytearray()
        for peer in self.settings.peers:
            due = self._eor_due.get(str(peer.address))
            if due is None or not (decided or now >= due):
                continue
            del self._eor_due[str(peer.address)]
            for version in sorted({p.version for p in self.settings.prefixes_for(peer)}):
                payload += self.channel.send(eor_command(peer, version))
                self._sent += 1
                self.metrics.commands.inc()
        if payload:
            await stdout.send_all(bytes(payload))

    def _current_action(self) -> Action:
        if self.damper.state is RouteState.ANNOUNCED:
            return Action.ANNOUNCE
        if self.damper.state is RouteState.UNKNOWN:
            return Action.NONE
        return Action.WITHDRAW

    async def _send(self, stdout: trio.lowlevel.FdStream, action: Action) -> None:
        s = self.settings
        payload = bytearray()
        for peer in s.peers:
            for prefix in s.prefixes_for(peer):
                command = (announce_command(peer, prefix, self._attrs, s.local_as) if action is Action.ANNOUNCE
                           else withdraw_command(peer, prefix))
                payload += self.channel.send(command)
                self._sent += 1
                self.metrics.commands.inc()
        await stdout.send_all(bytes(payload))  # one write: the pipe is unbuffered, nothing waits for a flush

    def status(self, *, running: bool) -> dict[str, Any]:
        s, d, rules = self.settings, self.damper, self.damper.rules
        interval = s.readiness.interval
        return {
            "region": s.region, "role": s.role, "pid": os.getpid(), "running": running,
            "startedAt": self._started, "updatedAt": time.time(),
            "state": d.state.value, "announced": d.announced, "since": self._since, "reason": self._reason,
            "prefixes": [str(p) for p in s.prefixes],
            "peers": [f"{p.address} (AS{p.asn})" for p in s.peers],
            "peerPrefixes": {str(p.address): [str(x) for x in s.prefixes_for(p)] for p in s.peers},
            "attributes": {"med": self._attrs.med, "prepend": self._attrs.prepend,
                           "asPath": {str(p.address): list(as_path(p, self._attrs, s.local_as)) for p in s.peers},
                           "communities": list(self._attrs.communities + self._attrs.large_communities)},
            "sessions": dict(self._sessions), "gracefulRestart": s.graceful_restart,
            "metricsAddress": self.metrics_address,
            "readinessUrl": s.readiness.url, "drained": self._drained, "drainFile": str(self.drain_file),
            "lastProbe": self._last_probe, "recentProbes": "".join(self._recent),
            "damping": {"rise": rules.rise, "fall": rules.fall, "readyRun": d.ready_run, "unreadyRun": d.unready_run,
                        "changesInWindow": d.changes_in_window, "maxChanges": rules.max_changes,
                        "windowSeconds": round(rules.window * interval, 3),
                        "reuseSeconds": round(rules.reuse * interval, 3), "intervalSeconds": interval},
            "exabgp": {"commandsSent": self._sent, "pendingAcks": self.channel.pending, "errors": self._errors,
                       "lastError": self._last_error},
            "history": list(self._history),
        }

    def _write_status(self, *, running: bool) -> None:
        try:
            write_status(self.status_file, self.status(running=running))
        except OSError as exc:  # a full disk must not stop the announcements
            log.warning("cannot write %s: %s", self.status_file, exc)
        self._status_at = time.monotonic()


def run_speaker(settings: RegionSettings) -> None:
    """Run until ExaBGP goes away. Logs go to stderr (ExaBGP passes its own stderr on)."""
    trio.run(Speaker(settings).run)

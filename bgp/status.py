"""The speaker's status file: what is announced and why, as JSON, replaced atomically (write a sibling, rename).

Readers (`meshcast bgp status`) never see a half-written file. The speaker rewrites it on every route change and at
least once a second, so an `updatedAt` older than a few seconds means the speaker is not running.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

STALE_AFTER = 5.0  # seconds without a rewrite after which a status is shown as stale


def write_status(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(doc, handle, indent=2)
            handle.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_status(path: Path) -> dict[str, Any]:
    """Raises OSError when the file cannot be read and ValueError when it is not a status document."""
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or "state" not in doc:
        raise ValueError(f"{path} is not a speaker status file")
    return doc


def _ago(now: float, then: float | None) -> str:
    if then is None:
        return "never"
    seconds = max(0.0, now - then)
    if seconds < 120:
        return f"{seconds:.1f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _only(prefixes: list[str] | None, doc: dict[str, Any]) -> str:
    """A peer's prefixes, when it does not carry them all (a dual-stack region: each prefix goes to its family)."""
    if prefixes is None or prefixes == doc.get("prefixes"):
        return ""
    return f" [{' '.join(prefixes) or 'nothing'}]"


def format_status(doc: dict[str, Any], now: float | None = None) -> str:
    """The status for people: one fact per line, the reason for the current state first."""
    now = time.time() if now is None else now
    updated = doc.get("updatedAt")
    stale = updated is None or now - updated > STALE_AFTER
    lines = [f"region {doc.get('region')} ({doc.get('role')}), speaker pid {doc.get('pid')}, "
             f"updated {_ago(now, updated)}" + ("  [STALE: is the speaker running?]" if stale else "")]
    state = doc["state"]
    verb = "ANNOUNCED" if doc.get("announced") else "NOT ANNOUNCED"
    lines.append(f"prefixes {', '.join(doc.get('prefixes', []))}: {verb} (state {state}, since "
                 f"{_ago(now, doc.get('since'))})")
    if doc.get("reason"):
        lines.append(f"  why: {doc['reason']}")
    attrs = doc.get("attributes") or {}
    lines.append(f"  attributes: med {attrs.get('med')}, prepend {attrs.get('prepend')}, communities "
                 f"{' '.join(attrs.get('communities') or []) or '-'}")
    peers = doc.get("peers") or []
    sessions = doc.get("sessions") or {}
    carried = doc.get("peerPrefixes") or {}
    described = [f"{p} {sessions.get(p.split()[0], '')}".strip() + _only(carried.get(p.split()[0]), doc)
                 for p in peers]
    lines.append(f"  peers: {', '.join(described) or '-'}")
    lines.append(f"  drained: {'yes' if doc.get('drained') else 'no'} (flag file {doc.get('drainFile')})")
    probe = doc.get("lastProbe") or {}
    if probe:
        lines.append(f"  last probe: {'ready' if probe.get('ok') else 'UNREADY'} ({probe.get('detail')}, "
                     f"{probe.get('latencyMs')} ms, {_ago(now, probe.get('at'))})")
    recent = doc.get("recentProbes")
    if recent:
        lines.append(f"  recent probes (oldest first, R ready, U unready, D drained): {recent}")
    damping = doc.get("damping") or {}
    if damping:
        lines.append(f"  damping: ready run {damping.get('readyRun')}/{damping.get('rise')} (rise), unready run "
                     f"{damping.get('unreadyRun')}/{damping.get('fall')} (fall), route changes in window "
                     f"{damping.get('changesInWindow')}/{damping.get('maxChanges')} "
                     f"({damping.get('windowSeconds')} s), reuse after {damping.get('reuseSeconds')} s ready")
    exabgp = doc.get("exabgp") or {}
    if exabgp:
        lines.append(f"  exabgp: {exabgp.get('commandsSent')} commands sent, {exabgp.get('pendingAcks')} awaiting "
                     f"an answer, {exabgp.get('errors')} refused" +
                     (f" (last: {exabgp['lastError']})" if exabgp.get("lastError") else ""))
    for entry in (doc.get("history") or [])[-5:]:
        lines.append(f"  {_ago(now, entry.get('at'))}: {entry.get('action')} ({entry.get('reason')})")
    return "\n".join(lines)

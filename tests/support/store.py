"""Helpers shared by the store tests (contract suite and etcd integration)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from meshcast.resources import Resource, parse_resource
from meshcast.store import ResourceChanged


def mesh(name: str, **labels: str) -> Resource:
    return parse_resource({"type": "Mesh", "name": name, "labels": labels})


async def take(events: AsyncIterator[ResourceChanged], count: int, within: float = 15.0) -> list[ResourceChanged]:
    """The next `count` events, failing the test if they take longer than `within` seconds."""
    out: list[ResourceChanged] = []
    with trio.fail_after(within):
        while len(out) < count:
            out.append(await events.__anext__())
    return out


async def assert_quiet(events: AsyncIterator[ResourceChanged], wait: float = 0.3) -> None:
    """No further event arrives within `wait` seconds."""
    with trio.move_on_after(wait):
        extra = await events.__anext__()
        pytest.fail(f"unexpected extra event {extra}")

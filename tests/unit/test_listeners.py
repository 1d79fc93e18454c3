"""ListenerSet on real loopback sockets: a port held by someone else leaves the set not all bound, and the next
reconcile binds it once it is free."""

from __future__ import annotations

import socket

import trio

from dataplane.config import ProxyConfig
from dataplane.listeners import ListenerSet, ListenerSpec
from meshcast.wire.leanio import LeanSocketStream
from tests.support.ports import free_port


def config(*ports: int) -> ProxyConfig:
    return ProxyConfig.model_validate({"mesh": "default", "dataplane": "web", "address": "127.0.0.1",
                                       "outbound": [{"service": f"s{p}", "port": p} for p in ports]})


async def test_a_held_port_is_reported_and_bound_once_free() -> None:
    async def handler(stream: LeanSocketStream) -> None:
        await stream.aclose()

    def handler_for(spec: ListenerSpec) -> object:
        return handler

    free, held = free_port(), free_port()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", held))
    squatter.listen()
    wanted = config(free, held)
    async with trio.open_nursery() as nursery:
        listeners = ListenerSet(handler_for, nursery)  # type: ignore[arg-type]
        await listeners.reconcile(wanted, nursery)
        assert not listeners.all_bound(wanted)
        assert [spec.port for spec in listeners.errors] == [held]
        assert "cannot listen on 127.0.0.1:" in next(iter(listeners.errors.values()))
        squatter.close()
        await listeners.reconcile(wanted, nursery)
        assert listeners.all_bound(wanted) and not listeners.errors
        stream = await trio.open_tcp_stream("127.0.0.1", held)  # accepted by the listener now
        await stream.aclose()
        listeners.stop_all()
        assert not listeners.all_bound(wanted)


async def test_concurrent_reconciles_bind_each_listener_once() -> None:
    """The start-up reconcile and one for a config change may overlap: neither files the other's bind as an error
    (which left a sidecar unready for good)."""
    async def handler(stream: LeanSocketStream) -> None:
        await stream.aclose()

    wanted = config(free_port(), free_port(), free_port())
    async with trio.open_nursery() as nursery:
        listeners = ListenerSet(lambda spec: handler, nursery)
        async with trio.open_nursery() as both:
            both.start_soon(listeners.reconcile, wanted, nursery)
            both.start_soon(listeners.reconcile, wanted, nursery)
        assert listeners.all_bound(wanted) and not listeners.errors
        listeners.stop_all()

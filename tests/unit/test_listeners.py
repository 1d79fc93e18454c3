"""ListenerSet on real loopback sockets: a port held by someone else leaves the set not all bound, and the next
reconcile binds it once it is free; stopping serves what is queued; a draining set leaves new connections
unanswered."""

from __future__ import annotations

import socket

import pytest
import trio

from dataplane.config import ProxyConfig
from dataplane.listeners import ListenerSet, ListenerSpec
from meshcast.wire.leanio import LeanSocketStream, drop_new_connections, listen_tcp
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


async def answer_and_close(stream: LeanSocketStream) -> None:
    await stream.receive_some()
    await stream.send_all(b"answered")
    await stream.aclose()


def connect_and_ask(port: int) -> socket.socket:
    """A client whose connection the kernel completes (queued on the listener) and whose request is sent."""
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    client.sendall(b"request")
    return client


async def test_stopping_a_listener_serves_the_connections_queued_on_it() -> None:
    """Connections completed by the kernel but not yet accepted when the listener stops are served, not reset (a
    draining gateway reset a few of its clients' requests this way)."""
    port = free_port()
    wanted = config(port)
    async with trio.open_nursery() as nursery:
        listeners = ListenerSet(lambda spec: answer_and_close, nursery)
        await listeners.reconcile(wanted, nursery)
        # no checkpoint between the connects and the stop: the accept task never sees these connections
        clients = [connect_and_ask(port) for _ in range(3)]
        listeners.stop_all()
        for client in clients:
            answer = await trio.to_thread.run_sync(client.recv, 100)
            client.close()
            assert answer == b"answered"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


async def test_new_connections_go_unanswered_while_queued_and_open_ones_are_served() -> None:
    port = free_port()
    wanted = config(port)
    async with trio.open_nursery() as nursery:
        listeners = ListenerSet(lambda spec: answer_and_close, nursery)
        await listeners.reconcile(wanted, nursery)
        queued = connect_and_ask(port)
        listeners.drop_new_connections()
        # a new connection is neither accepted nor refused: its SYN goes unanswered, so connect() times out
        late = socket.socket()
        late.settimeout(0.3)
        with pytest.raises(TimeoutError):
            late.connect(("127.0.0.1", port))
        late.close()
        assert await trio.to_thread.run_sync(queued.recv, 100) == b"answered"
        queued.close()
        listeners.stop_all()


def test_new_connections_go_unanswered_over_ipv6_too() -> None:
    listener = listen_tcp("::1", 0)
    try:
        drop_new_connections(listener)
        client = socket.socket(socket.AF_INET6)
        client.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.connect(("::1", listener.getsockname()[1]))
        client.close()
    finally:
        listener.close()

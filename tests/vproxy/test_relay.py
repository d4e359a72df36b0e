"""Plain relaying (no healer): both directions, explicit half-close, unreachable upstream."""

from __future__ import annotations

import socket

import pytest
import structlog
import trio

from vproxy import Address, GatewayConfig, GatewayError, Route, serve


async def test_relays_both_directions_and_half_close(start_gateway, upstream, net):
    serving = await start_gateway(control=False)
    client = await net.connect(serving.listening[0])
    server = await upstream.accept()
    await net.send(client, b"ping " * 1000)
    assert await net.recv_exactly(server, 5000) == b"ping " * 1000
    # client half-closes: the server reads EOF but can still answer
    client.shutdown(socket.SHUT_WR)
    assert await net.recv_to_eof(server) == b""
    await net.send(server, b"answer after the client's EOF")
    server.shutdown(socket.SHUT_WR)
    assert await net.recv_to_eof(client) == b"answer after the client's EOF"
    assert serving.gateway.stats.connections == 1


async def test_server_half_close_keeps_client_direction_open(start_gateway, upstream, net):
    serving = await start_gateway(control=False)
    client = await net.connect(serving.listening[0])
    server = await upstream.accept()
    await net.send(server, b"banner\n")
    server.shutdown(socket.SHUT_WR)
    assert await net.recv_to_eof(client) == b"banner\n"
    await net.send(client, b"still heard")
    assert await net.recv_exactly(server, 11) == b"still heard"


async def test_unreachable_upstream_closes_cleanly_and_logs_cause(nursery, net):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connect is refused
    port = dead.getsockname()[1]
    config = GatewayConfig(routes=(Route(Address("127.0.0.1", 0), Address("127.0.0.1", port)),))
    with structlog.testing.capture_logs() as logs:
        serving = await nursery.start(serve, config)
        client = await net.connect(serving.listening[0])
        assert await net.recv_to_eof(client) == b""
    dead.close()
    failures = [e for e in logs if e["event"] == "upstream unreachable"]
    assert failures and "refused" in failures[0]["cause"].lower()
    assert serving.gateway.stats.upstream_failures == 1


async def test_listen_address_in_use_is_a_named_error(nursery):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    config = GatewayConfig(routes=(Route(Address("127.0.0.1", port), Address("127.0.0.1", 1)),))
    with pytest.raises(GatewayError, match=f"cannot listen on 127.0.0.1:{port}"):
        await nursery.start(serve, config)
    taken.close()


async def test_many_connections_interleaved(start_gateway, upstream, net):
    serving = await start_gateway(control=False)
    pairs = []
    for _ in range(8):
        client = await net.connect(serving.listening[0])
        pairs.append((client, await upstream.accept()))
    for i, (client, server) in enumerate(pairs):
        await net.send(client, b"%d" % i)
        assert await net.recv_exactly(server, 1) == b"%d" % i
        await net.send(server, b"r%d" % i)
    for i, (client, _) in enumerate(pairs):
        assert await net.recv_exactly(client, 2) == b"r%d" % i
    with trio.fail_after(net.WAIT):
        for client, _ in pairs:
            client.close()


async def test_bulk_transfer_to_a_slow_reader_keeps_every_byte_in_order(start_gateway, upstream,
                                                                        net):
    """A peer that does not read makes the relay's sends partial: the fast path blocks that
    direction (backpressure) and resumes; nothing is lost or reordered, the link stays there."""
    serving = await start_gateway(control=False)
    client = await net.connect(serving.listening[0])
    server = await upstream.accept()
    payload = bytes(range(256)) * 16384  # 4 MiB, more than the socket buffers hold
    got = bytearray()

    async def read_slowly() -> None:
        await trio.sleep(0.2)  # let the buffers fill up first
        got.extend(await net.recv_exactly(client, len(payload)))

    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_slowly)
            await net.send(server, payload)
        await net.send(client, b"and back")
        assert await net.recv_exactly(server, 8) == b"and back"
    assert got == payload
    assert not [e for e in logs if e["event"] == "left the relay thread"]

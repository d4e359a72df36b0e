"""HTTP Upgrade through the gateway: the tunnel flows, framing follows the server's verdict.

After an Upgrade request the gateway's request framing waits for the server's answer: a 101 turns
both directions into an opaque tunnel (more than the framers' 1 MiB buffer limit of it flows
without being kept), a refusal lets framing go on so a later aborted response is still replaced.
"""

from __future__ import annotations

import trio

from protocols import http
from protocols.control import Abort, Begin, Commit, Io, Release
from vproxy.testing import conn_of

UPGRADE = (b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
SWITCHED = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
TUNNEL = 2 * 1024 * 1024 + 17  # past the framers' 1 MiB limit of unframed bytes


async def _pump_tunnel(net, client, server, data: bytes) -> None:
    """Client sends ``data`` into the tunnel while the server reads it (both at once)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.send, client, data)
        assert await net.recv_exactly(server, len(data)) == data


async def _guarded(start_gateway, upstream, net):
    serving, ctl, client, server = await net.guarded_pair(start_gateway, upstream, protocol="http")
    conn = conn_of(1, server)
    return serving, ctl, client, server, serving.gateway.lookup((conn.local, conn.peer))


async def test_guarded_websocket_tunnel_is_not_framed(start_gateway, upstream, net):
    serving, ctl, client, server, link = await _guarded(start_gateway, upstream, net)
    await net.send(client, UPGRADE)
    assert await net.recv_exactly(server, len(UPGRADE)) == UPGRADE
    await ctl.send(Begin(1, None), Io(1, 1, "in", 0, len(UPGRADE)),
                   Io(1, 1, "out", 0, len(SWITCHED)), Commit(1))
    await net.send(server, SWITCHED)
    assert await net.recv_exactly(client, len(SWITCHED)) == SWITCHED
    frames = bytes(range(256)) * (TUNNEL // 256) + b"x" * (TUNNEL % 256)
    await _pump_tunnel(net, client, server, frames)
    assert link.replacer.wants_input and link.replacer.buffered == 0  # counted, not kept
    reply = b"\x81\x05hello"
    await ctl.send(Release(1, len(SWITCHED) + len(reply)))
    await net.send(server, reply)
    assert await net.recv_exactly(client, len(reply)) == reply
    # an aborted answer inside the tunnel has no message boundary: the link closes, no 503
    start = len(SWITCHED) + len(reply)
    await ctl.send(Begin(2, None), Io(2, 1, "out", start, start + 7), Abort(2, "SIGSEGV"))
    await net.send(server, b"\x81\x05x")
    assert await net.recv_to_eof(client) == b""
    assert serving.gateway.stats.replacements == 0


async def test_guarded_declined_upgrade_keeps_framing(start_gateway, upstream, net):
    _, ctl, client, server, _ = await _guarded(start_gateway, upstream, net)
    refusal = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nno ws\r\n"
    await net.send(client, UPGRADE)
    assert await net.recv_exactly(server, len(UPGRADE)) == UPGRADE
    await ctl.send(Begin(1, None), Io(1, 1, "out", 0, len(refusal)), Commit(1))
    await net.send(server, refusal)
    assert await net.recv_exactly(client, len(refusal)) == refusal
    request = b"HEAD /next HTTP/1.1\r\nHost: x\r\n\r\n"  # seen only if framing went on
    await net.send(client, request)
    assert await net.recv_exactly(server, len(request)) == request
    await ctl.send(Begin(2, None), Io(2, 1, "out", len(refusal), len(refusal) + 12),
                   Abort(2, "SIGSEGV"))
    await net.send(server, b"HTTP/1.1 200")
    assert await net.recv_to_eof(client) == http.error_response(503, close=True, head=True)


async def test_pass_through_websocket_tunnel(start_gateway, upstream, net):
    serving = await start_gateway(protocol="http", control=False)
    client = await net.connect(serving.listening[0])
    server = await upstream.accept()
    await net.send(client, UPGRADE)
    assert await net.recv_exactly(server, len(UPGRADE)) == UPGRADE
    await net.send(server, SWITCHED)
    assert await net.recv_exactly(client, len(SWITCHED)) == SWITCHED
    frames = b"\x82\x7f" + bytes(range(256)) * (TUNNEL // 256)
    await _pump_tunnel(net, client, server, frames)
    await net.send(server, b"\x81\x02ok")
    assert await net.recv_exactly(client, 4) == b"\x81\x02ok"

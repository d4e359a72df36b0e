"""Aborted output is replaced by a protocol-correct error, only at a message boundary."""

from __future__ import annotations

import socket

import pytest

from protocols import http, lenpfx
from protocols.control import Abort, Begin, Commit, Gradual, Io
from vproxy import Address, GatewayConfig, Route, serve


async def test_line_abort_becomes_err_line_and_stream_goes_on(start_gateway, upstream, net):
    serving, ctl, client, server = await net.guarded_pair(start_gateway, upstream, protocol="line")
    await ctl.send(Begin(1, None), Io(1, 1, "out", 0, 5), Commit(1))
    await ctl.send(Begin(2, None), Io(2, 1, "out", 5, 17), Abort(2, "SIGSEGV"))
    await ctl.send(Begin(3, None), Io(3, 1, "out", 17, 22), Commit(3))
    await net.send(server, b"OK 1\nLEAKED SECR\nOK 3\n")
    expected = b"OK 1\nERR aborted SIGSEGV\nOK 3\n"
    assert await net.recv_exactly(client, len(expected)) == expected
    await net.assert_silent(client, 0.05)
    assert serving.gateway.stats.replacements == 1


async def test_line_abort_mid_message_closes_instead(start_gateway, upstream, net):
    _, ctl, client, server = await net.guarded_pair(start_gateway, upstream, protocol="line")
    await ctl.send(Begin(1, None), Io(1, 1, "out", 0, 6), Gradual(1, 1))
    await net.send(server, b"OK par")
    assert await net.recv_exactly(client, 6) == b"OK par"
    await ctl.send(Io(1, 1, "out", 6, 11), Abort(1, "stack-chk"))
    await net.send(server, b"tial\n")
    assert await net.recv_to_eof(client) == b""  # no replacement spliced into "OK par..."


async def test_lenpfx_abort_becomes_error_frame(start_gateway, upstream, net):
    _, ctl, client, server = await net.guarded_pair(start_gateway, upstream, protocol="lenpfx")
    frame = lenpfx.error_frame(b"secret payload")
    await ctl.send(Begin(1, None), Io(1, 1, "out", 0, len(frame)), Abort(1, "ivp"))
    await net.send(server, frame)
    expected = lenpfx.error_frame(b"aborted ivp")
    assert await net.recv_exactly(client, len(expected)) == expected


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_http_abort_becomes_503_with_close(start_gateway, upstream, net, method):
    _, ctl, client, server = await net.guarded_pair(start_gateway, upstream, protocol="http")
    first = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    request = f"{method} / HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    await net.send(client, request)
    assert await net.recv_exactly(server, len(request)) == request
    await ctl.send(Begin(1, None), Io(1, 1, "out", 0, len(first)), Commit(1))
    await net.send(server, first if method == "GET" else first[:-2])
    n = len(first) if method == "GET" else len(first) - 2
    assert await net.recv_exactly(client, n) == first[:n]
    await net.send(client, request)  # keep-alive: a second request, whose handler faults
    assert await net.recv_exactly(server, len(request)) == request
    await ctl.send(Begin(2, None), Io(2, 1, "in", len(request), 2 * len(request)),
                   Io(2, 1, "out", n, n + 12), Abort(2, "SIGSEGV"))
    await net.send(server, b"HTTP/1.1 200")  # the faulting handler's partial answer
    replacement = await net.recv_to_eof(client)
    assert replacement == http.error_response(503, close=True, head=method == "HEAD")
    assert b"200" not in replacement


@pytest.mark.parametrize("on_abort", ["replace", "drop"])
async def test_http_unreachable_upstream_gets_502(nursery, net, on_abort):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    config = GatewayConfig(routes=(Route(Address("127.0.0.1", 0), Address("127.0.0.1", port),
                                         "http"),), on_abort=on_abort)
    serving = await nursery.start(serve, config)
    client = await net.connect(serving.listening[0])
    await net.send(client, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await net.recv_to_eof(client)
    dead.close()
    assert answer.startswith(b"HTTP/1.1 502 ") and b"Connection: close" in answer


async def test_http_close_policy_frames_nothing_and_closes(start_gateway, upstream, net):
    serving, ctl, client, server = await net.guarded_pair(start_gateway, upstream, protocol="http",
                                                  on_abort="close")
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    await net.send(client, request)
    assert await net.recv_exactly(server, len(request)) == request
    await ctl.send(Begin(1, None), Io(1, 1, "in", 0, len(request)), Io(1, 1, "out", 0, 12),
                   Abort(1, "SIGSEGV"))
    await net.send(server, b"HTTP/1.1 200")
    assert await net.recv_to_eof(client) == b""
    assert serving.gateway.stats.replacements == 0

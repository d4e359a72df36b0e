"""Output a transaction announced but whose bytes have not arrived (or never will).

A commit may precede its bytes: it is remembered and the bytes go out the moment they arrive,
while the link's writer idles and every other link goes on. Once the server closed its output,
announced bytes past the end can never arrive: they hold nothing (the link ends without waiting
for a transaction or a hold bound), a replacement due past the end is placed at the end, and the
gap is logged with its range and its transaction's state. Every gateway here has a 60 s hold-ms
bound, so a link that waited for the bound would fail the tests' 5 s waits.
"""

from __future__ import annotations

import pytest
import structlog
import trio

from protocols.control import Abort, Begin, Commit, Guard, Io
from vproxy.testing import ScriptedController, conn_of

MISSING = "server closed its output before announced output arrived"


async def _gateway(start_gateway, **config):
    serving = await start_gateway(hold_ms=60_000, **config)
    ctl = await ScriptedController.connect(serving.control)
    await ctl.send(Guard())
    await ctl.sync()
    return serving, ctl


async def _link(serving, ctl, upstream, net, cid):
    client = await net.connect(serving.listening[0])
    server = await upstream.accept()
    await ctl.send(conn_of(cid, server))
    return client, server


async def test_commit_before_its_bytes_releases_them_on_arrival(start_gateway, upstream, net):
    serving, ctl = await _gateway(start_gateway)
    client1, server1 = await _link(serving, ctl, upstream, net, 1)
    client2, server2 = await _link(serving, ctl, upstream, net, 2)
    await ctl.send(Begin(1, None), Io(1, 1, "out", 0, 10), Commit(1))
    await ctl.sync()  # committed; none of its bytes exists yet
    for n in range(3):  # meanwhile the other link is relayed as usual
        await ctl.send(Begin(2 + n, None), Io(2 + n, 2, "out", 4 * n, 4 * n + 4),
                       Commit(2 + n))
        await net.send(server2, b"tx%d\n" % n)
        assert await net.recv_exactly(client2, 4) == b"tx%d\n" % n
    await net.assert_silent(client1, 0.05)
    await net.send(server1, b"late ")  # no further event: the commit covers them
    assert await net.recv_exactly(client1, 5) == b"late "
    await net.send(server1, b"bytes")
    assert await net.recv_exactly(client1, 5) == b"bytes"
    assert serving.gateway.stats.bounds_fired == 0


@pytest.mark.parametrize("events_first", [True, False], ids=["events-first", "eof-first"])
@pytest.mark.parametrize("commit", [True, False], ids=["committed", "open"])
async def test_server_eof_with_announced_output_missing(start_gateway, upstream, net,
                                                        events_first, commit):
    """Announced [0, 10), only 4 bytes (committed) or none (open transaction) ever written: the
    client gets what exists and EOF at once, and the gap is logged."""
    written = b"abcd" if commit else b""
    events = [Begin(1, None), Io(1, 1, "out", 0, 10)] + ([Commit(1)] if commit else [])
    with structlog.testing.capture_logs() as logs:
        serving, ctl = await _gateway(start_gateway)
        client, server = await _link(serving, ctl, upstream, net, 1)
        if events_first:
            await ctl.send(*events)
            await ctl.sync()
        await net.send(server, written)
        server.shutdown(trio.socket.SHUT_WR)
        if not events_first:
            await net.wait_held(serving, len(written))
            await trio.sleep(0.02)  # (no assertion rests on it: the EOF is read either way)
            await ctl.send(*events)
            await ctl.sync()
        assert await net.recv_to_eof(client) == written
    gaps = [e for e in logs if e["event"] == MISSING]
    # the state its transaction had when the gap became known (the IO precedes the COMMIT)
    state = "released" if commit and events_first else "open"
    assert [g["missing"] for g in gaps] == [[(len(written), 10, state)]]
    assert serving.gateway.stats.bounds_fired == 0


async def test_abort_past_the_end_is_replaced_at_the_end(start_gateway, upstream, net):
    """tx 1 announced [0, 8) but wrote one 5-byte line; aborted tx 2 announced [8, 12): its
    replacement, due at 8, goes where the stream ended (a line boundary), then EOF."""
    serving, ctl = await _gateway(start_gateway, protocol="line")
    client, server = await _link(serving, ctl, upstream, net, 1)
    await ctl.send(Begin(1, None), Io(1, 1, "out", 0, 8), Commit(1),
                   Begin(2, None), Io(2, 1, "out", 8, 12), Abort(2, "SIGSEGV"))
    await ctl.sync()
    await net.send(server, b"OK 1\n")
    server.shutdown(trio.socket.SHUT_WR)
    assert await net.recv_to_eof(client) == b"OK 1\nERR aborted SIGSEGV\n"
    assert serving.gateway.stats.replacements == 1

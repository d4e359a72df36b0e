"""The relay thread (vproxy/_threadrelay.py): what it relays, that held links stay in it, and how
its lifecycle and failures reach trio. Real sockets, a real gateway.
"""

from __future__ import annotations

import os
import socket
import threading

import pytest
import structlog
import trio

import vproxy
from protocols.control import Begin, Commit, Guard, Io, Release
from vproxy import Address, GatewayConfig, Route
from vproxy._threadrelay import RelayThreadError, ThreadRelay
from vproxy._turns import Turns
from vproxy.testing import ScriptedController, conn_of


def _relay_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "vproxy-relay"]


async def _wait_passed(serving: vproxy.Serving, n: int) -> None:
    """Until the gateway has relayed ``n`` bytes unheld (bounded poll of its counter)."""
    with trio.fail_after(5):
        while serving.gateway.stats.bytes_passed < n:
            await trio.sleep(0.005)


def _in_thread(serving: vproxy.Serving) -> int:
    """How many sockets of links the relay thread reads now (two a link)."""
    return len(serving.gateway.relay._readers)


async def test_unguarded_links_are_relayed_by_the_thread(start_gateway, upstream, net):
    serving = await start_gateway()
    client = await net.connect(serving.listening[0])
    server = await upstream.accept()
    await net.send(client, b"ping")
    assert await net.recv_exactly(server, 4) == b"ping"
    await net.send(server, b"pong!")
    assert await net.recv_exactly(client, 5) == b"pong!"
    await _wait_passed(serving, 9)
    assert serving.gateway.stats.bytes_passed == 9
    assert _in_thread(serving) == 2
    server.shutdown(socket.SHUT_WR)  # half-close passes through the thread
    assert await net.recv_to_eof(client) == b""
    await net.send(client, b"still open")
    assert await net.recv_exactly(server, 10) == b"still open"


async def test_guard_holds_a_link_in_the_thread_with_exact_offsets(start_gateway, upstream, net):
    """Bytes relayed by the thread before GUARD count in the link's offsets: a transaction
    announced after them (offsets from the connection's start) holds exactly its own output until
    it commits, and input keeps flowing (it is never held). The link never leaves the thread."""
    serving = await start_gateway()
    client = await net.connect(serving.listening[0])
    server = await upstream.accept()
    for i in range(3):  # several exchanges on the thread first
        await net.send(client, b"req%d" % i)
        assert await net.recv_exactly(server, 4) == b"req%d" % i
        await net.send(server, b"answer %d\n" % i)
        assert await net.recv_exactly(client, 9) == b"answer %d\n" % i
    out = 27
    ctl = await ScriptedController.connect(serving.control)
    with structlog.testing.capture_logs() as logs:
        await ctl.send(Guard(), conn_of(1, server), Begin(1, None), Io(1, 1, "out", out, out + 6))
        await ctl.sync()
        await net.send(server, b"SECRET")
        await net.wait_held(serving, 6)
        await net.assert_silent(client)
        await net.send(client, b"more")  # input is never held
        assert await net.recv_exactly(server, 4) == b"more"
        await ctl.send(Commit(1))
        assert await net.recv_exactly(client, 6) == b"SECRET"
        await net.send(server, b"tail")  # guarded, uncovered: held until released, in order
        await ctl.send(Release(1, out + 6 + 4))
        assert await net.recv_exactly(client, 4) == b"tail"
    assert _in_thread(serving) == 2
    assert not [e for e in logs if e["event"] == "left the relay thread"]


async def test_a_transaction_on_an_unguarded_link_holds_it_in_the_thread(
        start_gateway, upstream, net):
    """Events for a link while the gateway is not guarded: its output is held from then on, in
    the thread."""
    serving = await start_gateway()
    client = await net.connect(serving.listening[0])
    server = await upstream.accept()
    await net.send(server, b"hello")
    assert await net.recv_exactly(client, 5) == b"hello"
    ctl = await ScriptedController.connect(serving.control)
    await ctl.send(conn_of(1, server), Begin(1, None), Io(1, 1, "out", 5, 11))
    await ctl.sync()
    await net.send(server, b"world!")
    await net.wait_held(serving, 6)
    await net.assert_silent(client)
    await ctl.send(Commit(1))
    assert await net.recv_exactly(client, 6) == b"world!"
    assert _in_thread(serving) == 2


async def test_stopping_the_gateway_joins_the_thread(upstream, net):
    before = len(_relay_threads())
    config = GatewayConfig(routes=(Route(Address("127.0.0.1", 0), upstream.address, "raw"),))
    async with trio.open_nursery() as nursery:
        serving: vproxy.Serving = await nursery.start(vproxy.serve, config)
        client = await net.connect(serving.listening[0])
        server = await upstream.accept()
        await net.send(client, b"x")
        assert await net.recv_exactly(server, 1) == b"x"
        assert len(_relay_threads()) == before + 1
        nursery.cancel_scope.cancel()  # with a link still in the thread
    assert len(_relay_threads()) == before
    client.close()


async def test_a_failing_thread_reaches_trio_as_a_named_error(monkeypatch):
    """Unit test (a fault injected into the loop): the thread's exception ends ``run``."""
    relay = ThreadRelay(Turns())  # (not started: the lock stays free for the thread)

    def broken(ready: object, view: object) -> None:
        raise RuntimeError("planted")

    monkeypatch.setattr(relay, "_serve", broken)
    os.eventfd_write(relay._wakefd, 1)  # the first poll reports something: the loop acts
    try:
        with trio.fail_after(5), pytest.raises(RelayThreadError, match="planted"):
            await relay.run()
    finally:
        relay.close()
    assert not _relay_threads()


async def test_guard_while_the_thread_streams_keeps_every_byte_in_order(start_gateway, upstream,
                                                                        net):
    """GUARD lands while the thread relays a stream to a client that keeps reading: what the
    thread relayed before goes out, the rest is held from the exact offset on, and a release 10
    bytes short of the end lets out exactly the stream minus those 10 bytes, in order."""
    serving = await start_gateway()
    client = await net.connect(serving.listening[0])
    server = await upstream.accept()
    block = bytes(range(251)) * 64
    written = 0
    stop = trio.Event()
    got = bytearray()

    async def write() -> None:
        nonlocal written
        for _ in range(100_000):  # (bounded)
            if stop.is_set():
                return
            await net.send(server, block)
            written += len(block)
            await trio.sleep(0.001)  # (paced: the thread holds as fast as this writes, and the
            # hold must stay under hold-bytes until the test stops writing)

    async def read(n: int) -> None:
        with trio.fail_after(10):
            while len(got) < n:
                chunk = await client.recv(65536)
                assert chunk, "the stream ended early"
                got.extend(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        await read(256 * 1024)  # the thread is streaming
        ctl = await ScriptedController.connect(serving.control)
        await ctl.send(Guard(), conn_of(1, server))
        await ctl.sync()
        held = serving.gateway.stats.bytes_held
        await net.wait_held(serving, held + 64 * 1024)  # the stream goes on
        stop.set()
    await ctl.send(Release(1, written - 10))
    await read(written - 10)
    expected = (block * (written // len(block)))[:written - 10]
    assert len(got) == len(expected) and bytes(got) == expected
    await net.assert_silent(client)


class _GatewaySteps(trio.abc.Instrument):
    """Counts steps of the gateway's own trio tasks (links, writers, control sessions)."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.startswith("vproxy._"):
            self.steps.append(task.name)


async def test_held_output_released_by_a_control_line_takes_no_trio_task_step(
        start_gateway, upstream, net):
    """The common guarded case (output arrives, a RELEASE covers it, the bytes go out) is served
    by the relay thread alone: no gateway task runs in trio for it, and each exchange's bytes
    wait for their RELEASE (none crosses the wire before it)."""
    serving, ctl, client, server = await net.guarded_pair(start_gateway, upstream)
    steps = _GatewaySteps()
    trio.lowlevel.add_instrument(steps)
    try:
        offset = 0
        for i in range(20):
            answer = b"answer %02d\n" % i
            await net.send(client, b"ask")
            assert await net.recv_exactly(server, 3) == b"ask"
            await net.send(server, answer)
            await net.wait_held(serving, offset + len(answer))
            await net.assert_silent(client, window=0.01)
            offset += len(answer)
            await ctl.send(Release(1, offset))
            assert await net.recv_exactly(client, len(answer)) == answer
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert steps.steps == []
    assert _in_thread(serving) == 2

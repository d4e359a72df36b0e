"""The commit protocol end to end: a scripted healer on the real control socket, real TCP sockets.

Every check is made on the client's socket: what it read, and that nothing else is readable.
"""

from __future__ import annotations

import itertools
import socket

import structlog
import trio
import trio.testing

from protocols.control import Abort, Begin, Commit, Gradual, Guard, Io, Release, Unguard
from vproxy import Address, Route
from vproxy.testing import ScriptedController, conn_of


async def test_held_output_waits_for_commit(start_gateway, upstream, net):
    serving, ctl, client, server = await net.guarded_pair(start_gateway, upstream)
    await ctl.send(Begin(1, None), Io(1, 1, "out", 0, 5))
    await net.send(server, b"hello")
    await net.wait_held(serving, 5)
    await ctl.sync()
    await net.assert_silent(client)
    await ctl.send(Commit(1))
    assert await net.recv_exactly(client, 5) == b"hello"
    stats = await ctl.stats()
    assert stats["committed"] == 1 and stats["bytes_released"] == 5
    assert stats["hold_us"]["max"] > 0


async def test_uncovered_output_is_held_until_release(start_gateway, upstream, net):
    serving, ctl, client, server = await net.guarded_pair(start_gateway, upstream)
    await net.send(server, b"outside any transaction")
    await net.wait_held(serving, 23)
    await ctl.sync()
    await net.assert_silent(client)  # fail closed: nothing covers these bytes yet
    await ctl.send(Release(1, 7))
    assert await net.recv_exactly(client, 7) == b"outside"
    await net.assert_silent(client, 0.05)
    await ctl.send(Release(1, 23))
    assert await net.recv_exactly(client, 16) == b" any transaction"


async def test_aborted_output_never_reaches_client(start_gateway, upstream, net):
    serving, ctl, client, server = await net.guarded_pair(start_gateway, upstream,
                                                       on_abort="drop")
    await ctl.send(Begin(1, None), Io(1, 1, "out", 0, 6))
    await net.send(server, b"SECRET")
    await net.wait_held(serving, 6)
    await ctl.send(Abort(1, "SIGSEGV"), Begin(2, None), Io(2, 1, "out", 6, 10), Commit(2))
    await net.send(server, b"good")
    assert await net.recv_exactly(client, 4) == b"good"
    server.shutdown(socket.SHUT_WR)
    assert await net.recv_to_eof(client) == b""
    assert serving.gateway.stats.bytes_discarded == 6


async def test_abort_with_close_policy_closes_without_leaking(start_gateway, upstream, net):
    serving, ctl, client, server = await net.guarded_pair(start_gateway, upstream,
                                                       on_abort="close")
    await ctl.send(Begin(1, None), Io(1, 1, "out", 0, 3), Commit(1))
    await ctl.send(Begin(2, None), Io(2, 1, "out", 3, 9))
    await net.send(server, b"ok;SECRET")
    await net.wait_held(serving, 9)
    await ctl.send(Abort(2, "stack-chk"))
    assert await net.recv_to_eof(client) == b"ok;"


async def test_raw_replace_policy_closes_instead(start_gateway, upstream, net):
    _serving, ctl, client, server = await net.guarded_pair(start_gateway, upstream)
    await ctl.send(Begin(1, None), Io(1, 1, "out", 0, 6), Abort(1, "inject"))
    await net.send(server, b"SECRET")
    assert await net.recv_to_eof(client) == b""


async def test_release_order_is_independent_of_arrival_order(start_gateway, upstream, net):
    """Events before/after the bytes, commits in any order: the client reads the stream in order,
    never a byte of a transaction that is not committed yet."""
    events = [("bytes", 0), ("bytes", 1), ("bytes", 2), ("commit", 0), ("commit", 1),
              ("commit", 2)]
    payload = [b"first-", b"second-", b"third"]
    offsets = [0, 6, 13, 18]
    serving = await start_gateway()
    ctl = await ScriptedController.connect(serving.control)
    await ctl.send(Guard())
    # the server writes its stream in order; events and commits come in any order around it
    orders = [p for p in itertools.permutations(events)
              if p.index(("bytes", 0)) < p.index(("bytes", 1)) < p.index(("bytes", 2))][::10]
    for n, order in enumerate(orders):
        client = await net.connect(serving.listening[0])
        server = await upstream.accept()
        cid, tx = n + 1, 10 * n + 1
        await ctl.send(conn_of(cid, server), *[
            m for i in range(3)
            for m in (Begin(tx + i, None), Io(tx + i, cid, "out", offsets[i], offsets[i + 1]))])
        committed: set[int] = set()
        sent: set[int] = set()
        got = b""
        for kind, i in order:
            if kind == "bytes":
                await net.send(server, payload[i])
                sent.add(i)
                await net.wait_held(serving, 18 * n + offsets[i + 1])
            else:
                await ctl.send(Commit(tx + i))
                committed.add(i)
            await ctl.sync()
            ready = 0
            while ready in committed and ready in sent:
                ready += 1
            expect = b"".join(payload[:ready])
            if len(expect) > len(got):
                got += await net.recv_exactly(client, len(expect) - len(got))
            assert got == expect, order
        await net.assert_silent(client, 0.01)
        client.close()
        server.close()
    assert serving.gateway.stats.committed == 3 * len(orders)


async def test_nested_commit_waits_for_root(start_gateway, upstream, net):
    serving, ctl, client, server = await net.guarded_pair(start_gateway, upstream)
    await ctl.send(Begin(1, None), Begin(2, 1), Io(2, 1, "out", 0, 4), Commit(2))
    await net.send(server, b"kid!")
    await net.wait_held(serving, 4)
    await ctl.sync()
    await net.assert_silent(client)
    await ctl.send(Commit(1))
    assert await net.recv_exactly(client, 4) == b"kid!"


async def test_gradual_commit_avoids_request_response_deadlock(start_gateway, upstream, net):
    """Inside ONE transaction the server writes a prompt and then waits for the answer: without
    GRADUAL the prompt would stay held and neither side could go on."""
    serving, ctl, client, server = await net.guarded_pair(start_gateway, upstream)
    await ctl.send(Begin(1, None), Io(1, 1, "out", 0, 6))
    await net.send(server, b"name? ")
    await net.wait_held(serving, 6)
    await ctl.sync()
    await net.assert_silent(client)
    await ctl.send(Gradual(1, 1))  # the server is about to read
    assert await net.recv_exactly(client, 6) == b"name? "
    await net.send(client, b"bob\n")
    assert await net.recv_exactly(server, 4) == b"bob\n"
    await ctl.send(Io(1, 1, "in", 0, 4), Io(1, 1, "out", 6, 16))
    await net.send(server, b"hello bob\n")
    await net.wait_held(serving, 16)
    await ctl.sync()
    await net.assert_silent(client)
    await ctl.send(Commit(1))
    assert await net.recv_exactly(client, 10) == b"hello bob\n"


async def test_what_a_gradual_commit_released_stays_released_after_an_abort(
        start_gateway, upstream, net):
    """A connection-long transaction (Apache under COSAK) commits gradually before each read; an
    abort later rolls back only what came after: output released by a GRADUAL goes out even if it
    arrives after the abort, and input read before it is not replayed (its effects were made
    permanent with the memory)."""
    serving, ctl, client, server = await net.guarded_pair(
        start_gateway, upstream, on_rollback_input="replay", on_abort="drop")
    await net.send(client, b"bob\n")
    assert await net.recv_exactly(server, 4) == b"bob\n"
    await ctl.send(Begin(1, None), Io(1, 1, "in", 0, 4), Io(1, 1, "out", 0, 6), Gradual(1, 1))
    await ctl.sync()
    await ctl.send(Io(1, 1, "out", 6, 10), Abort(1, "SIGSEGV"))
    await ctl.sync()
    await net.send(server, b"name? LOST")  # the released prompt arrives after the abort
    assert await net.recv_exactly(client, 6) == b"name? "
    await net.assert_silent(client, 0.1)   # what came after the gradual commit is discarded
    await net.assert_silent(server, 0.1)   # and "bob\n" is not replayed
    stats = serving.gateway.stats
    assert stats.bytes_discarded == 4 and stats.bytes_replayed == 0


async def test_replay_delivers_held_input_again(start_gateway, upstream, net):
    serving, ctl, client, server = await net.guarded_pair(
        start_gateway, upstream, on_rollback_input="replay", replay_budget=1, on_abort="drop")
    await net.send(client, b"GET one\n")
    assert await net.recv_exactly(server, 8) == b"GET one\n"
    await ctl.send(Begin(1, None), Io(1, 1, "in", 0, 8), Abort(1, "SIGSEGV"))
    assert await net.recv_exactly(server, 8) == b"GET one\n"  # replayed: offsets 8..16
    # second fault on the replayed input: the budget (1) is spent, the input is dropped and logged
    with structlog.testing.capture_logs() as logs:
        await ctl.send(Begin(2, None), Io(2, 1, "in", 8, 16), Abort(2, "SIGSEGV"))
        await ctl.sync()
    await net.assert_silent(server, 0.1)
    assert any(e["event"] == "aborted input not replayed" for e in logs)
    # the stream goes on, with the server's input offsets counting the replayed bytes
    await net.send(client, b"GET two\n")
    assert await net.recv_exactly(server, 8) == b"GET two\n"
    await ctl.send(Begin(3, None), Io(3, 1, "in", 16, 24), Io(3, 1, "out", 0, 3), Commit(3))
    await net.send(server, b"ok\n")
    assert await net.recv_exactly(client, 3) == b"ok\n"
    assert serving.gateway.stats.bytes_replayed == 8


async def test_hold_ms_bound_fires_with_log_line(start_gateway, upstream, net):
    with structlog.testing.capture_logs() as logs:
        serving, ctl, client, server = await net.guarded_pair(
            start_gateway, upstream, hold_ms=100, on_bound="discard")
        await ctl.send(Begin(1, None), Io(1, 1, "out", 0, 5))
        await net.send(server, b"stuck")
        with trio.fail_after(5):
            while serving.gateway.stats.bounds_fired == 0:
                await trio.sleep(0.01)
        await net.assert_silent(client, 0.05)
        await ctl.send(Release(1, 9))
        await net.send(server, b"next")
        assert await net.recv_exactly(client, 4) == b"next"
    fired = [e for e in logs if e["event"] == "hold bound reached"]
    assert fired[0]["bound"] == "hold-ms" and fired[0]["policy"] == "discard"
    assert (fired[0]["start"], fired[0]["end"]) == (0, 5)


async def test_hold_bytes_bound_release_policy(start_gateway, upstream, net):
    with structlog.testing.capture_logs() as logs:
        _serving, _ctl, client, server = await net.guarded_pair(
            start_gateway, upstream, hold_bytes=1000, on_bound="release")
        await net.send(server, b"x" * 3000)
        assert await net.recv_exactly(client, 3000) == b"x" * 3000
    assert any(e["event"] == "hold bound reached" and e["bound"] == "hold-bytes" for e in logs)


async def test_unmatched_connection_is_held_until_close_bound(start_gateway, upstream, net):
    """Guarded, but no CONN ever names this connection: fail closed, then the bound closes it."""
    serving = await start_gateway(hold_ms=100, on_bound="close")
    ctl = await ScriptedController.connect(serving.control)
    await ctl.send(Guard())
    await ctl.sync()
    client = await net.connect(serving.listening[0])
    server = await upstream.accept()
    await net.send(server, b"unmatched")
    assert await net.recv_to_eof(client) == b""


async def test_unguard_releases_and_returns_to_pass_through(start_gateway, upstream, net):
    serving, ctl, client, server = await net.guarded_pair(start_gateway, upstream)
    await net.send(server, b"held")
    await net.wait_held(serving, 4)
    await ctl.send(Unguard())
    assert await net.recv_exactly(client, 4) == b"held"
    await net.send(server, b"free")
    assert await net.recv_exactly(client, 4) == b"free"


async def test_agent_loss_aborts_open_transactions_and_stays_guarded(start_gateway, upstream,
                                                                     net):
    serving, ctl, client, server = await net.guarded_pair(start_gateway, upstream,
                                                       on_abort="drop")
    await ctl.send(Begin(1, None), Io(1, 1, "out", 0, 6))
    await net.send(server, b"SECRET")
    await net.wait_held(serving, 6)
    await ctl.aclose()
    with trio.fail_after(5):
        while serving.gateway.stats.aborted == 0:
            await trio.sleep(0.005)
    assert serving.gateway.guarded
    await net.send(server, b"more")
    await net.assert_silent(client)  # still guarded, nothing covers these bytes
    # a new healer pairs and detaches cleanly: that lifts the guard the lost one left
    ctl2 = await ScriptedController.connect(serving.control)
    await ctl2.send(Unguard())
    assert await net.recv_exactly(client, 4) == b"more"
    assert not serving.gateway.guarded


async def test_back_route_holds_the_servers_outgoing_request(start_gateway, upstream, net):
    """The protected server is the CLIENT of a back route (its debit to a ledger)."""
    route = Route(Address("127.0.0.1", 0), upstream.address, "raw", "back")
    serving = await start_gateway(routes=(route,), on_abort="drop")
    ctl = await ScriptedController.connect(serving.control)
    await ctl.send(Guard())
    await ctl.sync()
    protected = await net.connect(serving.listening[0])  # the server dials its backend
    ledger = await upstream.accept()
    await ctl.send(conn_of(7, protected), Begin(1, None), Io(1, 7, "out", 0, 9))
    await net.send(protected, b"DEBIT 100")
    await net.wait_held(serving, 9)
    await ctl.sync()
    await net.assert_silent(ledger)
    await ctl.send(Abort(1, "SIGSEGV"))
    await ctl.sync()
    await ctl.send(Begin(2, None), Io(2, 7, "out", 9, 17), Commit(2))
    await net.send(protected, b"DEBIT 10")
    assert await net.recv_exactly(ledger, 8) == b"DEBIT 10"  # the aborted debit never arrived
    await net.send(ledger, b"OK")  # the backend's answer is the server's input: not held
    assert await net.recv_exactly(protected, 2) == b"OK"


async def test_guard_arriving_mid_connection_holds_the_next_output(start_gateway, upstream, net):
    """A connection relayed unheld (fast path) is held from the GUARD on, and stays on the fast
    path (its output is held there)."""
    serving = await start_gateway()
    client = await net.connect(serving.listening[0])
    server = await upstream.accept()
    await net.send(server, b"before guard;")
    assert await net.recv_exactly(client, 13) == b"before guard;"
    ctl = await ScriptedController.connect(serving.control)
    with structlog.testing.capture_logs() as logs:
        await ctl.send(Guard(), conn_of(1, server), Begin(1, None), Io(1, 1, "out", 13, 18))
        await ctl.sync()
        await net.send(server, b"after")
        await net.wait_held(serving, 5)
    assert not [e for e in logs if e["event"] == "left the relay thread"]
    await net.assert_silent(client)
    await ctl.send(Commit(1))
    assert await net.recv_exactly(client, 5) == b"after"
    await net.send(client, b"input still flows")
    assert await net.recv_exactly(server, 17) == b"input still flows"


async def test_events_without_guard_hold_only_covered_bytes(start_gateway, upstream, net):
    """A healer that never sent GUARD: its open transaction's range is held, the rest flows."""
    serving = await start_gateway(on_abort="drop")
    client = await net.connect(serving.listening[0])
    server = await upstream.accept()
    await net.send(server, b"a")
    assert await net.recv_exactly(client, 1) == b"a"  # fast path, nothing known yet
    ctl = await ScriptedController.connect(serving.control)
    await ctl.send(conn_of(1, server), Begin(1, None), Io(1, 1, "out", 1, 4))
    await ctl.sync()
    await net.send(server, b"bcd")
    await net.wait_held(serving, 3)
    await net.assert_silent(client)
    await ctl.send(Abort(1, "SIGSEGV"))
    await net.send(server, b"e")
    assert await net.recv_exactly(client, 1) == b"e"
    assert not serving.gateway.guarded


async def test_one_gateway_front_and_back_routes_share_the_control_socket(start_gateway, upstream,
                                                                          net):
    """A payment front-end: the client's request comes in on the front route, the server's debit
    goes out to the ledger on the back route; one transaction covers both outputs. Aborted, the
    ledger never sees the debit and the client never sees the answer."""
    ledger = upstream  # the backend
    server_listener = trio.socket.socket()
    await server_listener.bind(("127.0.0.1", 0))
    server_listener.listen(4)
    server_addr = Address("127.0.0.1", server_listener.getsockname()[1])
    front = Route(Address("127.0.0.1", 0), server_addr, "raw", "front")
    back = Route(Address("127.0.0.1", 0), ledger.address, "raw", "back")
    serving = await start_gateway(routes=(front, back), on_abort="drop")
    ctl = await ScriptedController.connect(serving.control)
    await ctl.send(Guard())
    await ctl.sync()

    client = await net.connect(serving.listening[0])
    with trio.fail_after(5):
        server_side, _ = await server_listener.accept()  # the protected server's socket
    to_ledger = await net.connect(serving.listening[1])  # the server dials its ledger
    ledger_side = await ledger.accept()
    await ctl.send(conn_of(1, server_side), conn_of(2, to_ledger))

    await net.send(client, b"PAY 100\n")
    assert await net.recv_exactly(server_side, 8) == b"PAY 100\n"  # input is not held
    await ctl.send(Begin(1, None), Io(1, 1, "in", 0, 8), Io(1, 2, "out", 0, 11),
                   Io(1, 1, "out", 0, 3))
    await net.send(to_ledger, b"DEBIT 100\n\n")
    await net.send(server_side, b"OK\n")
    await net.wait_held(serving, 14)
    await ctl.sync()
    await net.assert_silent(ledger_side)
    await net.assert_silent(client, 0.05)
    await ctl.send(Abort(1, "SIGSEGV"))
    await ctl.sync()
    # the next, healthy payment goes through on both routes
    await ctl.send(Begin(2, None), Io(2, 2, "out", 11, 20), Io(2, 1, "out", 3, 9), Commit(2))
    await net.send(to_ledger, b"DEBIT 50\n")
    await net.send(server_side, b"OK 50\n")
    assert await net.recv_exactly(ledger_side, 9) == b"DEBIT 50\n"
    assert await net.recv_exactly(client, 6) == b"OK 50\n"
    server_listener.close()
    server_side.close()


async def test_abort_on_a_link_that_was_never_guarded(start_gateway, upstream, net):
    """The abort reaches a link still on the fast path: input is kept only from GUARD on, so it
    cannot be replayed; that is logged, and the link goes on."""
    serving = await start_gateway(on_rollback_input="replay", on_abort="drop")
    ctl = await ScriptedController.connect(serving.control)
    client = await net.connect(serving.listening[0])
    server = await upstream.accept()
    await ctl.send(conn_of(1, server))
    await ctl.sync()
    await net.send(client, b"req\n")
    assert await net.recv_exactly(server, 4) == b"req\n"
    with structlog.testing.capture_logs() as logs:
        await ctl.send(Begin(1, None), Io(1, 1, "in", 0, 4), Abort(1, "SIGSEGV"))
        await ctl.sync()
    assert any(e["event"] == "aborted input not replayed" and e["why"] == "input no longer kept"
               for e in logs)
    await net.send(server, b"ok\n")
    assert await net.recv_exactly(client, 3) == b"ok\n"
    await net.send(client, b"next\n")
    assert await net.recv_exactly(server, 5) == b"next\n"


async def test_guard_during_a_blocked_bulk_transfer(start_gateway, upstream, net):
    """GUARD while the relay is blocked on a client that does not read: the chunk already relayed
    but not yet taken goes out unheld, the rest enters the hold; released, the client gets the
    whole stream in order."""
    serving = await start_gateway()
    client = await net.connect(serving.listening[0])
    server = await upstream.accept()
    payload = bytes(range(251)) * (64 * 1024)  # ~16 MiB: more than every buffer on the way
    stats = serving.gateway.stats
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.send, server, payload)
        passed = -1
        with trio.fail_after(10):
            while stats.bytes_passed != passed:  # until the relay is blocked
                passed = stats.bytes_passed
                await trio.sleep(0.1)
        assert 0 < passed < len(payload)
        ctl = await ScriptedController.connect(serving.control)
        await ctl.send(Guard(), conn_of(1, server), Release(1, len(payload)))
        await ctl.sync()
        got = await net.recv_exactly(client, len(payload))
    assert got == payload
    assert stats.bytes_held > 0 and stats.bytes_passed + stats.bytes_held == len(payload)


async def test_committed_bulk_output_to_a_slow_client_stays_ordered(start_gateway, upstream, net):
    """Held output larger than the hold bound, all of it committed ahead, to a client that reads
    late: partial sends and the bound's backpressure keep the stream whole and in order, and no
    bound fires for bytes that were releasable."""
    serving, ctl, client, server = await net.guarded_pair(start_gateway, upstream,
                                                       hold_bytes=1 << 20, on_bound="close")
    payload = bytes(range(253)) * (12 * 4096)  # ~12 MiB
    await ctl.send(Begin(1, None), Io(1, 1, "out", 0, len(payload)), Commit(1))
    await ctl.sync()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.send, server, payload)
        await trio.sleep(0.2)  # every buffer on the way fills up first
        got = await net.recv_exactly(client, len(payload))
    assert got == payload
    assert serving.gateway.stats.bounds_fired == 0


async def test_guard_during_a_blocked_transfer_keeps_exact_offsets(start_gateway, upstream, net):
    """As above, but the release watermark stops 10 bytes short: exactly those stay held, so the
    hold counts offsets from the true end of what went out unheld (unsent bytes included)."""
    serving = await start_gateway()
    client = await net.connect(serving.listening[0])
    server = await upstream.accept()
    payload = bytes(range(251)) * (64 * 1024)
    stats = serving.gateway.stats
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.send, server, payload)
        passed = -1
        with trio.fail_after(10):
            while stats.bytes_passed != passed:  # until the relay is blocked
                passed = stats.bytes_passed
                await trio.sleep(0.1)
        ctl = await ScriptedController.connect(serving.control)
        await ctl.send(Guard(), conn_of(1, server), Release(1, len(payload) - 10))
        await ctl.sync()
        got = await net.recv_exactly(client, len(payload) - 10)
        assert got == payload[:-10]
        await net.assert_silent(client)
        await ctl.send(Release(1, len(payload)))
        assert await net.recv_exactly(client, 10) == payload[-10:]


async def test_held_output_leaves_the_gateway_idle(start_gateway, upstream, net):
    """While bytes wait for their commit nothing in the gateway runs: no task polls the hold
    (a hold-ms deadline taken from another clock than trio's once made the writer spin)."""
    serving, ctl, client, server = await net.guarded_pair(start_gateway, upstream)
    await ctl.send(Begin(1, None), Io(1, 1, "out", 0, 5))
    await net.send(server, b"hello")
    await net.wait_held(serving, 5)
    await ctl.sync()
    with trio.fail_after(5):  # a spinning task is never blocked: this would time out
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    await net.assert_silent(client)
    await ctl.send(Commit(1))
    assert await net.recv_exactly(client, 5) == b"hello"

"""Through the real gateway (vproxy.serve, line protocol) with the agent's wire module inside a real
C server: the partial reply of an aborted transaction never reaches the client's socket, the
replacement does, and the next request on the same connection is answered; a write-read-abort
exchange releases exactly what was written before the read (gradual commit).

Here the stand-in core aborts a transaction whose function returned -1 (a failed check, no
fault); tests/memlog/test_heal_e2e.py does the same through a real fault and the real agent.
"""

from __future__ import annotations

import socket

import pytest
import trio

import vproxy
from vproxy import Address, GatewayConfig, Route

WAIT = 10.0


async def recv_until(sock: trio.socket.SocketType, suffix: bytes, limit: int = 4096) -> bytes:
    """Bytes from the client socket until they end with ``suffix`` (bounded in time and size)."""
    got = b""
    with trio.fail_after(WAIT):
        while not got.endswith(suffix) and len(got) < limit:
            chunk = await sock.recv(4096)
            if not chunk:
                break
            got += chunk
    return got


async def guarded(serving) -> None:
    with trio.fail_after(WAIT):
        while not serving.gateway.guarded:
            await trio.sleep(0.01)


# The real agent supervising partial_reply_server's two handlers (the tests of real faults).
HANDLERS = {"coverage": {"mode": "list", "functions": ["handle_request", "handle_exchange"]}}


async def start(nursery, server, tmp_path, *, agent: dict | None = None):
    """vproxy.serve in front of ``server``, the agent paired with it, a client connected.

    Args:
        agent: the real agent's configuration (coverage, inject, profile...); None: the stand-in
            core supervising partial_reply_server's handlers.
    """
    config = GatewayConfig(routes=(Route(Address("127.0.0.1", 0),
                                         Address("127.0.0.1", server.port), "line"),),
                           control=str(tmp_path / "ctl.sock"))
    serving = await nursery.start(vproxy.serve, config)
    control = {"control": {"path": serving.control, "token": serving.token}}
    if agent is not None:
        await trio.to_thread.run_sync(server.instrument_agent, {**control, **agent})
    else:
        await trio.to_thread.run_sync(server.instrument, control)
    await guarded(serving)
    client = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listen = serving.listening[0]
    with trio.fail_after(WAIT):
        await client.connect((listen.host, listen.port))
    return client


async def test_partial_reply_of_an_aborted_transaction_never_reaches_the_client(server, tmp_path):
    async with trio.open_nursery() as nursery:
        client = await start(nursery, server, tmp_path)
        with client:
            await client.send(b"GET alice\n")
            assert await recv_until(client, b"\n") == b"REPLY alice\n"
            await client.send(b"GET refuse\n")
            replacement = await recv_until(client, b"\n")
            assert b"REPLY" not in replacement and replacement.startswith(b"ERR")
            await client.send(b"GET bob\n")
            assert await recv_until(client, b"\n") == b"REPLY bob\n"
        nursery.cancel_scope.cancel()


# ASK reads the answer at once; WAIT first waits for it in poll(), as APR does after a short read
# (Apache -X under coverage ALL: each keep-alive response's tail was held for 5 s).
@pytest.mark.parametrize("ask", [b"ASK", b"WAIT"])
async def test_gradual_commit_releases_what_came_before_the_read(server, tmp_path, ask):
    async with trio.open_nursery() as nursery:
        client = await start(nursery, server, tmp_path)
        with client:
            await client.send(ask + b" carol\n")
            # Without GRADUAL this read (or poll) would wait for a commit that waits for our answer.
            assert await recv_until(client, b"\n") == b"QUESTION carol?\n"
            await client.send(b"refuse\n")
            after = await recv_until(client, b"\n")
            assert b"ANSWERED" not in after and after.startswith(b"ERR")
            await client.send(ask + b" dave\n")
            assert await recv_until(client, b"\n") == b"QUESTION dave?\n"
            await client.send(b"yes\n")
            assert await recv_until(client, b"\n") == b"ANSWERED yes\n"
        nursery.cancel_scope.cancel()


# TALK: the ASK exchange nested in handle_dialog. The agent announces handle_exchange's output under
# handle_dialog once the GRADUAL released it (tests/wire/test_events.py); the nested transaction's
# later output is still its own: discarded when it aborts, while its parent's goes out.
async def test_gradual_inside_a_nested_transaction_releases_its_output(server, tmp_path):
    talk = {"coverage": {"mode": "list", "functions": ["handle_dialog", "handle_exchange"]},
            "profile": {"fixed": "0"}}  # a healed handle_exchange returns 0
    async with trio.open_nursery() as nursery:
        client = await start(nursery, server, tmp_path, agent=talk)
        with client:
            for n, (name, answer) in enumerate(((b"carol", b"yes"), (b"dave", b"crash")), 1):
                await client.send(b"TALK " + name + b"\n")
                assert await recv_until(client, b"\n") == b"QUESTION " + name + b"?\n"
                await client.send(answer + b"\n")
                after = await recv_until(client, b"TALKED %d\n" % n)
                if answer == b"yes":
                    assert after == b"ANSWERED yes\nTALKED 1\n"
                else:  # handle_exchange faulted after "ANSWERED ": replaced; TALKED goes out
                    assert b"ANSWERED" not in after and after.startswith(b"ERR")
                    assert after.endswith(b"TALKED 2\n")
        nursery.cancel_scope.cancel()
    status = server.status()
    assert status["txn"]["heals"] == 1
    assert status["wire"]["aborts"] == 1 and status["wire"]["errs"] == 0

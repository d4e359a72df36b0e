"""The real agent inside a real C server behind the real gateway, with real faults:

- handle_request writes part of a reply and then dereferences NULL: the partial reply never
  reaches the client's socket, the gateway's replacement does, the next request on the same
  connection is answered correctly;
- handle_exchange writes a question, reads the answer (gradual commit), then faults: the question
  was released before the read, nothing written after it arrives, and the memory changed before
  the read stays while the change after it is rolled back (g_stage 1, not 2).
"""

from __future__ import annotations

import trio

from .test_gateway_e2e import HANDLERS, recv_until, start


async def test_fault_after_a_partial_reply_is_healed_and_the_reply_replaced(server, tmp_path):
    async with trio.open_nursery() as nursery:
        client = await start(nursery, server, tmp_path, agent=HANDLERS)
        with client:
            await client.send(b"GET alice\n")
            assert await recv_until(client, b"\n") == b"REPLY alice\n"
            await client.send(b"GET crash\n")
            replacement = await recv_until(client, b"\n")
            assert b"REPLY" not in replacement and replacement.startswith(b"ERR")
            await client.send(b"GET bob\n")
            assert await recv_until(client, b"\n") == b"REPLY bob\n"
        nursery.cancel_scope.cancel()
    assert server.proc.poll() is None
    assert server.status()["txn"]["heals"] == 1


async def test_fault_after_a_gradual_commit_keeps_what_came_before_the_read(server, tmp_path):
    async with trio.open_nursery() as nursery:
        client = await start(nursery, server, tmp_path, agent=HANDLERS)
        with client:
            await client.send(b"ASK carol\n")
            assert await recv_until(client, b"\n") == b"QUESTION carol?\n"
            await client.send(b"crash\n")
            after = await recv_until(client, b"\n")
            assert b"ANSWERED" not in after and after.startswith(b"ERR")
            await client.send(b"STATE\n")
            assert await recv_until(client, b"\n") == b"STATE stage=1 served=0\n"
        nursery.cancel_scope.cancel()
    status = server.status()
    assert status["txn"]["heals"] == 1 and status["wire"]["gradual"] == 1

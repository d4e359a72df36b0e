"""Nested transactions through the real gateway, with the real agent inside login_server.

handle_request > login > login_continue are all supervised, and only login_continue writes (the
"OK welcome" reply). Its BEGIN lines and IO are still in the agent's queue when it commits, so the
agent folds them into login, and login's into handle_request (no BEGIN/COMMIT for the nested two).
The gateway must still hold that output until the root's verdict: released when the root
commits, discarded (and replaced) when the root aborts after its children committed. A nested
abort is not folded: it discards exactly the nested transaction's bytes, and the connection goes
on. Faults are injected at a function's epilogue (`inject`, once); the repaired call returns 0 (the
profile's fixed value), so the server keeps serving the connection.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from .conftest import Server
from .test_gateway_e2e import recv_until, start

NESTED = ("handle_request", "login", "login_continue")


# The agent's configuration: the three functions supervised, a repaired call returns 0.
NESTED_AGENT = {"coverage": {"mode": "list", "functions": list(NESTED)}, "profile": {"fixed": "0"}}


@pytest.fixture
def login() -> Iterator[Server]:
    srv = Server(target="login_server")
    yield srv
    srv.close()


async def ask(client, line: bytes) -> bytes:
    await client.send(line + b"\n")
    return await recv_until(client, b"\n")


async def test_folded_nested_output_is_released_when_its_root_commits(login, tmp_path):
    async with trio.open_nursery() as nursery:
        client = await start(nursery, login, tmp_path, agent=NESTED_AGENT)
        with client:
            for name, password in ((b"alice", b"wonderland"), (b"bob", b"builder")):
                assert await ask(client, b"LOGIN " + name + b" " + password) == \
                    b"OK welcome " + name + b"\n"
            wire = (await trio.to_thread.run_sync(login.status))["wire"]  # gateway still there
        nursery.cancel_scope.cancel()
    # per request: three announced, two folded, one COMMIT (the root)
    assert wire["announced"] == 6 and wire["folded"] == 4 and wire["aborts"] == 0
    assert wire["errs"] == 0 and wire["lostLines"] == 0


async def test_folded_nested_output_is_discarded_when_its_root_aborts(login, tmp_path):
    async with trio.open_nursery() as nursery:
        client = await start(nursery, login, tmp_path, agent=NESTED_AGENT)
        await trio.to_thread.run_sync(login.inject, {"function": "handle_request"})
        with client:
            # login_continue wrote "OK welcome alice" and committed (folded); the root aborts
            replaced = await ask(client, b"LOGIN alice wonderland")
            assert b"welcome" not in replaced and replaced.startswith(b"ERR")
            assert await ask(client, b"PING") == b"PONG\n"
            assert await ask(client, b"LOGIN bob builder") == b"OK welcome bob\n"
        nursery.cancel_scope.cancel()
    status = login.status()
    assert status["txn"]["injected"] == 1
    assert status["wire"]["folded"] >= 2 and status["wire"]["aborts"] == 1
    assert status["wire"]["errs"] == 0


# login_continue: the writer itself aborts; login: its child committed (folded into it), then it
# aborts, and the folded bytes go with it.
@pytest.mark.parametrize("aborting", ["login_continue", "login"])
async def test_nested_abort_discards_exactly_its_bytes(login, tmp_path, aborting):
    async with trio.open_nursery() as nursery:
        client = await start(nursery, login, tmp_path, agent=NESTED_AGENT)
        await trio.to_thread.run_sync(login.inject, {"function": aborting})
        with client:
            assert await ask(client, b"PING") == b"PONG\n"
            # the reply is discarded and replaced; the transactions around it commit
            replaced = await ask(client, b"LOGIN alice wonderland")
            assert b"welcome" not in replaced and replaced.startswith(b"ERR")
            assert await ask(client, b"PING") == b"PONG\n"
            assert await ask(client, b"LOGIN bob builder") == b"OK welcome bob\n"
        nursery.cancel_scope.cancel()
    status = login.status()
    assert status["txn"]["injected"] == 1
    assert status["wire"]["aborts"] == 1 and status["wire"]["errs"] == 0

"""The control socket refuses what it must, with a clear ERR, while traffic keeps flowing."""

from __future__ import annotations

import os
import pwd
import socket
import stat

import pytest
import trio

from protocols.control import Begin, Commit, Err, Guard, Io
from vproxy.testing import ScriptedController, conn_of


async def _exchange(client, server, net, n: int) -> None:
    """Traffic still flows both ways (the gateway is not guarded in these checks)."""
    await net.send(client, b"q%03d" % n)
    assert await net.recv_exactly(server, 4) == b"q%03d" % n
    await net.send(server, b"a%03d" % n)
    assert await net.recv_exactly(client, 4) == b"a%03d" % n


async def test_socket_and_token_are_private(start_gateway):
    serving = await start_gateway()
    for path in (serving.control, serving.control + ".token"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(serving.control + ".token") as f:
        assert f.read().strip() == serving.token


async def test_refusals_leave_traffic_flowing(start_gateway, upstream, net):
    serving = await start_gateway()
    client = await net.connect(serving.listening[0])
    server = await upstream.accept()
    await _exchange(client, server, net, 0)

    wrong = await ScriptedController.connect(serving.control, "0" * 32, expect_ok=False)
    answer = await wrong.receive()
    assert isinstance(answer, Err) and answer.code == "bad-token"
    assert await wrong.receive() is None  # and the connection is closed
    await _exchange(client, server, net, 1)

    old = await ScriptedController.connect(serving.control, version=2, expect_ok=False)
    answer = await old.receive()
    assert isinstance(answer, Err) and answer.code == "bad-version"
    assert "sead-control/1" in answer.text
    assert await old.receive() is None
    await _exchange(client, server, net, 2)

    ctl = await ScriptedController.connect(serving.control)
    await ctl.send_raw(b"BEGIN x -\nFROB 1\n" + b"A" * 5000 + b"\nCOMMIT 99\n")
    codes = [(await ctl.receive()).code for _ in range(4)]  # type: ignore[union-attr]
    assert codes == ["malformed", "malformed", "malformed", "unknown-tx"]
    await ctl.sync()  # the same controller still works
    await _exchange(client, server, net, 3)
    assert serving.gateway.stats.refused_controllers == 2
    assert not serving.gateway.guarded


async def test_first_line_must_be_hello(start_gateway):
    serving = await start_gateway()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with trio.fail_after(5):
        await sock.connect(serving.control)
        await sock.send(b"GUARD\n")
        answer = await sock.recv(4096)
        assert answer.startswith(b"ERR not-hello ")
        assert await sock.recv(4096) == b""
    sock.close()
    assert not serving.gateway.guarded


async def test_second_agent_scopes_its_own_ids(start_gateway, upstream, net):
    """Two agents (prefork children) both use tx 1 and cid 1 for different connections."""
    serving = await start_gateway()
    a = await ScriptedController.connect(serving.control)
    b = await ScriptedController.connect(serving.control)
    await a.send(Guard())
    await a.sync()
    client_a = await net.connect(serving.listening[0])
    server_a = await upstream.accept()
    client_b = await net.connect(serving.listening[0])
    server_b = await upstream.accept()
    await a.send(conn_of(1, server_a), Begin(1, None), Io(1, 1, "out", 0, 2))
    await b.send(conn_of(1, server_b), Begin(1, None), Io(1, 1, "out", 0, 2))
    await net.send(server_a, b"AA")
    await net.send(server_b, b"BB")
    await b.send(Commit(1))
    assert await net.recv_exactly(client_b, 2) == b"BB"
    await a.sync()
    await net.assert_silent(client_a)
    await a.send(Commit(1))
    assert await net.recv_exactly(client_a, 2) == b"AA"


async def test_admin_role_may_only_read_stats(start_gateway):
    serving = await start_gateway()
    admin = await ScriptedController.connect(serving.control, role="admin")
    await admin.send(Guard())
    answer = await admin.receive()
    assert isinstance(answer, Err) and answer.code == "not-allowed"
    assert not serving.gateway.guarded
    stats = await admin.stats()
    assert stats["connections"] == 0 and "hold_us" in stats


async def test_control_user_owns_socket_and_token(start_gateway):
    try:
        entry = pwd.getpwnam("www-data")
    except KeyError:
        pytest.skip("no www-data user on this machine")
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    serving = await start_gateway(control_user="www-data")
    for path in (serving.control, serving.control + ".token"):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (entry.pw_uid, entry.pw_gid)
        assert stat.S_IMODE(st.st_mode) == 0o600


async def test_error_answers_are_capped_and_non_ascii_is_escaped(start_gateway):
    """An agent that floods bad lines (and may never read) gets at most 100 ERR answers."""
    serving = await start_gateway()
    ctl = await ScriptedController.connect(serving.control)
    await ctl.send_raw(b"FROB \xff\xfe\n")
    answer = await ctl.receive()
    assert isinstance(answer, Err) and answer.code == "malformed" and answer.text.isascii()
    await ctl.send_raw(b"COMMIT 7\n" * 150)
    codes = [(await ctl.receive()).code for _ in range(99)]  # type: ignore[union-attr]
    assert codes == ["unknown-tx"] * 99
    await ctl.sync()  # the next answer is the PONG: the other 51 ERRs were only logged

"""A scripted controller that speaks sead-control/1 over a gateway's real control socket.

For tests (here and in other areas) that play the healer without Frida::

    async with trio.open_nursery() as nursery:
        serving = await nursery.start(vproxy.serve, config)
        async with await ScriptedController.connect(serving.control) as ctl:
            await ctl.send(Guard(), conn_of(1, server_side_socket), Begin(1, None),
                           Io(1, 1, "out", 0, 5), Commit(1))
            await ctl.sync()          # PING/PONG: every line sent before is applied

``connect`` reads the token from ``PATH.token`` unless one is given, sends ``HELLO`` and checks the
``OK``. ``conn_of(cid, sock)`` builds the ``CONN`` line for a socket exactly as the agent would
(``getsockname``/``getpeername`` of the protected server's own socket). Every wait has a timeout
(``TimeoutError`` names what was awaited), so a test never hangs on a silent gateway.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
from types import TracebackType

import trio

from protocols import control as c
from vproxy._link import endpoint

DEFAULT_TIMEOUT = 5.0


def conn_of(cid: int, server_sock: socket.socket | trio.socket.SocketType) -> c.Conn:
    """The ``CONN`` message the agent sends for the protected server's socket ``server_sock``."""
    return c.Conn(cid, endpoint(server_sock.getsockname()), endpoint(server_sock.getpeername()))


class ScriptedController:
    """One control connection; see the module docstring. Use ``connect`` to make one."""

    def __init__(self, sock: trio.socket.SocketType, timeout: float) -> None:
        self._sock = sock
        self._reader = c.ControlReader()
        self._timeout = timeout
        self._pings = itertools.count(1)

    @classmethod
    async def connect(cls, path: str, token: str | None = None, *, role: str = "agent",
                      version: int = c.VERSION, expect_ok: bool = True,
                      timeout: float = DEFAULT_TIMEOUT) -> ScriptedController:
        """Open the control socket at ``path`` and send HELLO.

        Args:
            token: the pairing token; None reads ``path + ".token"``.
            role, version: HELLO fields (tests of refusals change them).
            expect_ok: check that the gateway answered OK (raise ``AssertionError`` otherwise);
                False leaves the answer for ``receive``.
        """
        if token is None:
            with open(path + ".token") as f:
                token = f.read().strip()
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with trio.fail_after(timeout):
            await sock.connect(path)
        ctl = cls(sock, timeout)
        await ctl.send_raw(f"HELLO {version} {role} {os.getpid()} {token}\n".encode())
        if expect_ok:
            answer = await ctl.receive()
            if not isinstance(answer, c.Ok):
                await ctl.aclose()
                raise AssertionError(f"gateway refused HELLO: {answer!r}")
        return ctl

    async def send(self, *messages: c.Message) -> None:
        """Send the messages in one write (as the agent batches them)."""
        await self.send_raw(b"".join(c.encode(m) for m in messages))

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (for malformed lines)."""
        with trio.fail_after(self._timeout):
            view = memoryview(data)
            while view:
                view = view[await self._sock.send(view):]

    async def receive(self) -> c.Message | c.Malformed | None:
        """The next line from the gateway, or None when it closed the connection."""
        with trio.fail_after(self._timeout):
            while True:
                msg = self._reader.next_event()
                if msg is not c.NEED_DATA:
                    return msg  # type: ignore[return-value]
                if self._reader.at_eof:
                    return None
                self._reader.receive_data(await self._sock.recv(65536))

    async def sync(self) -> None:
        """PING and wait for its PONG: every line sent earlier has been applied by the gateway.

        Error handling:
            AssertionError when an ERR (or anything else) arrives first: a test that expects an
            ERR reads it with ``receive`` before calling ``sync``.
        """
        n = next(self._pings)
        await self.send(c.Ping(n))
        answer = await self.receive()
        if answer != c.Pong(n):
            raise AssertionError(f"expected PONG {n}, got {answer!r}")

    async def stats(self) -> dict[str, object]:
        """The gateway's counters (``STATS``)."""
        await self.send(c.Stats())
        answer = await self.receive()
        if not isinstance(answer, c.StatsReply):
            raise AssertionError(f"expected STATS, got {answer!r}")
        data: dict[str, object] = json.loads(answer.json)
        return data

    async def aclose(self) -> None:
        self._sock.close()

    async def __aenter__(self) -> ScriptedController:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

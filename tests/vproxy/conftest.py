"""Fixtures for the gateway tests: a real gateway, a real scripted upstream server, real sockets.

The test plays three parts over real sockets: the client, the protected server (``Upstream`` hands
over each accepted socket so the test writes exactly the bytes it wants, when it wants) and the
healer (``vproxy.testing.ScriptedController`` on the real control socket).
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
import trio

import vproxy
from protocols.control import Guard
from vproxy import Address, GatewayConfig, Route
from vproxy.testing import ScriptedController, conn_of

WAIT = 5.0


class Upstream:
    """A TCP server on loopback; ``accept()`` returns the next accepted (server-side) socket."""

    def __init__(self) -> None:
        self.send_ch, self.recv_ch = trio.open_memory_channel[trio.socket.SocketType](16)
        self.address = Address("127.0.0.1", 0)
        self.sockets: list[trio.socket.SocketType] = []

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        self.address = Address("127.0.0.1", listener.getsockname()[1])
        task_status.started()
        with listener:
            while True:
                sock, _ = await listener.accept()
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.sockets.append(sock)
                await self.send_ch.send(sock)

    async def accept(self) -> trio.socket.SocketType:
        with trio.fail_after(WAIT):
            return await self.recv_ch.receive()


async def connect(addr: Address) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    with trio.fail_after(WAIT):
        await sock.connect((addr.host, addr.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def send(sock: trio.socket.SocketType, data: bytes) -> None:
    with trio.fail_after(WAIT):
        view = memoryview(data)
        while view:
            view = view[await sock.send(view):]


async def recv_exactly(sock: trio.socket.SocketType, n: int) -> bytes:
    """Exactly ``n`` bytes; AssertionError if the stream ends first."""
    out = bytearray()
    with trio.fail_after(WAIT):
        while len(out) < n:
            chunk = await sock.recv(n - len(out))
            assert chunk, f"stream ended after {bytes(out)!r}, wanted {n} bytes"
            out += chunk
    return bytes(out)


async def recv_to_eof(sock: trio.socket.SocketType, limit: int = 1 << 20) -> bytes:
    """Everything until the peer closes (bounded by ``limit`` bytes and WAIT seconds)."""
    out = bytearray()
    with trio.fail_after(WAIT):
        while len(out) <= limit:
            chunk = await sock.recv(65536)
            if not chunk:
                return bytes(out)
            out += chunk
    raise AssertionError(f"more than {limit} bytes without EOF")


async def assert_silent(sock: trio.socket.SocketType, window: float = 0.15) -> None:
    """Nothing is readable on ``sock`` during ``window`` (neither bytes nor EOF)."""
    with trio.move_on_after(window):
        data = await sock.recv(65536)
        raise AssertionError(f"expected nothing on the socket, got {data!r}")


async def wait_held(serving: vproxy.Serving, n: int) -> None:
    """Until the gateway has received ``n`` held bytes (bounded poll of its counters)."""
    with trio.fail_after(5):
        while serving.gateway.stats.bytes_held < n:
            await trio.sleep(0.005)


async def guarded_pair(start_gateway: StartGateway, upstream: Upstream, **config: Any
                       ) -> tuple[vproxy.Serving, ScriptedController, Any, Any]:
    """A gateway started with ``config``, guarded by a scripted controller, and one relayed
    connection bound to it (CONN sent and processed): (serving, ctl, client, server)."""
    serving = await start_gateway(**config)
    ctl = await ScriptedController.connect(serving.control)
    await ctl.send(Guard())
    await ctl.sync()
    client = await connect(serving.listening[0])
    server = await upstream.accept()
    await ctl.send(conn_of(1, server))
    await ctl.sync()
    return serving, ctl, client, server


@pytest.fixture
def net() -> SimpleNamespace:
    """The socket helpers above, for test modules (importlib mode cannot import conftest)."""
    return SimpleNamespace(connect=connect, send=send, recv_exactly=recv_exactly,
                           recv_to_eof=recv_to_eof, assert_silent=assert_silent,
                           wait_held=wait_held, guarded_pair=guarded_pair, WAIT=WAIT)


@pytest.fixture
def ctl_dir() -> Iterator[str]:
    # Unix socket paths are limited to 108 bytes: keep it short, not under pytest's tmp_path.
    path = tempfile.mkdtemp(prefix="vp", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> AsyncIterator[Upstream]:
    up = Upstream()
    await nursery.start(up.serve)
    yield up
    for sock in up.sockets:
        sock.close()


StartGateway = Callable[..., Awaitable[vproxy.Serving]]


@pytest.fixture
def start_gateway(nursery: trio.Nursery, upstream: Upstream, ctl_dir: str) -> StartGateway:
    """``await start_gateway(protocol="raw", **config_fields)`` -> Serving (one route)."""

    async def start(protocol: str = "raw", control: bool = True, routes: tuple[Route, ...] = (),
                    **fields: Any) -> vproxy.Serving:
        config = GatewayConfig(
            routes=routes or (Route(Address("127.0.0.1", 0), upstream.address, protocol),),  # type: ignore[arg-type]
            control=f"{ctl_dir}/ctl.sock" if control else None)
        config = replace(config, **fields)
        serving: vproxy.Serving = await nursery.start(vproxy.serve, config)
        return serving

    return start

"""Back routes: the protected server is the client, its held output is its requests to a backend.

The backend is a real keep-alive HTTP/1.1 server (h11 parses what it receives, every received byte
is recorded); the test plays the protected server on the socket it dials through the gateway and
the healer on the control socket. What matters is what the backend received: a committed request
whole, an aborted one not a single byte, and never anything the gateway made up.
"""

from __future__ import annotations

import socket

import h11
import pytest
import trio

from protocols.control import Abort, Begin, Commit, Conn, Endpoint, Guard, Io
from vproxy import Address, Route
from vproxy._link import endpoint
from vproxy.testing import ScriptedController, conn_of

WAIT = 5.0


def answer(target: bytes) -> bytes:
    """The backend's response to a request for ``target``."""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(target), target)


class HttpBackend:
    """A keep-alive HTTP/1.1 server on loopback that answers every request with ``answer``."""

    def __init__(self) -> None:
        self.address = Address("127.0.0.1", 0)
        self.received = bytearray()  # every byte of every connection, in arrival order
        self.requests: list[bytes] = []  # targets of the complete requests, in order
        self.endings: list[str] = []  # per connection: "eof" or the h11 error that ended it

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        self.address = Address("127.0.0.1", listener.getsockname()[1])
        task_status.started()
        with listener:
            async with trio.open_nursery() as nursery:
                while True:
                    sock, _ = await listener.accept()
                    nursery.start_soon(self._handle, sock)

    async def _handle(self, sock: trio.socket.SocketType) -> None:
        conn = h11.Connection(h11.SERVER)
        target = b""
        with sock:
            for _ in range(10_000):  # bounded: a test sends a handful of requests
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    self.endings.append(f"error: {exc}")
                    return
                if event is h11.NEED_DATA:
                    data = await sock.recv(65536)
                    self.received += data
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    target = event.target
                elif isinstance(event, h11.EndOfMessage):
                    self.requests.append(target)
                    data = b"".join(conn.send(e) for e in (  # the same bytes as ``answer``
                        h11.Response(status_code=200, reason=b"OK",
                                     headers=[("Content-Length", str(len(target)))]),
                        h11.Data(data=target), h11.EndOfMessage()))
                    assert data == answer(target)
                    while data:
                        data = data[await sock.send(data):]
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    self.endings.append("eof")
                    return


@pytest.fixture
async def backend(nursery: trio.Nursery) -> HttpBackend:
    server = HttpBackend()
    await nursery.start(server.serve)
    return server


async def _protected_client(start_gateway, net, backend, *events, early=False):
    """A guarded gateway with one back route to ``backend``, and the protected server's socket.
    ``events`` follow its CONN; ``early``: all of them are applied before the protected server
    even connects (the gateway learns of the link after its transactions ended)."""
    route = Route(Address("127.0.0.1", 0), backend.address, "http", "back")
    serving = await start_gateway(routes=(route,), on_abort="replace")
    ctl = await ScriptedController.connect(serving.control)
    await ctl.send(Guard())
    await ctl.sync()
    listen = serving.listening[0]
    protected = trio.socket.socket()
    await protected.bind(("127.0.0.1", 0))
    conn = Conn(1, endpoint(protected.getsockname()), Endpoint(listen.host, listen.port))
    if early:
        await ctl.send(conn, *events)
        await ctl.sync()
    with trio.fail_after(WAIT):
        await protected.connect((listen.host, listen.port))  # the server dials its backend
    protected.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not early:
        await _until(lambda: serving.gateway.stats.active == 1)  # the gateway dialled it
        await ctl.send(conn, *events)
    return serving, ctl, protected


async def _until(predicate) -> None:
    with trio.fail_after(WAIT):
        while not predicate():
            await trio.sleep(0.005)


async def test_aborted_request_never_reaches_the_backend(start_gateway, net, backend):
    serving, ctl, protected = await _protected_client(start_gateway, net, backend)
    first = b"GET /balance HTTP/1.1\r\nHost: ledger\r\n\r\n"
    doomed = b"POST /debit HTTP/1.1\r\nHost: ledger\r\nContent-Length: 3\r\n\r\n100"
    last = b"GET /debit-10 HTTP/1.1\r\nHost: ledger\r\n\r\n"
    a, b, c = len(first), len(first) + len(doomed), len(first) + len(doomed) + len(last)

    await ctl.send(Begin(1, None), Io(1, 1, "out", 0, a), Commit(1))
    await net.send(protected, first)
    expected = answer(b"/balance")
    assert await net.recv_exactly(protected, len(expected)) == expected  # input: never held

    await ctl.send(Begin(2, None), Io(2, 1, "out", a, b))
    await net.send(protected, doomed)
    await _until(lambda: serving.gateway.stats.bytes_held >= b)
    await ctl.send(Abort(2, "SIGSEGV"))
    await ctl.sync()

    await ctl.send(Begin(3, None), Io(3, 1, "out", b, c), Commit(3))
    await net.send(protected, last)
    expected = answer(b"/debit-10")
    assert await net.recv_exactly(protected, len(expected)) == expected  # the link went on
    await net.assert_silent(protected, 0.05)
    assert bytes(backend.received) == first + last  # no byte of the debit, nothing made up
    assert backend.requests == [b"/balance", b"/debit-10"]
    assert serving.gateway.stats.replacements == 0
    assert serving.gateway.stats.bytes_discarded == len(doomed)


HEAD = b"POST /debit HTTP/1.1\r\nHost: ledger\r\nContent-Length: 3\r\n\r\n"


@pytest.mark.parametrize("early", [False, True], ids=["link-known", "aborted-before-link"])
async def test_abort_inside_a_released_request_closes_the_backend_link(start_gateway, net,
                                                                      backend, early):
    """The head went out (committed), the body's transaction aborted: the backend must not get a
    request completed by anything, so the link closes after what was released. The same when
    the abort came before the gateway knew the link (its events were kept for it)."""
    serving, _ctl, protected = await _protected_client(
        start_gateway, net, backend, Begin(1, None), Io(1, 1, "out", 0, len(HEAD)), Commit(1),
        Begin(2, None), Io(2, 1, "out", len(HEAD), len(HEAD) + 3), Abort(2, "SIGSEGV"),
        early=early)
    await net.send(protected, HEAD + b"100")
    assert await net.recv_to_eof(protected) == b""  # no fabricated answer either
    await _until(lambda: bool(backend.endings))
    assert bytes(backend.received) == HEAD
    assert backend.requests == [] and backend.endings[0].startswith("error")
    assert serving.gateway.stats.replacements == 0


async def test_line_back_route_sends_no_error_line_to_the_backend(start_gateway, net, upstream):
    """The ERR line a front route's client would get is never sent to a backend as a command."""
    route = Route(Address("127.0.0.1", 0), upstream.address, "line", "back")
    serving = await start_gateway(routes=(route,), on_abort="replace")
    ctl = await ScriptedController.connect(serving.control)
    await ctl.send(Guard())
    await ctl.sync()
    protected = await net.connect(serving.listening[0])
    ledger = await upstream.accept()
    await ctl.send(conn_of(1, protected), Begin(1, None), Io(1, 1, "out", 0, 10),
                   Abort(1, "SIGSEGV"), Begin(2, None), Io(2, 1, "out", 10, 18), Commit(2))
    await net.send(protected, b"DEBIT 100\nDEBIT 1\n")
    assert await net.recv_exactly(ledger, 8) == b"DEBIT 1\n"
    await net.assert_silent(ledger, 0.05)
    await net.send(ledger, b"OK\n")
    assert await net.recv_exactly(protected, 3) == b"OK\n"
    assert serving.gateway.stats.replacements == 0

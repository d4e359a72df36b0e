"""End to end: the HTTP framers find every boundary in real traffic with Debian's Apache.

Pipelined keep-alive requests go to a real Apache over a real loopback socket; the bytes each side
sent are recorded (the server's as the receives delivered them) and framed the way the gateway
does it (``expect`` at each request's MessageStart). Content-Length, HEAD, a chunked autoindex
page, 404, 304 and an HTTP/1.0 exchange that closes all come from Apache itself (close-delimited
bodies, which this Apache never sends for these pages, are covered by the unit tests).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest

from protocols.http import (
    NEED_DATA,
    H11RequestFramer,
    H11ResponseFramer,
    MessageEnd,
    MessageStart,
    RequestFramer,
    ResponseFramer,
    StreamEnd,
)
from targets import apache

pytestmark = pytest.mark.apache

MAX_RECEIVES = 10_000


@pytest.fixture(scope="module")
def httpd() -> Iterator[apache.Apache]:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = apache.start(port=port, host="127.0.0.1", timeout=20)
    try:
        yield server
    finally:
        server.stop()


def exchange(httpd: apache.Apache, requests: bytes) -> list[bytes]:
    """Send ``requests`` at once; return the server's answer as its receives delivered it."""
    with socket.create_connection((httpd.host, httpd.port), timeout=10) as sock:
        sock.sendall(requests)
        received = []
        for _ in range(MAX_RECEIVES):
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received.append(chunk)
    raise AssertionError("Apache did not close the connection")


def frame(request_cls: type, response_cls: type, requests: bytes,
          receives: list[bytes]) -> tuple[list[object], list[object]]:
    """Frame both directions as the gateway does; return (request events, response events)."""
    req_framer, resp_framer = request_cls(), response_cls()
    req_events, resp_events = [], []
    req_framer.receive_data(requests)
    req_framer.receive_data(b"")
    for _ in range(MAX_RECEIVES):
        event = req_framer.next_event()
        if isinstance(event, StreamEnd):
            break
        req_events.append(event)
        if isinstance(event, MessageStart):
            resp_framer.expect(event.info)
    for chunk in [*receives, b""]:
        resp_framer.receive_data(chunk)
        for _ in range(MAX_RECEIVES):
            event = resp_framer.next_event()
            if event is NEED_DATA:
                break
            resp_events.append(event)
    return req_events, resp_events


def get(path: str, *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: localhost", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("engine", [(RequestFramer, ResponseFramer),
                                    (H11RequestFramer, H11ResponseFramer)],
                         ids=["llhttp", "h11"])
def test_pipelined_keep_alive_exchange_with_apache(httpd, engine) -> None:
    first = b"".join(exchange(httpd, get("/manual/index.html", "Connection: close")))
    modified = re.search(rb"Last-Modified: ([^\r]+)", first).group(1).decode()
    requests = (get("/manual/index.html") + get("/manual/index.html", method="HEAD")
                + get("/manual/images/") + get("/manual/no-such-page")
                + get("/manual/index.html", f"If-Modified-Since: {modified}")
                + get("/manual/", "Connection: close"))
    receives = exchange(httpd, requests)
    stream = b"".join(receives)
    req_events, resp_events = frame(*engine, requests, receives)

    assert [e.info.method for e in req_events if isinstance(e, MessageEnd)] == [
        "GET", "HEAD", "GET", "GET", "GET", "GET"]
    starts = [e for e in resp_events if isinstance(e, MessageStart)]
    ends = [e for e in resp_events if isinstance(e, MessageEnd)]
    assert [e.info.status for e in ends] == [200, 200, 200, 404, 304, 200]
    # the responses tile the stream exactly: each begins where the previous ended
    assert [s.offset for s in starts] == [0] + [e.offset for e in ends[:-1]]
    assert ends[-1].offset == len(stream) and resp_events[-1] == StreamEnd(len(stream))
    for start, end in zip(starts, ends, strict=True):
        head = stream[start.offset:start.head_end]
        assert head.startswith(b"HTTP/1.1 ") and head.endswith(b"\r\n\r\n")
        length = re.search(rb"Content-Length: (\d+)", head)
        if start.info.method == "HEAD" or start.info.status == 304:
            assert end.offset == start.head_end
        elif length:
            assert end.offset - start.head_end == int(length.group(1))
        else:  # the autoindex page is generated: chunked, ends with the last chunk
            assert b"Transfer-Encoding: chunked" in head
            assert stream[:end.offset].endswith(b"0\r\n\r\n")
    assert not ends[-1].info.keep_alive and all(e.info.keep_alive for e in ends[:-1])


@pytest.mark.parametrize("engine", [(RequestFramer, ResponseFramer),
                                    (H11RequestFramer, H11ResponseFramer)],
                         ids=["llhttp", "h11"])
def test_http10_request_without_keep_alive_ends_the_stream(httpd, engine) -> None:
    requests = get("/manual/images/", version="1.0")
    receives = exchange(httpd, requests)
    req_events, resp_events = frame(*engine, requests, receives)
    assert not req_events[0].info.keep_alive
    start, end, closed = resp_events
    assert start.info.status == 200 and not start.info.keep_alive
    assert end.offset == closed.offset == sum(map(len, receives))

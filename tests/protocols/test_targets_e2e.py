"""End to end: the line and length-prefixed framers on real TCP streams.

Line: the project's gcc-built kv_server answers pipelined commands; both directions are framed
and every reply line is found where the server wrote it, however the kernel split the receives.
Length-prefixed: no C target speaks it, so a peer thread writes frames over a real loopback TCP
connection in odd-sized writes (TCP_NODELAY), and the framer must find each frame in the receives.
"""

from __future__ import annotations

import random
import select
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from protocols.lenpfx import FrameInfo, LengthPrefixFramer, error_frame
from protocols.line import LineFramer, MessageEnd, MessageStart, StreamEnd
from targets import build

MAX_RECEIVES = 10_000


@pytest.fixture(scope="module")
def kv_port() -> Iterator[int]:
    proc = subprocess.Popen([str(build("kv_server")), "0"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "kv_server did not print READY within 20 s"
        line = proc.stdout.readline().decode()
        assert line.startswith("READY "), line
        yield int(line.split()[1])
    finally:
        proc.kill()
        proc.wait(10)


def receive_all(sock: socket.socket) -> list[bytes]:
    sock.settimeout(10)
    receives = []
    for _ in range(MAX_RECEIVES):
        chunk = sock.recv(65536)
        if not chunk:
            return receives
        receives.append(chunk)
    raise AssertionError("the peer did not close")


def frame(framer: LineFramer | LengthPrefixFramer, receives: list[bytes]) -> list[object]:
    events: list[object] = []
    for chunk in [*receives, b""]:
        framer.receive_data(chunk)
        for _ in range(MAX_RECEIVES):
            event = framer.next_event()
            if not isinstance(event, MessageStart | MessageEnd | StreamEnd):
                break
            events.append(event)
    return events


def test_kv_server_replies_are_framed_line_by_line(kv_port) -> None:
    commands = b"SET a 1\nGET a\r\nGET b\nCOUNT\nDEL a\nBOGUS\n"
    with socket.create_connection(("127.0.0.1", kv_port), timeout=10) as sock:
        sock.sendall(commands)
        sock.shutdown(socket.SHUT_WR)  # the server answers everything, then closes on EOF
        receives = receive_all(sock)
    stream = b"".join(receives)
    asked = [e.info.payload for e in frame(LineFramer(side="client"), [commands])
             if isinstance(e, MessageEnd)]
    assert asked == [b"SET a 1", b"GET a", b"GET b", b"COUNT", b"DEL a", b"BOGUS"]
    events = frame(LineFramer(side="server"), receives)
    ends = [e for e in events if isinstance(e, MessageEnd)]
    assert [e.info.payload for e in ends] == [b"STORED", b"VALUE 1", b"NOT_FOUND", b"COUNT 1",
                                              b"DELETED", b"ERROR unknown command"]
    assert [e.offset for e in ends] == [i + 1 for i, b in enumerate(stream) if b == ord("\n")]
    assert events[-1] == StreamEnd(len(stream))


def test_frames_written_in_odd_pieces_are_found_in_the_receives() -> None:
    rng = random.Random(7)
    payloads = [bytes([i % 251]) * rng.randrange(0, 5000) for i in range(60)]
    stream = b"".join(error_frame(p, width=2, byteorder="little") for p in payloads)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def peer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                at = 0
                while at < len(stream):
                    step = rng.randrange(1, 3000)
                    conn.sendall(stream[at:at + step])
                    at += step

        writer = threading.Thread(target=peer, daemon=True)
        writer.start()
        with socket.create_connection(listener.getsockname(), timeout=10) as sock:
            receives = receive_all(sock)
        writer.join(10)
    assert b"".join(receives) == stream
    events = frame(LengthPrefixFramer(width=2, byteorder="little", side="server"), receives)
    ends = [e for e in events if isinstance(e, MessageEnd)]
    assert [e.info for e in ends] == [FrameInfo(len(p)) for p in payloads]
    expected_ends, at = [], 0
    for p in payloads:
        at += 2 + len(p)
        expected_ends.append(at)
    assert [e.offset for e in ends] == expected_ends
    assert events[-1] == StreamEnd(len(stream))

"""Line framer and error_line: unit cases (the property tests are in test_properties.py)."""

from __future__ import annotations

import pytest

from protocols.line import (
    NEED_DATA,
    HeadTooLarge,
    LineFramer,
    LineInfo,
    MessageEnd,
    MessageStart,
    StreamEnd,
    TruncatedMessage,
    error_line,
)


def test_lines_with_lf_and_crlf(drain) -> None:
    events = drain(LineFramer(), [b"GET k\r\nSET k v\n", b"\n", b""])
    assert events == [
        MessageStart(0, 7, LineInfo(b"GET k")), MessageEnd(7, LineInfo(b"GET k")),
        MessageStart(7, 15, LineInfo(b"SET k v")), MessageEnd(15, LineInfo(b"SET k v")),
        MessageStart(15, 16, LineInfo(b"")), MessageEnd(16, LineInfo(b"")),
        StreamEnd(16)]


def test_custom_terminator_split_across_chunks(drain) -> None:
    events = drain(LineFramer(terminator=b"\r\n", side="server"), [b"+OK\r", b"\n+P", b"ONG\r\n"])
    assert [e.offset for e in events] == [0, 5, 5, 12]
    assert events[-1].info == LineInfo(b"+PONG")


def test_partial_line_waits_then_eof_inside_it_is_truncated(drain) -> None:
    framer = LineFramer(side="server")
    framer.receive_data(b"half")
    assert framer.next_event() is NEED_DATA
    with pytest.raises(TruncatedMessage) as err:
        drain(framer, [b""])
    assert (err.value.side, err.value.offset) == ("server", 4)
    with pytest.raises(TruncatedMessage):
        framer.next_event()


def test_limit_is_exact_and_holds_however_the_line_arrives(drain) -> None:
    ok = b"x" * 8 + b"\r\n"
    assert len(drain(LineFramer(max_length=8), [bytes([b]) for b in ok])) == 2
    long = b"x" * 9 + b"\n"
    for chunks in ([long], [bytes([b]) for b in long], [long[:-1]]):
        framer = LineFramer(max_length=8)
        with pytest.raises(HeadTooLarge) as err:
            drain(framer, chunks)
        assert err.value.offset == 8


def test_framer_never_keeps_more_than_the_limit(drain) -> None:
    framer = LineFramer(max_length=16)
    with pytest.raises(HeadTooLarge):
        for _ in range(100):
            drain(framer, [b"y" * 5])
    assert len(framer._buf) <= 16 + 5


def test_error_line_is_one_safe_line() -> None:
    assert error_line("busy") == b"ERR busy\n"
    forged = error_line("x\r\nOK 100 credits\x00é")
    assert forged.count(b"\n") == 1 and forged.endswith(b"\n") and forged.isascii()
    assert len(error_line("z" * 10_000)) == len(b"ERR \n") + 200

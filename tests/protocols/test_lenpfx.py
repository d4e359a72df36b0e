"""Length-prefixed framer and error_frame: unit cases (properties in test_properties.py)."""

from __future__ import annotations

import pytest

from protocols.lenpfx import (
    FrameInfo,
    LengthPrefixFramer,
    MalformedMessage,
    MessageEnd,
    MessageStart,
    MessageTooLarge,
    StreamEnd,
    TruncatedMessage,
    error_frame,
)


@pytest.mark.parametrize("width", [1, 2, 4, 8])
@pytest.mark.parametrize("byteorder", ["big", "little"])
def test_frames_of_every_width_and_order(drain, width, byteorder) -> None:
    frames = [error_frame(p, width=width, byteorder=byteorder) for p in (b"abc", b"", b"z" * 200)]
    framer = LengthPrefixFramer(width=width, byteorder=byteorder)
    events = drain(framer, [b"".join(frames), b""])
    at, expected = 0, []
    for payload_len in (3, 0, 200):
        info = FrameInfo(payload_len)
        expected += [MessageStart(at, at + width, info),
                     MessageEnd(at + width + payload_len, info)]
        at += width + payload_len
    assert events == [*expected, StreamEnd(at)]


def test_prefix_split_across_chunks_and_payload_never_buffered(drain) -> None:
    framer = LengthPrefixFramer(width=4)
    assert drain(framer, [b"\x00\x00", b"\x10"]) == []
    start = drain(framer, [b"\x00"])
    assert start == [MessageStart(0, 4, FrameInfo(0x1000))]
    assert drain(framer, [b"p" * 0x800]) == []
    assert not framer._queue  # payload bytes are counted, not kept
    assert drain(framer, [b"p" * 0x800]) == [MessageEnd(4 + 0x1000, FrameInfo(0x1000))]


def test_length_including_its_prefix(drain) -> None:
    frame = error_frame(b"hi", width=2, includes_prefix=True)
    assert frame == b"\x00\x04hi"
    events = drain(LengthPrefixFramer(width=2, includes_prefix=True), [frame])
    assert events[-1] == MessageEnd(4, FrameInfo(2))
    with pytest.raises(MalformedMessage):
        drain(LengthPrefixFramer(width=2, includes_prefix=True), [b"\x00\x01"])


def test_oversized_frame_is_refused_at_its_prefix(drain) -> None:
    framer = LengthPrefixFramer(width=4, max_frame=1000, side="server")
    with pytest.raises(MessageTooLarge) as err:
        drain(framer, [error_frame(b"ok"), b"\xff\xff\xff\xff"])
    assert (err.value.side, err.value.offset) == ("server", 6)
    with pytest.raises(MessageTooLarge):
        framer.next_event()


@pytest.mark.parametrize("cut", [b"\x00\x00", b"\x00\x00\x00\x05abc"])
def test_eof_inside_a_frame_is_truncated(drain, cut) -> None:
    with pytest.raises(TruncatedMessage):
        drain(LengthPrefixFramer(), [cut, b""])


def test_error_frame_refuses_what_does_not_fit() -> None:
    with pytest.raises(ValueError):
        error_frame(b"x" * 256, width=1)
    with pytest.raises(ValueError):
        error_frame(b"x" * 255, width=1, includes_prefix=True)
    with pytest.raises(ValueError):
        LengthPrefixFramer(width=3)
    assert error_frame(b"x" * 255, width=1)[0] == 255

"""Length-prefixed framing, sans-IO: each message is an unsigned length field followed by that many
payload bytes (binary RPC protocols, the planted-bug C targets).

Use::

    framer = LengthPrefixFramer(width=4, byteorder="big", side="server")
    framer.receive_data(chunk)            # b"" when the peer closed
    while (event := framer.next_event()) is not NEED_DATA:
        ...  # MessageStart when the prefix is complete, MessageEnd when the payload is

The framer never keeps payload bytes, only counts them, so a frame of any allowed size costs no
memory; ``error_frame`` builds a replacement frame.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from protocols._framing import (
    NEED_DATA,
    BufferLimitExceeded,
    HeadTooLarge,
    MalformedMessage,
    MessageEnd,
    MessageStart,
    MessageTooLarge,
    NeedData,
    ProtocolError,
    Side,
    StreamEnd,
    TruncatedMessage,
)

__all__ = [
    "NEED_DATA",
    "BufferLimitExceeded",
    "FrameInfo",
    "HeadTooLarge",
    "LengthPrefixFramer",
    "MalformedMessage",
    "MessageEnd",
    "MessageStart",
    "MessageTooLarge",
    "ProtocolError",
    "StreamEnd",
    "TruncatedMessage",
    "error_frame",
]

ByteOrder = Literal["big", "little"]
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
_WIDTHS = (1, 2, 4, 8)


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """One frame: ``length`` payload bytes (the prefix not counted)."""

    length: int


FrameEvent = MessageStart[FrameInfo] | MessageEnd[FrameInfo] | StreamEnd


def _check_format(width: int, byteorder: str) -> None:
    if width not in _WIDTHS:
        raise ValueError(f"prefix width must be one of {_WIDTHS}, got {width}")
    if byteorder not in ("big", "little"):
        raise ValueError(f"byteorder must be 'big' or 'little', got {byteorder!r}")


class LengthPrefixFramer:
    """Splits one direction of a stream into length-prefixed frames.

    Args:
        side: who writes this direction (named in errors).
        width: bytes in the length field: 1, 2, 4 or 8.
        byteorder: ``"big"`` (network order) or ``"little"``.
        max_frame: largest payload accepted.
        includes_prefix: the length field counts the prefix too (then a value below ``width``
            is malformed).

    Error handling:
        MessageTooLarge for a length above ``max_frame``; MalformedMessage for a length smaller than
        its own prefix (``includes_prefix``); TruncatedMessage when the stream ends in a frame.
    """

    def __init__(self, *, side: Side = "client", width: int = 4, byteorder: ByteOrder = "big",
                 max_frame: int = DEFAULT_MAX_FRAME, includes_prefix: bool = False) -> None:
        _check_format(width, byteorder)
        self._side: Side = side
        self._width = width
        self._order: ByteOrder = byteorder
        self._max = max_frame
        self._inclusive = includes_prefix
        self._prefix = bytearray()  # the length field read so far (at most width bytes)
        self._offset = 0  # stream bytes consumed
        self._queue: deque[bytes] = deque()  # received chunks not yet consumed
        self._remaining: int | None = None  # payload bytes still due in the current frame
        self._frame: FrameInfo | None = None
        self._eof = False
        self._ended = False
        self._error: ProtocolError | None = None

    def receive_data(self, data: bytes) -> None:
        """Feed the next bytes of the stream; ``b""`` means the peer closed it."""
        if self._eof and data:
            raise RuntimeError("receive_data after EOF")
        if not data:
            self._eof = True
            return
        self._queue.append(bytes(data))

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet framed: what this framer holds in memory right now."""
        return sum(map(len, self._queue))

    def next_event(self) -> FrameEvent | NeedData:
        """The next event, or NEED_DATA until more bytes arrive.

        Error handling:
            Raises the ProtocolError named in the class docstring, again on every later call.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except ProtocolError as exc:
            self._error = exc
            raise

    def _take(self, n: int) -> bytes:
        """Consume up to ``n`` queued bytes and return them."""
        out = bytearray()
        while self._queue and len(out) < n:
            chunk = self._queue[0]
            want = n - len(out)
            if len(chunk) <= want:
                out += chunk
                self._queue.popleft()
            else:
                out += chunk[:want]
                self._queue[0] = chunk[want:]
        self._offset += len(out)
        return bytes(out)

    def _skip(self, n: int) -> int:
        """Consume up to ``n`` queued payload bytes without copying them; return how many."""
        done = 0
        while self._queue and done < n:
            chunk = self._queue[0]
            if len(chunk) <= n - done:
                done += len(chunk)
                self._queue.popleft()
            else:
                self._queue[0] = chunk[n - done:]
                done = n
        self._offset += done
        return done

    def _next(self) -> FrameEvent | NeedData:
        if self._remaining is None:
            self._prefix += self._take(self._width - len(self._prefix))
            if len(self._prefix) < self._width:
                return self._at_eof("a length prefix") if self._eof else NEED_DATA
            start = self._offset - self._width
            length = int.from_bytes(self._prefix, self._order)
            self._prefix.clear()
            if self._inclusive:
                if length < self._width:
                    raise MalformedMessage(self._side, start,
                                           f"length {length} is shorter than its own "
                                           f"{self._width}-byte prefix")
                length -= self._width
            if length > self._max:
                raise MessageTooLarge(self._side, start,
                                      f"frame of {length} bytes exceeds the limit of {self._max}")
            self._frame = FrameInfo(length)
            self._remaining = length
            return MessageStart(start, self._offset, self._frame)
        assert self._frame is not None
        self._remaining -= self._skip(self._remaining)
        if self._remaining:
            return self._at_eof("a frame's payload") if self._eof else NEED_DATA
        info, self._frame, self._remaining = self._frame, None, None
        return MessageEnd(self._offset, info)

    def _at_eof(self, where: str) -> StreamEnd | NeedData:
        if self._prefix or self._remaining:
            raise TruncatedMessage(self._side, self._offset, f"stream ended inside {where}")
        if self._ended:
            return NEED_DATA
        self._ended = True
        return StreamEnd(self._offset)


def error_frame(payload: bytes, *, width: int = 4, byteorder: ByteOrder = "big",
                includes_prefix: bool = False) -> bytes:
    """A complete frame carrying ``payload``: the replacement for an aborted answer.

    Error handling:
        ValueError when the payload does not fit the length field or the format is invalid.
    """
    _check_format(width, byteorder)
    length = len(payload) + (width if includes_prefix else 0)
    if length >= 1 << (8 * width):
        raise ValueError(f"a {len(payload)}-byte payload does not fit a {width}-byte length field")
    return length.to_bytes(width, byteorder) + payload

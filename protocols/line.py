"""Line framing, sans-IO: each message is one line ended by a terminator (SMTP-, Redis-inline-,
memcached-style text protocols and the planted-bug C targets).

Use::

    framer = LineFramer(side="client")
    framer.receive_data(chunk)            # b"" when the peer closed
    while (event := framer.next_event()) is not NEED_DATA:
        ...  # MessageStart / MessageEnd (info: LineInfo) for each line, StreamEnd at a clean EOF

A complete line yields its MessageStart and MessageEnd together: a line is only known to be a line
once its terminator arrived. ``error_line`` builds the replacement the gateway sends for a line
whose answer was aborted.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    "HeadTooLarge",
    "LineFramer",
    "LineInfo",
    "MalformedMessage",
    "MessageEnd",
    "MessageStart",
    "MessageTooLarge",
    "ProtocolError",
    "StreamEnd",
    "TruncatedMessage",
    "error_line",
]

DEFAULT_MAX_LENGTH = 64 * 1024
_ERROR_TEXT_MAX = 200


@dataclass(frozen=True, slots=True)
class LineInfo:
    """One line: ``payload`` without its terminator (and without a ``\\r`` before a ``\\n``)."""

    payload: bytes


LineEvent = MessageStart[LineInfo] | MessageEnd[LineInfo] | StreamEnd


class LineFramer:
    """Splits one direction of a stream into lines.

    Args:
        side: who writes this direction (named in errors).
        terminator: bytes that end a line; with the default ``b"\\n"`` a line ending ``\\r\\n`` is
            accepted too and its ``\\r`` is not part of the payload.
        max_length: longest line accepted, terminator excluded.

    Error handling:
        HeadTooLarge when a line grows past ``max_length`` without a terminator; TruncatedMessage
        when the stream ends inside a line. The framer keeps at most ``max_length`` plus a
        terminator's length of unconsumed bytes between calls (plus what one call fed).
    """

    def __init__(self, *, side: Side = "client", terminator: bytes = b"\n",
                 max_length: int = DEFAULT_MAX_LENGTH) -> None:
        if not terminator:
            raise ValueError("terminator must be at least one byte")
        self._side: Side = side
        self._term = terminator
        self._max = max_length
        # what may follow max_length bytes in a line still inside the limit: its ending
        self._ending = b"\r\n" if terminator == b"\n" else terminator
        self._buf = bytearray()
        self._base = 0  # stream offset of self._buf[0]
        self._scanned = 0  # bytes of self._buf known to hold no terminator start
        self._pending: list[LineEvent] = []
        self._eof = False
        self._ended = False
        self._error: ProtocolError | None = None

    def receive_data(self, data: bytes) -> None:
        """Feed the next bytes of the stream; ``b""`` means the peer closed it."""
        if self._eof and data:
            raise RuntimeError("receive_data after EOF")
        if not data:
            self._eof = True
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet framed: what this framer holds in memory right now."""
        return len(self._buf)

    def next_event(self) -> LineEvent | NeedData:
        """The next event, or NEED_DATA until more bytes arrive.

        Error handling:
            Raises the ProtocolError named in the class docstring, again on every later call.
        """
        if self._error is not None:
            raise self._error
        if self._pending:
            return self._pending.pop()
        try:
            return self._next()
        except ProtocolError as exc:
            self._error = exc
            raise

    def _next(self) -> LineEvent | NeedData:
        term = self._term
        # Resume the search where the last one stopped (minus a partial terminator) so a line fed
        # byte by byte costs linear time, not quadratic.
        at = self._buf.find(term, max(0, self._scanned - len(term) + 1))
        if at < 0:
            self._scanned = len(self._buf)
            if len(self._buf) > self._max and not self._ending.startswith(self._buf[self._max:]):
                raise HeadTooLarge(self._side, self._base + self._max,
                                   f"line longer than {self._max} bytes without {term!r}")
            if self._eof:
                if self._buf:
                    raise TruncatedMessage(self._side, self._base + len(self._buf),
                                           f"stream ended inside a line ({len(self._buf)} bytes)")
                if not self._ended:
                    self._ended = True
                    return StreamEnd(self._base)
            return NEED_DATA
        payload = bytes(self._buf[:at])
        if term == b"\n" and payload.endswith(b"\r"):
            payload = payload[:-1]
        if len(payload) > self._max:
            raise HeadTooLarge(self._side, self._base + self._max,
                               f"line longer than {self._max} bytes")
        end = self._base + at + len(term)
        info = LineInfo(payload)
        del self._buf[: at + len(term)]
        start, self._base, self._scanned = self._base, end, 0
        self._pending.append(MessageEnd(end, info))
        return MessageStart(start, end, info)


def error_line(text: str) -> bytes:
    """``b"ERR <text>\\n"``: the replacement for a line-protocol answer that was aborted.

    The text is cut to 200 characters and anything but printable ASCII becomes ``?``, so no
    attacker-chosen byte (a newline above all) can forge a second line.
    """
    clean = "".join(c if " " <= c <= "~" else "?" for c in text[:_ERROR_TEXT_MAX])
    return b"ERR " + clean.encode("ascii") + b"\n"

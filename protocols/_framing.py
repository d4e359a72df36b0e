"""What every framer shares: the events it reports, the errors it raises, and the sentinel.

A framer watches ONE direction of a byte stream and reports where messages begin and end as stream
offsets (bytes from the start of the stream), the unit of the healer's ``IO`` lines, so the
gateway can lay message boundaries over the ranges it holds. Framers never see a socket: the caller
feeds bytes with ``receive_data`` (``b""`` = the peer closed) and drains ``next_event`` until it
returns ``NEED_DATA``. A split of the stream into chunks never changes the events.

Malformed input raises a subclass of ProtocolError that names the side at fault and the offset; the
framer is then broken for good and raises the same error again on every call, so a caller that keeps
polling never loops. Every buffer a framer keeps has a limit; crossing it is an error, not growth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Literal, TypeAlias, TypeVar

from protocols.control import NEED_DATA

Side = Literal["client", "server"]
NeedData: TypeAlias = type(NEED_DATA)  # type: ignore[valid-type]

InfoT = TypeVar("InfoT")

__all__ = [
    "NEED_DATA",
    "BufferLimitExceeded",
    "HeadTooLarge",
    "MalformedMessage",
    "MessageEnd",
    "MessageStart",
    "MessageTooLarge",
    "NeedData",
    "ProtocolError",
    "Side",
    "StreamEnd",
    "TruncatedMessage",
]


class ProtocolError(ValueError):
    """Bytes on a framed stream that break its protocol.

    Attributes:
        side: who sent the offending bytes, ``"client"`` or ``"server"``.
        offset: stream offset at (or just after) the fault.
        reason: what was wrong, in words meant for a log line.
    """

    def __init__(self, side: Side, offset: int, reason: str) -> None:
        super().__init__(f"{side} sent bad data at stream offset {offset}: {reason}")
        self.side: Side = side
        self.offset = offset
        self.reason = reason


class MalformedMessage(ProtocolError):
    """The bytes do not parse as a message of the protocol (bad syntax, bad length field...)."""


class TruncatedMessage(ProtocolError):
    """The stream ended (EOF) in the middle of a message."""


class HeadTooLarge(ProtocolError):
    """A message head (HTTP request/status line and headers, a text line) exceeds its limit."""


class MessageTooLarge(ProtocolError):
    """A length field announces a message larger than the configured maximum."""


class BufferLimitExceeded(ProtocolError):
    """More unconsumed bytes were fed than the framer may hold (drain ``next_event`` first)."""


@dataclass(frozen=True, slots=True)
class MessageStart(Generic[InfoT]):
    """A message begins at stream offset ``offset``; its head (what decides its framing) ends at
    ``head_end``; ``info`` is the framer's description of it (RequestInfo, ResponseInfo, ...)."""

    offset: int
    head_end: int
    info: InfoT


@dataclass(frozen=True, slots=True)
class MessageEnd(Generic[InfoT]):
    """The message described by ``info`` ends at stream offset ``offset`` (exclusive)."""

    offset: int
    info: InfoT


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The peer closed the stream at ``offset``, between messages. Nothing follows this event."""

    offset: int

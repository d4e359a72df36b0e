"""What the HTTP framers report: request and response heads, interim responses (both engines)."""

from __future__ import annotations

from dataclasses import dataclass

from protocols._framing import MessageEnd, MessageStart, StreamEnd

DEFAULT_MAX_HEAD = 64 * 1024  # request/status line plus headers
DEFAULT_MAX_BUFFER = 1024 * 1024  # bytes fed and not yet framed


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """A request head: what the gateway and the response framer need to know about it.

    Attributes:
        method, target, http_version: from the request line (``"GET"``, ``"/a?b"``, ``"1.1"``).
        keep_alive: the client lets the connection carry another request after this one.
        upgrade: an ``Upgrade`` or ``CONNECT`` request: the server's answer may turn the
            connection into a tunnel.
    """

    method: str
    target: str
    http_version: str
    keep_alive: bool
    upgrade: bool


@dataclass(frozen=True, slots=True)
class ResponseInfo:
    """A response head.

    Attributes:
        status, reason, http_version: from the status line.
        method: the method of the request it answers.
        keep_alive: the connection stays open after this response.
        close_delimited: the body has neither Content-Length nor chunked framing: it ends when the
            server closes the connection.
        switched: 101 to an Upgrade or 2xx to CONNECT: after its head the connection is a tunnel.
    """

    status: int
    reason: str
    http_version: str
    method: str
    keep_alive: bool
    close_delimited: bool
    switched: bool


@dataclass(frozen=True, slots=True)
class InterimResponse:
    """A 1xx response other than a protocol switch, bytes [offset, end); the final one follows."""

    offset: int
    end: int
    status: int


RequestEvent = MessageStart[RequestInfo] | MessageEnd[RequestInfo] | StreamEnd
ResponseEvent = MessageStart[ResponseInfo] | MessageEnd[ResponseInfo] | InterimResponse | StreamEnd


def request_info(request: RequestInfo | str) -> RequestInfo:
    """What ResponseFramer.expect takes: a RequestInfo, or just a method for a plain request."""
    if isinstance(request, str):
        return RequestInfo(request, "/", "1.1", keep_alive=True, upgrade=request == "CONNECT")
    return request

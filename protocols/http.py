"""HTTP/1.1 framing, sans-IO: where each request and response begins and ends on the stream.

The gateway frames the client's direction with a RequestFramer and the server's with a
ResponseFramer, and tells the response framer each request's method in order (``expect``), since a
response's framing depends on it (HEAD and 2xx-to-CONNECT have no body)::

    requests, responses = RequestFramer(), ResponseFramer()
    requests.receive_data(chunk_from_client)              # b"" when the client closed
    while (ev := requests.next_event()) is not NEED_DATA:
        if isinstance(ev, MessageStart):
            responses.expect(ev.info)                        # as soon as the head is known
    responses.receive_data(chunk_from_server)
    while (ev := responses.next_event()) is not NEED_DATA:
        ...  # MessageStart/MessageEnd (info: ResponseInfo), InterimResponse for 1xx, StreamEnd

Offsets count bytes from the start of each direction's stream. Pipelining, keep-alive (HTTP/1.1 and
HTTP/1.0 ``Connection: keep-alive``), Content-Length, chunked bodies with trailers, close-delimited
responses (they end at EOF), 1xx interim responses, and 204/304/HEAD responses without a body are
framed. After an ``Upgrade`` or ``CONNECT`` request the request framer waits for
``protocol_switched(accepted)`` (the response framer's ResponseInfo.switched says which); after a
switch both directions are an opaque tunnel and yield no more messages.

Two engines, one interface. RequestFramer/ResponseFramer are the llhttp engine
(protocols/_http_llhttp.py): llhttp, Node.js's parser, as compiled into httptools, driven through
its C API so that it pauses at the exact byte where each head and message ends. httptools' own
Python API cannot do this (its completion callback carries no position, and it cannot be told that
a response answers HEAD). H11RequestFramer/H11ResponseFramer are the same framers on h11: stricter
(e.g. HTTP/1.1 without Host is refused; llhttp refuses Transfer-Encoding with Content-Length,
which h11 lets chunked win) and pure Python. bench/framers.py measures both side by side: on
wget-style keep-alive GETs and 1 KiB responses the llhttp engine takes 8-20 us a message, h11
4.5-5.5 times as long (40-100 us: as much as the whole relay costs per request), and 13 times as
long on chunked bodies; hence the default. The property tests check that both engines put every
boundary of generated streams at the same offset.

``error_response`` builds the protocol-correct replacement the gateway sends for an aborted
response.
"""

from __future__ import annotations

from http import HTTPStatus

from protocols._framing import (
    NEED_DATA,
    BufferLimitExceeded,
    HeadTooLarge,
    MalformedMessage,
    MessageEnd,
    MessageStart,
    MessageTooLarge,
    ProtocolError,
    StreamEnd,
    TruncatedMessage,
)
from protocols._http_events import InterimResponse, RequestInfo, ResponseInfo
from protocols._http_h11 import H11RequestFramer, H11ResponseFramer
from protocols._http_llhttp import LlhttpRequestFramer, LlhttpResponseFramer

__all__ = [
    "NEED_DATA",
    "BufferLimitExceeded",
    "H11RequestFramer",
    "H11ResponseFramer",
    "HeadTooLarge",
    "InterimResponse",
    "MalformedMessage",
    "MessageEnd",
    "MessageStart",
    "MessageTooLarge",
    "ProtocolError",
    "RequestFramer",
    "RequestInfo",
    "ResponseFramer",
    "ResponseInfo",
    "StreamEnd",
    "TruncatedMessage",
    "error_response",
]

RequestFramer = LlhttpRequestFramer
ResponseFramer = LlhttpResponseFramer


def error_response(status: int = 503, reason: str | None = None, *, close: bool = True,
                   head: bool = False, body: str | None = None) -> bytes:
    """A complete HTTP/1.1 response the gateway can send instead of one that was aborted.

    Args:
        status: 200-599 except 204 and 304 (those can carry no body).
        reason: the reason phrase; the standard one for ``status`` by default.
        close: add ``Connection: close`` (the gateway then closes the connection).
        head: the request was HEAD: the headers announce the body but it is not sent.
        body: text/plain body; ``"<status> <reason>\\n"`` by default.

    Returns:
        The response bytes, with Content-Type and Content-Length.

    Error handling:
        ValueError for a status that cannot carry a body, or a reason/body with CR or LF in the
        reason (which would let text forge headers).
    """
    if not 200 <= status <= 599 or status in (204, 304):
        raise ValueError(f"status {status} cannot be a replacement response with a body")
    if reason is None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Error"
    if any(c in reason for c in "\r\n") or not reason.isascii():
        raise ValueError(f"reason phrase {reason!r} must be one line of ASCII")
    payload = (f"{status} {reason}\n" if body is None else body).encode("utf-8")
    lines = [f"HTTP/1.1 {status} {reason}",
             "Content-Type: text/plain; charset=utf-8",
             f"Content-Length: {len(payload)}"]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (b"" if head else payload)

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

Why h11 and not httptools (llhttp): bench/framers.py measures both. llhttp parses several times
faster, but httptools reports a completed message only through a callback that carries no position,
so it cannot say at which byte of a chunk a pipelined message ended, and it has no way to be told a
response answers a HEAD request (it would wait for a body that never comes). Boundaries are the
whole point of this module, so it rests on h11, whose receive buffer tells exactly how many bytes
each event consumed. The cost per message is in the numbers bench/framers.py prints.

``error_response`` builds the protocol-correct replacement the gateway sends for an aborted
response.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from http import HTTPStatus

import h11
from h11._connection import _body_framing  # h11's own framing rule, so ours cannot drift from it
from h11._headers import Headers, get_comma_header

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

DEFAULT_MAX_HEAD = 64 * 1024
DEFAULT_MAX_BUFFER = 1024 * 1024


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


def _persistent(http_version: bytes, headers: Headers) -> bool:
    """RFC 9112 §9.3: does this message leave the connection open? (h11 alone treats every
    HTTP/1.0 message as closing, which would break HTTP/1.0 keep-alive clients such as ab.)"""
    connection = get_comma_header(headers, b"connection")
    if b"close" in connection:
        return False
    return http_version >= b"1.1" or b"keep-alive" in connection


class _H11Framer:
    """One direction of an HTTP connection, parsed by an h11.Connection playing the receiving end.

    h11 models a whole connection, so the framer plays the other direction itself (it "sends" a
    placeholder request or response) to move h11 from one cycle to the next.
    """

    _side: Side
    _role: type[h11.CLIENT] | type[h11.SERVER]

    def __init__(self, max_head: int, max_buffer: int) -> None:
        self._max_head = max_head
        self._max_buffer = max_buffer
        self._conn = self._new_connection()
        self._received = 0  # stream offset just past the last byte fed to self._conn
        self._start = 0  # stream offset where the current message began
        self._eof = False
        self._tunnel = False  # after a protocol switch: opaque bytes, counted but not kept
        self._ended = False
        self._pending: deque[RequestEvent | ResponseEvent] = deque()
        self._error: ProtocolError | None = None

    def _next(self) -> RequestEvent | ResponseEvent | NeedData:
        raise NotImplementedError

    def _new_connection(self) -> h11.Connection:
        return h11.Connection(self._role, max_incomplete_event_size=self._max_head)

    def receive_data(self, data: bytes) -> None:
        """Feed the next bytes of this direction; ``b""`` means the peer closed it.

        Error handling:
            BufferLimitExceeded when more than ``max_buffer`` bytes would wait unparsed (drain
            next_event before feeding more); RuntimeError for data after EOF.
        """
        if self._eof and data:
            raise RuntimeError("receive_data after EOF")
        self._eof = self._eof or not data
        if self._tunnel:
            self._received += len(data)
            return
        if len(self._conn._receive_buffer) + len(data) > self._max_buffer:
            raise BufferLimitExceeded(self._side, self._received,
                                      f"more than {self._max_buffer} bytes fed but not yet framed")
        self._received += len(data)
        self._conn.receive_data(data)

    @property
    def _consumed(self) -> int:
        # h11 keeps exactly the bytes it has not turned into events yet
        return self._received - len(self._conn._receive_buffer)

    def next_event(self) -> RequestEvent | ResponseEvent | NeedData:
        """The next event, or NEED_DATA until more bytes (or a decision the framer waits for)
        arrive. After StreamEnd there are no more events.

        Error handling:
            MalformedMessage, TruncatedMessage (EOF inside a message), HeadTooLarge (a head, chunk
            line or trailer over ``max_head``); once raised, raised again on every later call.
        """
        if self._error is not None:
            raise self._error
        if self._pending:
            return self._pending.popleft()
        try:
            return self._next()
        except h11.RemoteProtocolError as exc:
            self._error = self._translate(exc)
        except ProtocolError as exc:
            self._error = exc
        raise self._error

    def _translate(self, exc: h11.RemoteProtocolError) -> ProtocolError:
        text = str(exc)
        if exc.error_status_hint == 431:
            return HeadTooLarge(self._side, self._start,
                                f"message head longer than {self._max_head} bytes")
        if self._eof and "closed" in text:
            return TruncatedMessage(self._side, self._received,
                                    f"stream ended inside a message ({text})")
        if text == "Got data when expecting EOF":
            text = "data after a message that closed the connection"
        return MalformedMessage(self._side, self._consumed, text)

    def _stream_end(self) -> StreamEnd | NeedData:
        if self._ended:
            return NEED_DATA
        self._ended = True
        return StreamEnd(self._received if self._tunnel else self._consumed)

    def _head(self, event: h11.Request | h11.Response | h11.InformationalResponse) -> int:
        """Stream offset where ``event``'s head ends, after checking its size."""
        head_end = self._consumed
        if head_end - self._start > self._max_head:
            # h11 checks only heads still incomplete; a complete one that arrived in one chunk
            # gets the same limit here, so how the stream was split never changes the outcome
            raise HeadTooLarge(self._side, self._start,
                               f"message head longer than {self._max_head} bytes")
        return head_end

    def _next_cycle(self, keep_alive: bool) -> None:
        """After a message: let h11 read the next one (or the EOF a closing message promised)."""
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        elif keep_alive and conn.their_state is h11.MUST_CLOSE:
            # h11 closes after every HTTP/1.0 message; an HTTP/1.0 keep-alive peer goes on, so
            # carry the unparsed bytes over to a fresh connection
            data, closed = conn.trailing_data
            self._conn = self._new_connection()
            if data:  # b"" would tell h11 the peer closed
                self._conn.receive_data(data)
            if closed:
                self._conn.receive_data(b"")
        self._start = self._consumed

    def _enter_tunnel(self) -> None:
        self._tunnel = True
        self._conn = self._new_connection()  # drop the buffered tunnel bytes
        # (they stay counted in self._received; from here offsets are self._received)


class RequestFramer(_H11Framer):
    """Frames the client-to-server direction into requests.

    Args:
        max_head: longest request head (request line and headers), chunk-size line or trailer.
        max_buffer: most bytes fed and not yet framed (pipelined requests wait here).

    Error handling: see next_event; the side named in errors is ``"client"``.
    """

    _side: Side = "client"
    _role = h11.SERVER

    def __init__(self, *, max_head: int = DEFAULT_MAX_HEAD,
                 max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        super().__init__(max_head, max_buffer)
        self._info: RequestInfo | None = None

    def protocol_switched(self, accepted: bool) -> None:
        """Say how the server answered the last ``upgrade`` request: ``accepted`` (101, or 2xx to
        CONNECT) makes the rest of this direction an opaque tunnel; otherwise framing goes on.

        Error handling:
            RuntimeError if the framer is not waiting for this decision.
        """
        conn = self._conn
        if self._tunnel or conn.their_state is not h11.MIGHT_SWITCH_PROTOCOL:
            raise RuntimeError("protocol_switched() without a pending Upgrade/CONNECT request")
        if accepted:
            self._enter_tunnel()
            return
        # any status h11 cannot take for a switch (not 101, not 2xx) declines it
        conn.send(h11.Response(status_code=400, headers=[(b"content-length", b"0")]))
        conn.send(h11.EndOfMessage())
        assert self._info is not None
        self._next_cycle(self._info.keep_alive)

    def _next(self) -> RequestEvent | NeedData:
        while True:
            if self._tunnel:
                return self._stream_end() if self._eof else NEED_DATA
            event = self._conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                # PAUSED: an Upgrade/CONNECT request waits for protocol_switched()
                return NEED_DATA
            if isinstance(event, h11.Request):
                head_end = self._head(event)
                # h11's own rule for a switch proposal, so protocol_switched() agrees with it
                upgrade = event.method == b"CONNECT" or bool(get_comma_header(event.headers,
                                                                               b"upgrade"))
                self._info = RequestInfo(
                    method=event.method.decode("ascii"),
                    target=event.target.decode("ascii", "replace"),
                    http_version=event.http_version.decode("ascii"),
                    keep_alive=_persistent(event.http_version, event.headers),
                    upgrade=upgrade)
                return MessageStart(self._start, head_end, self._info)
            if isinstance(event, h11.EndOfMessage):
                info, end = self._info, self._consumed
                assert info is not None
                if self._conn.their_state is not h11.MIGHT_SWITCH_PROTOCOL:
                    # play the server: an empty answer lets h11 go on to the next request
                    self._conn.send(h11.Response(status_code=200,
                                                 headers=[(b"content-length", b"0")]))
                    self._conn.send(h11.EndOfMessage())
                    self._next_cycle(info.keep_alive)
                return MessageEnd(end, info)
            if isinstance(event, h11.ConnectionClosed):
                return self._stream_end()
            # h11.Data: body bytes need no event, their end does


class ResponseFramer(_H11Framer):
    """Frames the server-to-client direction into responses.

    Call ``expect`` once per request, in stream order, as soon as the request's head is known (the
    request framer's MessageStart), so a response to a request still being sent is framed too.

    Args:
        max_head: longest response head, chunk-size line or trailer.
        max_buffer: most bytes fed and not yet framed (a response waits here for its ``expect``).

    Error handling: see next_event; the side named in errors is ``"server"``. A response that
    arrives with no request expected waits; at EOF it is a MalformedMessage.
    """

    _side: Side = "server"
    _role = h11.CLIENT

    def __init__(self, *, max_head: int = DEFAULT_MAX_HEAD,
                 max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        super().__init__(max_head, max_buffer)
        self._expected: deque[RequestInfo] = deque()
        self._request: RequestInfo | None = None  # the request the current response answers
        self._info: ResponseInfo | None = None

    def expect(self, request: RequestInfo | str) -> None:
        """Queue the request the next unanswered response belongs to (its RequestInfo, or just its
        method, e.g. ``"HEAD"``, for a request that cannot switch protocols)."""
        if isinstance(request, str):
            request = RequestInfo(request, "/", "1.1", keep_alive=True,
                                  upgrade=request == "CONNECT")
        self._expected.append(request)

    def _send_request(self) -> bool:
        """Play the client: send h11 a placeholder for the next expected request, if any."""
        if not self._expected:
            return False
        request = self._request = self._expected.popleft()
        headers = [(b"host", b"sead")]
        if request.upgrade and request.method != "CONNECT":
            headers += [(b"connection", b"upgrade"), (b"upgrade", b"sead")]
        target = "sead:0" if request.method == "CONNECT" else "/"
        self._conn.send(h11.Request(method=request.method, target=target, headers=headers))
        self._conn.send(h11.EndOfMessage())
        return True

    def _next(self) -> ResponseEvent | NeedData:
        while True:
            if self._tunnel:
                return self._stream_end() if self._eof else NEED_DATA
            conn = self._conn
            if conn.our_state is h11.IDLE and not self._send_request():
                if not self._eof:
                    return NEED_DATA
                if len(conn._receive_buffer):
                    raise MalformedMessage(self._side, self._consumed,
                                           "response bytes with no request outstanding")
                return self._stream_end()
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return NEED_DATA
            if isinstance(event, h11.InformationalResponse | h11.Response):
                head_end = self._head(event)
                switched = conn.their_state is h11.SWITCHED_PROTOCOL
                if isinstance(event, h11.InformationalResponse) and not switched:
                    start, self._start = self._start, head_end
                    return InterimResponse(start, head_end, event.status_code)
                assert self._request is not None
                method = self._request.method
                close_delimited = (isinstance(event, h11.Response) and not switched and
                                   _body_framing(method.encode(), event)[0] == "http/1.0")
                self._info = ResponseInfo(
                    status=event.status_code,
                    reason=event.reason.decode("ascii", "replace"),
                    http_version=event.http_version.decode("ascii"),
                    method=method,
                    keep_alive=(not close_delimited and not switched
                                and _persistent(event.http_version, event.headers)),
                    close_delimited=close_delimited,
                    switched=switched)
                started = MessageStart(self._start, head_end, self._info)
                if switched:
                    self._pending.append(MessageEnd(head_end, self._info))
                    self._enter_tunnel()
                return started
            if isinstance(event, h11.EndOfMessage):
                info, end = self._info, self._consumed
                assert info is not None
                self._next_cycle(info.keep_alive)
                return MessageEnd(end, info)
            if isinstance(event, h11.ConnectionClosed):
                return self._stream_end()


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

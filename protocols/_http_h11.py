"""The h11 engine of the HTTP framers (protocols/http.py explains the choice between engines).

h11 models a whole connection, not one direction, so each framer plays the other side itself: it
"sends" a placeholder response (or request) to move h11 from one request/response cycle to the next,
and reads stream offsets off h11's receive buffer, which holds exactly the bytes not yet turned into
events.
"""

from __future__ import annotations

from collections import deque

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
    NeedData,
    ProtocolError,
    Side,
    StreamEnd,
    TruncatedMessage,
)
from protocols._http_events import (
    DEFAULT_MAX_BUFFER,
    DEFAULT_MAX_HEAD,
    InterimResponse,
    RequestEvent,
    RequestInfo,
    ResponseEvent,
    ResponseInfo,
    request_info,
)


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
            RuntimeError for data after EOF. Bytes that would make more than ``max_buffer`` wait
            unparsed are dropped and next_event raises BufferLimitExceeded.
        """
        if self._eof and data:
            raise RuntimeError("receive_data after EOF")
        self._eof = self._eof or not data
        if self._tunnel:
            self._received += len(data)
            return
        if self._error is not None:
            return  # broken for good: next_event raises
        if len(self._conn._receive_buffer) + len(data) > self._max_buffer:
            # raised by next_event, like every protocol error, so a caller feeding bytes from
            # a socket has one place to handle them
            self._error = BufferLimitExceeded(
                self._side, self._received,
                f"more than {self._max_buffer} bytes fed but not yet framed (drain next_event)")
            return
        self._received += len(data)
        self._conn.receive_data(data)

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet framed: what this framer holds in memory right now."""
        return 0 if self._tunnel else len(self._conn._receive_buffer)

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
        if self._pending:
            return self._pending.popleft()
        if self._error is not None:
            raise self._error
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


class H11RequestFramer(_H11Framer):
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


class H11ResponseFramer(_H11Framer):
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
        self._expected.append(request_info(request))

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

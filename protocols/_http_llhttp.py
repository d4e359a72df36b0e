"""The llhttp engine of the HTTP framers (protocols/http.py explains the choice between engines).

llhttp parses the bytes where they lie (no copy, no buffer of its own); the framer's callbacks pause
it at the end of each head and each message, and the pause position is the stream offset. Callbacks
only set flags, collect the target/reason text and tell llhttp whether a response has a body (an
exception inside a ctypes callback would be swallowed, so they hold as little logic as possible);
everything else runs after ``llhttp_execute`` returns.
"""

from __future__ import annotations

import ctypes
from collections import deque
from typing import Any

from protocols import _llhttp as ll
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
    RequestInfo,
    ResponseInfo,
    request_info,
)

_lib = ll.lib
_NOWHERE_BUFFER = ctypes.create_string_buffer(1)
_NOWHERE = ctypes.addressof(_NOWHERE_BUFFER)  # a valid pointer for zero-length llhttp_execute

# one union for both directions: the subclasses narrow it to RequestEvent / ResponseEvent
Event = MessageStart[Any] | MessageEnd[Any] | InterimResponse | StreamEnd


class _LlhttpFramer:
    """One direction of an HTTP connection, parsed by an llhttp parser of ``_kind``."""

    _side: Side
    _kind: int
    _text_slot: int  # ON_URL for requests, ON_STATUS for responses

    def __init__(self, max_head: int, max_buffer: int) -> None:
        self._max_head = max_head
        self._max_buffer = max_buffer
        self._parser = ctypes.create_string_buffer(ll.PARSER_SIZE)
        # the CFUNCTYPE objects must live as long as the parser may call them
        self._callbacks = (ll.DataCallback(self._on_text), ll.Callback(self._on_headers_complete),
                           ll.Callback(self._on_message_complete))
        self._settings = ll.Settings()
        for slot, callback in zip((self._text_slot, ll.ON_HEADERS_COMPLETE,
                                   ll.ON_MESSAGE_COMPLETE), self._callbacks, strict=True):
            self._settings[slot] = ctypes.cast(callback, ctypes.c_void_p)
        _lib.llhttp_init(self._parser, self._kind, self._settings)
        self._chunks: deque[tuple[bytes, int]] = deque()  # (chunk, its address), unparsed
        self._pos = 0  # bytes of self._chunks[0] already parsed
        self._buffered = 0  # unparsed bytes in self._chunks
        self._offset = 0  # stream offset of the next byte llhttp sees
        self._start = 0  # stream offset where the current message began
        self._text: list[bytes] = []  # target or reason phrase of the current head, in pieces
        self._head_seen = False  # set by on_headers_complete
        self._complete_seen = False  # set by on_message_complete
        self._started: RequestInfo | ResponseInfo | None = None  # MessageStart given for this
        self._kick = False  # llhttp paused at a head and may have input-free steps to run
        self._eof = False
        self._finished = False  # llhttp_finish was called
        self._tunnel = False
        self._ended = False
        self._pending: deque[Event] = deque()
        self._error: ProtocolError | None = None

    # --- llhttp callbacks: flags only ------------------------------------------------------

    def _on_text(self, _parser: int | None, at: int | None, length: int) -> int:
        self._text.append(ctypes.string_at(at, length) if at else b"")
        return 0

    def _on_headers_complete(self, _parser: int | None) -> int:
        self._head_seen = True
        return self._headers_verdict()

    def _on_message_complete(self, _parser: int | None) -> int:
        self._complete_seen = True
        return ll.HPE_PAUSED

    def _headers_verdict(self) -> int:
        return ll.HPE_PAUSED

    # --- feeding -----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed the next bytes of this direction; ``b""`` means the peer closed it.

        Error handling:
            RuntimeError for data after EOF. Bytes that would make more than ``max_buffer`` wait
            unparsed are dropped and next_event raises BufferLimitExceeded.
        """
        if self._eof and data:
            raise RuntimeError("receive_data after EOF")
        if not data:
            self._eof = True
            return
        if self._tunnel:
            self._offset += len(data)
            return
        if self._error is not None:
            return  # broken for good: next_event raises
        if self._buffered + len(data) > self._max_buffer:
            # raised by next_event, like every protocol error, so a caller feeding bytes from
            # a socket has one place to handle them
            self._error = BufferLimitExceeded(
                self._side, self._offset + self._buffered,
                f"more than {self._max_buffer} bytes fed but not yet framed (drain next_event)")
            return
        data = bytes(data)  # llhttp reads it in place: it must not change while queued
        self._chunks.append((data, ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0))
        self._buffered += len(data)

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet framed: what this framer holds in memory right now."""
        return self._buffered

    def next_event(self) -> Event | NeedData:
        """The next event, or NEED_DATA until more bytes (or a decision the framer waits for)
        arrive. After StreamEnd there are no more events.

        Error handling:
            MalformedMessage (llhttp's reason and error name), TruncatedMessage (EOF inside a
            message), HeadTooLarge (a head over ``max_head``); once raised, raised again on every
            later call.
        """
        if self._pending:
            return self._pending.popleft()
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except ProtocolError as exc:
            self._error = exc
            raise

    def _waiting(self) -> bool:
        """True while the framer may not parse yet (a response with no request to answer)."""
        return False

    def _advance(self, count: int) -> None:
        self._pos += count
        self._offset += count
        self._buffered -= count
        if self._chunks and self._pos == len(self._chunks[0][0]):
            self._chunks.popleft()
            self._pos = 0

    def _next(self) -> Event | NeedData:
        while True:
            if self._tunnel or self._finished:
                return self._stream_end() if self._eof else NEED_DATA
            if self._waiting():
                return self._at_eof_waiting() if self._eof else NEED_DATA
            if self._chunks:
                chunk, address = self._chunks[0]
                at, length = address + self._pos, len(chunk) - self._pos
            elif self._kick:
                # after a pause llhttp still has steps that read no input (a head without a
                # body completes its message): run them now, not when the next bytes come
                at, length = _NOWHERE, 0
            else:
                return self._at_eof() if self._eof else NEED_DATA
            self._kick = False
            if not self._head_seen:
                # llhttp never sees more of a head than the limit allows, so a long head is
                # refused at the same byte however the stream was split
                room = self._start + self._max_head - self._offset
                if room <= 0:
                    raise HeadTooLarge(self._side, self._start,
                                       f"message head longer than {self._max_head} bytes")
                length = min(length, room)
            errno = _lib.llhttp_execute(self._parser, at, length)
            if errno == ll.HPE_OK:
                self._advance(length)
                continue
            self._advance(ll.error_pos(self._parser) - at)
            if errno == ll.HPE_PAUSED:
                _lib.llhttp_resume(self._parser)
                # a pause at a head may leave input-free steps (a body-less message completes)
                self._kick = not self._complete_seen
                event = self._paused()
                if event is not None:
                    return event
            elif errno == ll.HPE_PAUSED_UPGRADE:
                self._upgrade_pause()
            else:
                raise self._malformed(errno)

    def _malformed(self, errno: int) -> ProtocolError:
        if errno == ll.HPE_CLOSED_CONNECTION:  # llhttp stops one byte into the extra data
            return MalformedMessage(self._side, self._start,
                                    "data after a message that closed the connection")
        return MalformedMessage(self._side, self._offset, ll.error_text(self._parser, errno))

    def _paused(self) -> Event | None:
        """Turn what the callbacks saw before the pause into events; return the first."""
        if self._head_seen and self._started is None:
            info = self._head_info()  # None for an interim response: reported whole at its end
            if info is not None:
                self._started = info
                self._pending.append(MessageStart(self._start, self._offset, info))
        if self._complete_seen:
            self._complete_seen = False
            self._pending.extend(self._message_end())
        return self._pending.popleft() if self._pending else None

    def _head_info(self) -> RequestInfo | ResponseInfo | None:
        raise NotImplementedError

    def _message_end(self) -> list[Event]:
        """Events for the end of the current message; reset for the next one."""
        info = self._started
        assert info is not None
        self._reset_message()
        return [MessageEnd(self._offset, info)]

    def _reset_message(self) -> None:
        self._start = self._offset
        self._head_seen = False
        self._started = None
        self._text.clear()

    def _upgrade_pause(self) -> None:
        raise MalformedMessage(self._side, self._offset, "unexpected protocol upgrade")

    def _at_eof(self) -> Event | NeedData:
        """The peer closed and every byte was parsed: finish the message that ends at EOF."""
        self._finished = True
        # let llhttp run the steps after the last message's end (they update its EOF verdict)
        errno = _lib.llhttp_execute(self._parser, _NOWHERE, 0)
        if errno not in (ll.HPE_OK, ll.HPE_PAUSED_UPGRADE):
            raise self._malformed(errno)
        errno = _lib.llhttp_finish(self._parser)
        if errno == ll.HPE_PAUSED:  # a close-delimited body ended: on_message_complete ran
            self._pending.extend(self._message_end())
            self._complete_seen = False
        elif errno == ll.HPE_INVALID_EOF_STATE:
            raise TruncatedMessage(self._side, self._offset, "stream ended inside a message")
        elif errno != ll.HPE_OK:
            raise self._malformed(errno)
        self._pending.append(self._stream_end_event())
        return self._pending.popleft()

    def _at_eof_waiting(self) -> Event | NeedData:
        return self._at_eof()

    def _stream_end_event(self) -> StreamEnd:
        self._ended = True
        return StreamEnd(self._offset + self._buffered)

    def _stream_end(self) -> StreamEnd | NeedData:
        return NEED_DATA if self._ended else self._stream_end_event()

    def _enter_tunnel(self) -> None:
        self._tunnel = True
        self._offset += self._buffered  # tunnel bytes are counted, never parsed or kept
        self._chunks.clear()
        self._buffered = self._pos = 0

    def _version(self) -> str:
        major = _lib.llhttp_get_http_major(self._parser)
        return f"{major}.{_lib.llhttp_get_http_minor(self._parser)}"


class LlhttpRequestFramer(_LlhttpFramer):
    """Frames the client-to-server direction into requests.

    Args:
        max_head: longest request head (request line and headers).
        max_buffer: most bytes fed and not yet framed (pipelined requests wait here).

    Error handling: see next_event; the side named in errors is ``"client"``.
    """

    _side: Side = "client"
    _kind = ll.REQUEST
    _text_slot = ll.ON_URL

    def __init__(self, *, max_head: int = DEFAULT_MAX_HEAD,
                 max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        super().__init__(max_head, max_buffer)
        self._awaiting_switch = False  # an upgrade request ended; protocol_switched() is due
        self._declined = False  # the server declined it: resume llhttp at its upgrade pause

    def protocol_switched(self, accepted: bool) -> None:
        """Say how the server answered the last ``upgrade`` request: ``accepted`` (101, or 2xx to
        CONNECT) makes the rest of this direction an opaque tunnel; otherwise framing goes on.

        Error handling:
            RuntimeError if the framer is not waiting for this decision.
        """
        if not self._awaiting_switch:
            raise RuntimeError("protocol_switched() without a pending Upgrade/CONNECT request")
        self._awaiting_switch = False
        if accepted:
            self._enter_tunnel()
        else:
            self._declined = True

    def _waiting(self) -> bool:
        return self._awaiting_switch

    def _at_eof_waiting(self) -> Event | NeedData:
        return self._stream_end()  # the client closed while the switch was undecided

    def _head_info(self) -> RequestInfo:
        return RequestInfo(
            method=ll.method_name(_lib.llhttp_get_method(self._parser)),
            target=b"".join(self._text).decode("ascii", "replace"),
            http_version=self._version(),
            keep_alive=bool(_lib.llhttp_should_keep_alive(self._parser)),
            upgrade=bool(_lib.llhttp_get_upgrade(self._parser)))

    def _message_end(self) -> list[Event]:
        info = self._started
        events = super()._message_end()
        if isinstance(info, RequestInfo) and info.upgrade:
            self._awaiting_switch = True  # llhttp pauses for the upgrade at the next execute
        return events

    def _upgrade_pause(self) -> None:
        # llhttp stops here, after the upgrade request's MessageEnd; it parses on only if the
        # server declined the switch
        if self._declined:
            self._declined = False
            _lib.llhttp_resume_after_upgrade(self._parser)
        else:
            self._awaiting_switch = True


class LlhttpResponseFramer(_LlhttpFramer):
    """Frames the server-to-client direction into responses.

    Call ``expect`` once per request, in stream order, as soon as the request's head is known (the
    request framer's MessageStart), so a response to a request still being sent is framed too.

    Args:
        max_head: longest response head (status line and headers).
        max_buffer: most bytes fed and not yet framed (a response waits here for its ``expect``).

    Error handling: see next_event; the side named in errors is ``"server"``. A response that
    arrives with no request expected waits; at EOF it is a MalformedMessage.
    """

    _side: Side = "server"
    _kind = ll.RESPONSE
    _text_slot = ll.ON_STATUS

    def __init__(self, *, max_head: int = DEFAULT_MAX_HEAD,
                 max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        super().__init__(max_head, max_buffer)
        self._expected: deque[RequestInfo] = deque()

    def expect(self, request: RequestInfo | str) -> None:
        """Queue the request the next unanswered response belongs to (its RequestInfo, or just its
        method, e.g. ``"HEAD"``, for a request that cannot switch protocols)."""
        self._expected.append(request_info(request))

    def _waiting(self) -> bool:
        return not self._expected

    def _at_eof_waiting(self) -> Event | NeedData:
        if self._buffered:
            raise MalformedMessage(self._side, self._offset,
                                   "response bytes with no request outstanding")
        return self._stream_end()

    def _headers_verdict(self) -> int:
        status = _lib.llhttp_get_status_code(self._parser)
        method = self._expected[0].method
        if status < 200:
            return 0  # 1xx: no body (llhttp knows); 101 pauses for the upgrade by itself
        if method == "HEAD":
            return ll.NO_BODY
        if method == "CONNECT" and status < 300:
            return ll.NO_BODY_UPGRADE
        return ll.HPE_PAUSED

    def _head_info(self) -> ResponseInfo | None:
        status = _lib.llhttp_get_status_code(self._parser)
        if status < 200 and status != 101:
            return None
        method = self._expected[0].method
        switched = status == 101 or (method == "CONNECT" and status < 300)
        needs_eof = bool(_lib.llhttp_message_needs_eof(self._parser)) and not switched
        return ResponseInfo(
            status=status,
            reason=b"".join(self._text).decode("ascii", "replace"),
            http_version=self._version(),
            method=method,
            keep_alive=bool(_lib.llhttp_should_keep_alive(self._parser)) and not switched,
            close_delimited=needs_eof and method != "HEAD" and status not in (204, 304),
            switched=switched)

    def _message_end(self) -> list[Event]:
        if self._started is None:  # an interim response
            status = _lib.llhttp_get_status_code(self._parser)
            start = self._start
            self._reset_message()
            return [InterimResponse(start, self._offset, status)]
        info = self._started
        events = super()._message_end()
        self._expected.popleft()
        if isinstance(info, ResponseInfo) and info.switched:
            self._enter_tunnel()
        return events

    def _upgrade_pause(self) -> None:
        pass  # a switch is handled at its message end (the tunnel starts there)

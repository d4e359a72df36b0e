"""Where a held HTTP link's streams stand: at the end of a message, or inside one.

A replacement may only be sent when the released stream ends exactly at a message boundary, and it
must answer the oldest unanswered request (HEAD gets no body). ``HttpBoundaries`` keeps both facts
up to date for one link from its request bytes and its response bytes. Which is which depends on
the route: on a front route the requests are the client's bytes and the responses the server's
released output; on a back route the protected server is the client, so its released output is
the request stream (``requests_at_boundary``) and the backend's answers are the responses.

Why not only the llhttp framers of ``protocols/http``: driven through ctypes they cost ~40 us per
request/response pair in the gateway (callbacks, pauses, event objects), half of the guarded path's
CPU. Almost all keep-alive traffic is a body-less GET/HEAD answered with a Content-Length response,
and those boundaries follow from a head scan: a split and, per header line, a lookup of the
verdict kept for it (a connection repeats most of its header lines). So each direction starts on
a conservative scanner that accepts only such messages, and at the first message start it does
not fully understand (a body, chunked, Upgrade/CONNECT, Connection other than keep-alive,
HTTP/1.0, 1xx/204/304, obs-fold, bare CR or LF, a header line without a name, a duplicate
length...) it hands the
stream, from that message boundary on, to the llhttp framer for good. Both agree on every boundary
of the messages the scanner accepts (tests/vproxy/test_httpframe.py checks it on generated
streams); the framers stay the authority for everything else.

After an Upgrade or CONNECT request the request framer waits for ``protocol_switched``: the
response that answers that request decides it (101, or 2xx to CONNECT: accepted, both directions
become an opaque tunnel with no boundary any more; anything else: declined, framing goes on).
"""

from __future__ import annotations

import re
from collections import deque
from typing import Final

from protocols import http
from protocols._framing import NEED_DATA, MessageEnd, MessageStart, ProtocolError

_MAX_HEAD: Final = 64 * 1024  # the framers' default head limit: past it the framer decides
_MAX_WAITING: Final = 1024 * 1024  # response bytes with no request to answer yet (framer's limit)
_SIMPLE_REQUEST: Final = re.compile(rb"(GET|HEAD) [\x21-\x7e]+ HTTP/1\.1")
_SIMPLE_STATUS: Final = re.compile(rb"HTTP/1\.1 [2-5]\d\d[^\r\n]*")
_KEEP_ALIVE: Final = re.compile(rb"connection:[ \t]*keep-alive[ \t]*")
# one immutable description per accepted method (the replacement only needs the method)
_INFOS: Final = {m: http.RequestInfo(m, "", "1.1", keep_alive=True, upgrade=False)
                 for m in ("GET", "HEAD")}
_PLAIN: Final = -1  # a header line's verdict: fine, and not a Content-Length
_FOREIGN: Final = -2  # the scanner does not accept it (>= 0: a Content-Length line, its value)
# Verdicts of header lines seen: a keep-alive connection repeats most of them (Host, User-Agent,
# Accept, Server, Connection...), so a head costs a split and a lookup a line instead of ~a dozen
# scans of the whole head (measured on the guarded wget crawl: head scans were ~30 % of the relay
# thread's Python). Bounded: emptied when full.
_VERDICTS: dict[bytes, int] = {}
_MAX_VERDICTS: Final = 4096


def _verdict(line: bytes) -> int:
    """What one header line (CRLF cut off) means to the scanner: ``_FOREIGN`` when it has no name,
    holds a bare CR or LF, is folded, is a Transfer-Encoding or Upgrade header, or a Connection
    header (any name containing it) other than exactly keep-alive; a Content-Length header's
    value; else ``_PLAIN`` (other headers' values do not frame a message)."""
    colon = line.find(b":")
    if colon <= 0 or b"\r" in line or b"\n" in line or line[0] in (0x20, 0x09):
        return _FOREIGN
    name = line[:colon].lower()
    if b"connection" in name:
        return _PLAIN if _KEEP_ALIVE.fullmatch(line.lower()) else _FOREIGN
    if b"upgrade" in name or b"transfer-encoding" in name:
        return _FOREIGN
    if b"content-length" in name:
        value = line[colon + 1:].strip(b" \t")
        if name != b"content-length" or not value.isdigit() or len(value) > 15:
            return _FOREIGN
        return int(value)
    return _PLAIN


def _content_length(lines: list[bytes]) -> int | None:
    """Over the header lines of a complete head: None when a line is foreign or Content-Length
    comes more than once, else its value, ``_PLAIN`` when there is none."""
    length = _PLAIN
    verdicts = _VERDICTS
    for line in lines:
        verdict = verdicts.get(line)
        if verdict is None:
            if len(verdicts) >= _MAX_VERDICTS:
                verdicts.clear()
            verdict = verdicts[line] = _verdict(line)
        if verdict != _PLAIN:
            if verdict == _FOREIGN or length != _PLAIN:
                return None
            length = verdict
    return length


def simple_request(head: bytes) -> str | None:
    """The method of a complete request head the scanner understands (a body-less HTTP/1.1 GET or
    HEAD, no Content-Length), else None (the llhttp framer takes over)."""
    lines = head.split(b"\r\n")  # (a complete head: its last two are the empty end)
    if _SIMPLE_REQUEST.fullmatch(lines[0]) is None or _content_length(lines[1:-2]) != _PLAIN:
        return None
    return "GET" if head[0] == 0x47 else "HEAD"


def simple_response_length(head: bytes, method: str) -> int | None:
    """Body length of a complete response head answering ``method`` (GET or HEAD) that the scanner
    understands (HTTP/1.1, status 200-599 but 204/304, exactly one Content-Length), else None."""
    lines = head.split(b"\r\n")  # (a complete head: its last two are the empty end)
    if _SIMPLE_STATUS.fullmatch(lines[0]) is None or head[9:12] in (b"204", b"304"):
        return None
    length = _content_length(lines[1:-2])
    if length is None or length < 0:
        return None
    return 0 if method == "HEAD" else length


class HttpBoundaries:
    """The request/response bookkeeping of one held HTTP link, from a message boundary on."""

    def __init__(self) -> None:
        self.broken = False  # a framing error: no boundary is trusted any more
        self.unanswered: deque[http.RequestInfo] = deque()  # requests seen, responses not ended
        self.fed = 0  # response bytes seen
        self.boundary = 0  # offset of the last response end
        self.qfed = 0  # request bytes seen
        self.qboundary = 0  # offset of the last request end
        self._qbuf = bytearray()  # fast path: request bytes from the current request start
        self._qstart = 0  # once framed: stream offset of the request framer's first byte
        self._rbuf = bytearray()  # fast path: server bytes from the current response start
        self._rstart = 0  # stream offset of _rbuf[0] (once framed: of the framer's first byte)
        self._body_left = 0  # fast path: body bytes of the current response still to come
        self._requests: http.RequestFramer | None = None  # set once requests left the fast path
        self._responses: http.ResponseFramer | None = None  # likewise for responses
        self._switch_due = False  # the request framer waits for protocol_switched()
        self._switch: bool | None = None  # the server's verdict on the pending upgrade

    @property
    def buffered(self) -> int:
        """Bytes kept for framing (not yet placed in a message)."""
        return len(self._qbuf) + len(self._rbuf) + \
            (self._requests.buffered if self._requests is not None else 0) + \
            (self._responses.buffered if self._responses is not None else 0)

    def at_boundary(self) -> bool:
        """True when the response bytes seen end exactly where a response ends."""
        return not self.broken and self.boundary == self.fed

    def requests_at_boundary(self) -> bool:
        """True when the request bytes seen end exactly where a request ends."""
        return not self.broken and self.qboundary == self.qfed

    # --- requests ----------------------------------------------------------------------------

    def request_bytes(self, data: bytes | memoryview) -> None:
        """Bytes of the request stream (towards whoever answers the requests)."""
        if self.broken:
            return
        self.qfed += len(data)
        try:
            if self._requests is None:
                self._scan_requests(bytes(self._qbuf) + data if self._qbuf else bytes(data))
                if not self._qbuf and self._requests is None:
                    self.qboundary = self.qfed
            else:
                self._requests.receive_data(bytes(data))
            self._drain()
        except ProtocolError:
            self._break()

    def _scan_requests(self, data: bytes) -> None:
        """Frame ``data`` (from the current request's first byte) in place; an incomplete head
        waits in ``_qbuf``."""
        at, size = 0, len(data)
        while at < size:
            end = data.find(b"\r\n\r\n", at, at + _MAX_HEAD)
            if end < 0 and size - at < _MAX_HEAD:
                break
            method = simple_request(data[at:end + 4]) if end >= 0 else None
            if method is None:  # the framer takes over from this request's first byte
                self._qstart = self.qfed - (size - at)
                self._requests = http.RequestFramer()
                self._requests.receive_data(data[at:])
                self._qbuf.clear()
                return
            at = end + 4
            self._requested(_INFOS[method])
        if at < size:
            self._qbuf[:] = data[at:]
        else:
            self._qbuf.clear()

    def _requested(self, info: http.RequestInfo) -> None:
        self.unanswered.append(info)
        if self._responses is not None:
            self._responses.expect(info)

    # --- responses ---------------------------------------------------------------------------

    def response_bytes(self, data: bytes | memoryview) -> None:
        """Bytes of the response stream (towards whoever sent the requests)."""
        if self.broken:
            return
        self.fed += len(data)
        try:
            if self._responses is not None:
                self._responses.receive_data(bytes(data))
            else:
                if self._body_left:  # body bytes are counted, never copied
                    take = min(self._body_left, len(data))
                    self._body_left -= take
                    self._rstart += take
                    if not self._body_left:
                        self._response_ended(self._rstart)
                    data = data[take:]
                if data:
                    self._scan_responses(bytes(self._rbuf) + data if self._rbuf else bytes(data))
                if len(self._rbuf) > _MAX_WAITING:
                    raise http.BufferLimitExceeded("server", self._rstart, "response bytes with "
                                                   "no request outstanding")
            self._drain()
        except ProtocolError:
            self._break()

    def _scan_responses(self, data: bytes) -> None:
        """Frame ``data`` (from the current response's first byte) in place; what remains of an
        incomplete head, or of responses no request is known for yet, waits in ``_rbuf``."""
        at, size = 0, len(data)
        while at < size and self.unanswered:
            request = self.unanswered[0]
            end = data.find(b"\r\n\r\n", at, at + _MAX_HEAD)
            if end < 0 and size - at < _MAX_HEAD:
                break
            length = None
            if end >= 0 and request.method in ("GET", "HEAD") and not request.upgrade:
                length = simple_response_length(data[at:end + 4], request.method)
            if length is None:  # the framer takes over from this response's first byte
                self._responses = http.ResponseFramer()  # its offsets count from here
                for info in self.unanswered:
                    self._responses.expect(info)
                self._responses.receive_data(data[at:])
                self._rbuf.clear()
                return
            total = end + 4 + length
            if total > size:
                self._body_left = total - size
                total = size
            self._rstart += total - at
            at = total
            if not self._body_left:
                self._response_ended(self._rstart)
        self._rbuf = bytearray(data[at:])

    def _response_ended(self, offset: int) -> None:
        self.boundary = offset
        self.unanswered.popleft()

    # --- the framers, once they took over ----------------------------------------------------

    def _drain(self) -> None:
        """Apply the framers' events until neither can go on (a switch verdict may unblock the
        request framer, whose next request lets the response framer go on)."""
        progress = self._requests is not None or self._responses is not None
        while progress:
            progress = False
            requests, responses = self._requests, self._responses
            if requests is not None:
                while (event := requests.next_event()) is not NEED_DATA:
                    progress = True
                    if isinstance(event, MessageStart):
                        self._requested(event.info)
                    elif isinstance(event, MessageEnd):
                        self.qboundary = self._qstart + event.offset
                        if event.info.upgrade:
                            self._switch_due = True
            if responses is not None:
                while (event := responses.next_event()) is not NEED_DATA:
                    progress = True
                    if isinstance(event, MessageStart) and self.unanswered[0].upgrade:
                        self._switch = event.info.switched
                    elif isinstance(event, MessageEnd):
                        self._response_ended(self._rstart + event.offset)
            if self._switch_due and self._switch is not None and requests is not None:
                requests.protocol_switched(self._switch)
                self._switch_due, self._switch = False, None
                progress = True

    def _break(self) -> None:
        self.broken = True
        self._qbuf.clear()
        self._rbuf.clear()
        self._requests = self._responses = None

"""Protocol-correct replacements for aborted output, placed only at a message boundary.

While a link holds, the gateway feeds a framer of the server's output with the bytes it actually
released (and, for HTTP, a request framer with the client's bytes, so it knows which request the
next response answers: HEAD gets no body). A replacement is sent only when the released stream ends
exactly at the end of a message. Anything else (raw streams, a message cut in the middle, a framing
error, an HTTP abort with no request to answer) gets no replacement: the link closes instead, so a
replacement is never spliced into a half-sent message.
"""

from __future__ import annotations

from collections import deque

from protocols import http, lenpfx, line
from protocols._framing import NEED_DATA, MessageEnd, MessageStart, ProtocolError
from vproxy._config import Protocol

_Framer = line.LineFramer | lenpfx.LengthPrefixFramer | http.ResponseFramer


class Replacer:
    """Tracks message boundaries of released output and builds the replacement for one link.

    Args:
        protocol: the route's protocol (``raw`` never replaces).
        http_status: 500 or 503 for HTTP replacements.
        frame: False when no replacement will ever be asked for (``--on-abort drop|close``):
            the streams are then not framed at all (framing HTTP costs ~45 us per request).
    """

    def __init__(self, protocol: Protocol, http_status: int, *, frame: bool = True) -> None:
        self.protocol = protocol
        self._frame = frame
        self.http_status = http_status
        self.closes_after = protocol == "http"  # the replacement says Connection: close
        self._framer: _Framer | None = None
        self._requests: http.RequestFramer | None = None
        self._unanswered: deque[http.RequestInfo] = deque()
        self._fed = 0
        self._boundary = 0
        self._broken = False

    def restart(self) -> None:
        """A hold starts at the current stream position, taken to be a message boundary."""
        self._framer = self._new_framer() if self._frame else None
        self._requests = http.RequestFramer() if self._frame and self.protocol == "http" else None
        self._unanswered.clear()
        self._fed = self._boundary = 0
        self._broken = False

    def _new_framer(self) -> _Framer | None:
        if self.protocol == "line":
            return line.LineFramer(side="server")
        if self.protocol == "lenpfx":
            return lenpfx.LengthPrefixFramer(side="server")
        if self.protocol == "http":
            return http.ResponseFramer()
        return None

    @property
    def wants_requests(self) -> bool:
        """True when ``client_data`` must see the bytes going to the server."""
        return self._requests is not None and not self._broken

    def client_data(self, data: bytes) -> None:
        """Bytes the client sent to the server while holding (HTTP: find the requests)."""
        requests, responses = self._requests, self._framer
        if requests is None or not isinstance(responses, http.ResponseFramer) or self._broken:
            return
        requests.receive_data(data)
        try:
            while (event := requests.next_event()) is not NEED_DATA:
                if isinstance(event, MessageStart) and isinstance(event.info, http.RequestInfo):
                    responses.expect(event.info)
                    self._unanswered.append(event.info)
        except ProtocolError:
            self._broken = True

    def released(self, data: bytes) -> None:
        """Bytes that just went to the peer."""
        framer = self._framer
        if framer is None or self._broken:
            return
        self._fed += len(data)
        framer.receive_data(data)
        try:
            while (event := framer.next_event()) is not NEED_DATA:
                if isinstance(event, MessageEnd):
                    self._boundary = event.offset
                    if self._unanswered:
                        self._unanswered.popleft()
        except ProtocolError:
            self._broken = True

    def at_boundary(self) -> bool:
        return self._framer is not None and not self._broken and self._boundary == self._fed

    def replacement(self, reason: str) -> bytes | None:
        """The bytes that stand for an aborted answer, or None when the link must close instead."""
        if not self.at_boundary():
            return None
        if self.protocol == "line":
            return line.error_line(f"aborted {reason}")
        if self.protocol == "lenpfx":
            return lenpfx.error_frame(f"aborted {reason}".encode("ascii", "replace"))
        if self.protocol == "http" and self._unanswered:
            head = self._unanswered[0].method == "HEAD"
            return http.error_response(self.http_status, close=True, head=head)
        return None

    def unreachable(self) -> bytes:
        """What a client gets when the upstream cannot be reached: HTTP 502, else nothing."""
        if self.protocol == "http":
            return http.error_response(502, close=True)
        return b""

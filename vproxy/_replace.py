"""Protocol-correct replacements for aborted output, placed only at a message boundary.

While a link holds, the gateway feeds a framer of the server's output with the bytes it actually
released (for HTTP, ``vproxy/_httpframe.py`` also sees the client's bytes, so it knows which
request the next response answers: HEAD gets no body). A replacement is sent only when the released
stream ends exactly at the end of a message. Anything else (raw streams, a message cut in the
middle, a framing error, an HTTP abort with no request to answer) gets no replacement: the link
closes instead, so a replacement is never spliced into a half-sent message.

On a back route the protected server is the client: its held output is its requests to a backend
and the backend's answers are its input. An aborted request is dropped and nothing is fabricated
in its place (a made-up request would act on the backend, and a response sent to the backend is
meaningless): at a request boundary the link goes on, inside a request it closes, as a truncated
request must never reach the backend.
"""

from __future__ import annotations

from protocols import http, lenpfx, line
from protocols._framing import NEED_DATA, MessageEnd, ProtocolError
from protocols._framing import Side as Writer
from vproxy._config import Protocol, Side
from vproxy._httpframe import HttpBoundaries

_Framer = line.LineFramer | lenpfx.LengthPrefixFramer


class Replacer:
    """Tracks message boundaries of released output and builds the replacement for one link.

    Args:
        protocol: the route's protocol (``raw`` never replaces).
        http_status: 500 or 503 for HTTP replacements.
        frame: False when no replacement will ever be asked for (``--on-abort drop|close``):
            the streams are then not framed at all.
        side: the route's side; ``back`` frames the server's output as requests and never
            sends a replacement (see the module docstring).
    """

    def __init__(self, protocol: Protocol, http_status: int, *, frame: bool = True,
                 side: Side = "front") -> None:
        self.protocol = protocol
        self._frame = frame
        self.http_status = http_status
        self._back = side == "back"
        # the HTTP replacement says Connection: close (a back route sends none)
        self.closes_after = protocol == "http" and not self._back
        self._framer: _Framer | None = None  # line and lenpfx
        self._http: HttpBoundaries | None = None
        self._fed = 0
        self._boundary = 0
        self._broken = False

    def restart(self) -> None:
        """A hold starts at the current stream position, taken to be a message boundary."""
        self._framer = self._new_framer() if self._frame else None
        self._http = HttpBoundaries() if self._frame and self.protocol == "http" else None
        self._fed = self._boundary = 0
        self._broken = False

    def _new_framer(self) -> _Framer | None:
        writer: Writer = "client" if self._back else "server"  # who writes the framed output
        if self.protocol == "line":
            return line.LineFramer(side=writer)
        if self.protocol == "lenpfx":
            return lenpfx.LengthPrefixFramer(side=writer)
        return None

    @property
    def wants_input(self) -> bool:
        """True when ``input_data`` must see the bytes going to the server."""
        return self._http is not None and not self._http.broken

    @property
    def buffered(self) -> int:
        """Bytes the framing keeps in memory (not yet placed in a message)."""
        if self._http is not None:
            return self._http.buffered
        return self._framer.buffered if self._framer is not None else 0

    def input_data(self, data: bytes | memoryview) -> None:
        """Bytes delivered to the server while holding (HTTP: the requests it answers on a front
        route, the backend's responses on a back route)."""
        if self._http is not None:
            if self._back:
                self._http.response_bytes(data)
            else:
                self._http.request_bytes(data)

    def released(self, data: bytes) -> None:
        """Server output that just went to the peer."""
        if self._http is not None:
            if self._back:
                self._http.request_bytes(data)
            else:
                self._http.response_bytes(data)
            return
        framer = self._framer
        if framer is None or self._broken:
            return
        self._fed += len(data)
        framer.receive_data(data)
        try:
            while (event := framer.next_event()) is not NEED_DATA:
                if isinstance(event, MessageEnd):
                    self._boundary = event.offset
        except ProtocolError:
            self._broken = True

    def at_boundary(self) -> bool:
        """True when the released output ends exactly at the end of a message."""
        if self._http is not None:
            return self._http.requests_at_boundary() if self._back else self._http.at_boundary()
        return self._framer is not None and not self._broken and self._boundary == self._fed

    def replacement(self, reason: str) -> bytes | None:
        """The bytes that stand for an aborted answer (empty on a back route: nothing is sent to
        the backend), or None when the link must close instead."""
        if not self.at_boundary():
            return None
        if self._back:
            return b""
        if self.protocol == "line":
            return line.error_line(f"aborted {reason}")
        if self.protocol == "lenpfx":
            return lenpfx.error_frame(f"aborted {reason}".encode("ascii", "replace"))
        if self._http is not None and self._http.unanswered:
            head = self._http.unanswered[0].method == "HEAD"
            return http.error_response(self.http_status, close=True, head=head)
        return None

    def unreachable(self) -> bytes:
        """What a client gets when the upstream cannot be reached: HTTP 502, else nothing."""
        if self.protocol == "http":
            return http.error_response(502, close=True)
        return b""

"""Protocol-correct replacements for aborted output, placed only at a message boundary.

The gateway feeds the framer of the server's output with the bytes it actually released while the
link holds; a replacement is sent only when the released stream ends exactly at the end of a
message. Anything else (raw streams, a message cut in the middle, a framing error) gets no
replacement: the link is closed instead, so no replacement is ever spliced into a half-sent message.
"""

from __future__ import annotations

from protocols import lenpfx, line
from protocols._framing import NEED_DATA, MessageEnd, ProtocolError
from vproxy._config import Protocol


class Replacer:
    """Tracks message boundaries of released output and builds the replacement for one link.

    Args:
        protocol: the route's protocol (``raw`` never replaces).
        http_status: 500 or 503 for HTTP replacements.
    """

    def __init__(self, protocol: Protocol, http_status: int) -> None:
        self.protocol = protocol
        self.http_status = http_status
        self.closes_after = False
        self._framer: line.LineFramer | lenpfx.LengthPrefixFramer | None = None
        self._fed = 0
        self._boundary = 0
        self._broken = False

    def restart(self) -> None:
        """A hold starts at the current stream position, taken to be a message boundary."""
        self._framer = self._new_framer()
        self._fed = self._boundary = 0
        self._broken = False

    def _new_framer(self) -> line.LineFramer | lenpfx.LengthPrefixFramer | None:
        if self.protocol == "line":
            return line.LineFramer(side="server")
        if self.protocol == "lenpfx":
            return lenpfx.LengthPrefixFramer(side="server")
        return None

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
        return None

    def unreachable(self) -> bytes:
        """What a client gets when the upstream cannot be reached (nothing: a clean close)."""
        return b""

"""A line-at-a-time trio stream with a timeout on every read: the runner's view of a TCP peer."""

from __future__ import annotations

import trio

_MAX_LINE = 65536


class PeerClosed(Exception):
    """The peer closed the connection (or reset it) before a whole line arrived."""


class ReplyTimeout(Exception):
    """No whole line arrived within the timeout."""


class LineStream:
    """Lines over a trio stream.

    Args:
        stream: a connected stream (``trio.SocketStream``).
        timeout: seconds any one ``read_line``/``wait_closed`` may wait.
    """

    def __init__(self, stream: trio.abc.Stream, timeout: float) -> None:
        self._stream = stream
        self._timeout = timeout
        self._buf = bytearray()
        self._eof = False

    async def send_line(self, text: str) -> None:
        """Send ``text`` and a newline; a broken connection raises PeerClosed."""
        try:
            await self._stream.send_all(text.encode("latin-1") + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise PeerClosed(f"the connection broke while sending: {exc}") from None

    async def _fill(self) -> None:
        try:
            chunk = await self._stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            chunk = b""
        if not chunk:
            self._eof = True
        self._buf += chunk

    async def read_line(self) -> str:
        """The next line without its ``\\n`` (and ``\\r``).

        Error handling:
            ReplyTimeout after ``timeout`` seconds; PeerClosed at end of stream; a line longer than
            64 KiB raises PeerClosed too (no peer of ours sends one).
        """
        with trio.move_on_after(self._timeout):
            while True:
                nl = self._buf.find(b"\n")
                if nl >= 0:
                    line = bytes(self._buf[:nl]).rstrip(b"\r")
                    del self._buf[: nl + 1]
                    return line.decode("latin-1")
                if self._eof:
                    raise PeerClosed("the server closed the connection")
                if len(self._buf) > _MAX_LINE:
                    raise PeerClosed("the server sent a line longer than 64 KiB")
                await self._fill()
        raise ReplyTimeout(f"no reply line within {self._timeout:g} s")

    async def wait_closed(self) -> bytes:
        """Wait for the peer to close; returns the bytes that came first (b"" if none).

        Error handling: ReplyTimeout if the peer is still open after ``timeout`` seconds.
        """
        with trio.move_on_after(self._timeout):
            while not self._eof:
                await self._fill()
            extra = bytes(self._buf)
            self._buf.clear()
            return extra
        raise ReplyTimeout(f"the connection was still open after {self._timeout:g} s")

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await self._stream.aclose()

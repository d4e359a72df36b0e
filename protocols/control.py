"""The commit protocol between the healer agent and the gateway (sead-control/1), sans-IO.

A control connection is a byte stream of ASCII lines ending in ``\\n``; each line is one message,
tokens separated by single spaces. The first line a client sends is ``HELLO``; the gateway answers
every line it refuses with ``ERR`` and keeps the connection (and all traffic) going. Messages carry
stream offsets, never payload. ``docs/control-protocol.md`` is the reference for both sides; the
agent's encoder (``healer/agent``) writes the same lines.

Use::

    reader = ControlReader()
    reader.receive_data(chunk)
    while (event := reader.next_event()) is not NEED_DATA:
        ...   # a message dataclass, or Malformed for a line that could not be parsed
    sock.send(encode(Commit(tx=7)))
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

VERSION: Final = 1
MAX_LINE: Final = 4096

Direction = Literal["in", "out"]


class ControlProtocolError(ValueError):
    """A control line that does not follow sead-control/1; ``line`` is the offending text."""

    def __init__(self, reason: str, line: str = "") -> None:
        super().__init__(f"{reason}: {line!r}" if line else reason)
        self.reason = reason
        self.line = line


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """An IP endpoint as a socket sees it (``getsockname``/``getpeername``)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse ``1.2.3.4:80`` or ``[::1]:80``; ValueError names what is wrong."""
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
        else:
            host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"endpoint {text!r} is not HOST:PORT")
        ipaddress.ip_address(host)  # raises ValueError for a non-address
        if not 0 <= int(port) <= 65535:
            raise ValueError(f"port of {text!r} is out of range")
        return cls(host, int(port))


# --- client (healer/agent) to gateway -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """First line of every control connection: protocol version, role, pid and pairing token."""

    version: int
    role: Literal["agent", "healer", "admin"]
    pid: int
    token: str


@dataclass(frozen=True, slots=True)
class Guard:
    """From now on every byte the server writes on a routed connection is held until covered."""


@dataclass(frozen=True, slots=True)
class Unguard:
    """The healer detaches cleanly: held output that is not in an open transaction is released."""


@dataclass(frozen=True, slots=True)
class Conn:
    """Agent-scoped connection id ``cid`` names the server's socket with this 4-tuple."""

    cid: int
    local: Endpoint
    peer: Endpoint


@dataclass(frozen=True, slots=True)
class Begin:
    """Transaction ``tx`` starts; ``parent`` is the enclosing transaction (nested) or None."""

    tx: int
    parent: int | None


@dataclass(frozen=True, slots=True)
class Io:
    """Inside ``tx`` the server moved stream bytes [start, end) on ``cid`` in ``direction``."""

    tx: int
    cid: int
    direction: Direction
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Commit:
    """``tx`` committed; a nested one merges into its parent, a root one releases its output."""

    tx: int


@dataclass(frozen=True, slots=True)
class Abort:
    """``tx`` was rolled back: its output ranges are discarded, its input replayed or dropped."""

    tx: int
    reason: str


@dataclass(frozen=True, slots=True)
class Gradual:
    """``tx`` is about to read ``cid``: release its output on ``cid`` so far (it is irrevocable)."""

    tx: int
    cid: int


@dataclass(frozen=True, slots=True)
class Release:
    """Output on ``cid`` below ``upto`` that no open transaction owns is released (watermark)."""

    cid: int
    upto: int


@dataclass(frozen=True, slots=True)
class Close:
    """The server closed its socket ``cid``; the id may be reused after this."""

    cid: int


@dataclass(frozen=True, slots=True)
class Ping:
    """Latency probe; answered by ``PONG n``."""

    n: int


@dataclass(frozen=True, slots=True)
class Stats:
    """Admin request: the gateway answers ``STATS`` with one JSON object on the same line."""


# --- gateway to client ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ok:
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Err:
    """The gateway refused a line; ``code`` is a stable token, ``text`` says the cause and fix."""

    code: str
    text: str


@dataclass(frozen=True, slots=True)
class Pong:
    n: int


@dataclass(frozen=True, slots=True)
class StatsReply:
    json: str


@dataclass(frozen=True, slots=True)
class Malformed:
    """A line that could not be parsed; the stream goes on after it."""

    error: ControlProtocolError


Message = (Hello | Guard | Unguard | Conn | Begin | Io | Commit | Abort | Gradual | Release
           | Close | Ping | Stats | Ok | Err | Pong | StatsReply)


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


def _uint(tok: str, what: str) -> int:
    if not tok.isdigit() or len(tok) > 20:
        raise ValueError(f"{what} must be a non-negative integer, got {tok!r}")
    return int(tok)


def _word(tok: str, what: str) -> str:
    if not tok or not all(33 <= ord(c) < 127 for c in tok):
        raise ValueError(f"{what} must be a printable ASCII word, got {tok!r}")
    return tok


def _tail(toks: list[str], start: int) -> str:
    return " ".join(toks[start:])


def _parse_hello(t: list[str]) -> Hello:
    role = t[1]
    if role not in ("agent", "healer", "admin"):
        raise ValueError(f"role must be agent, healer or admin, got {role!r}")
    return Hello(_uint(t[0], "version"), role, _uint(t[2], "pid"), _word(t[3], "token"))  # type: ignore[arg-type]


def _parse_io(t: list[str]) -> Io:
    direction = t[2]
    if direction not in ("in", "out"):
        raise ValueError(f"direction must be in or out, got {direction!r}")
    start, end = _uint(t[3], "start"), _uint(t[4], "end")
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    return Io(_uint(t[0], "tx"), _uint(t[1], "cid"), direction, start, end)  # type: ignore[arg-type]


# verb -> (number of tokens after the verb, -1 = at least that many for free text; parser)
_PARSERS: dict[str, tuple[int, object]] = {
    "HELLO": (4, _parse_hello),
    "GUARD": (0, lambda t: Guard()),
    "UNGUARD": (0, lambda t: Unguard()),
    "CONN": (3, lambda t: Conn(_uint(t[0], "cid"), Endpoint.parse(t[1]), Endpoint.parse(t[2]))),
    "BEGIN": (2, lambda t: Begin(_uint(t[0], "tx"),
                                 None if t[1] == "-" else _uint(t[1], "parent"))),
    "IO": (5, _parse_io),
    "COMMIT": (1, lambda t: Commit(_uint(t[0], "tx"))),
    "ABORT": (2, lambda t: Abort(_uint(t[0], "tx"), _word(t[1], "reason"))),
    "GRADUAL": (2, lambda t: Gradual(_uint(t[0], "tx"), _uint(t[1], "cid"))),
    "RELEASE": (2, lambda t: Release(_uint(t[0], "cid"), _uint(t[1], "upto"))),
    "CLOSE": (1, lambda t: Close(_uint(t[0], "cid"))),
    "PING": (1, lambda t: Ping(_uint(t[0], "n"))),
    "STATS": (-1, lambda t: StatsReply(_tail(t, 0)) if t else Stats()),
    "OK": (-1, lambda t: Ok(_tail(t, 0))),
    "ERR": (-2, lambda t: Err(_word(t[0], "code"), _tail(t, 1))),
    "PONG": (1, lambda t: Pong(_uint(t[0], "n"))),
}


def parse_line(line: str) -> Message:
    """Parse one line (without its newline) into a message.

    Error handling:
        Raises ControlProtocolError naming the reason (unknown verb, wrong token count, bad number).
    """
    toks = line.split(" ")
    verb, args = toks[0], toks[1:]
    try:
        count, parser = _PARSERS[verb]
    except KeyError:
        raise ControlProtocolError(f"unknown message {verb!r}", line) from None
    if count >= 0 and len(args) != count:
        raise ControlProtocolError(f"{verb} takes {count} fields, got {len(args)}", line)
    if count < 0 and len(args) < -count - 1:
        raise ControlProtocolError(f"{verb} takes at least {-count - 1} fields", line)
    try:
        return parser(args)  # type: ignore[operator]
    except ValueError as exc:
        raise ControlProtocolError(f"{verb}: {exc}", line) from None


def _num(tok: bytes) -> bool:
    return tok.isdigit() and len(tok) <= 20  # (bytes.isdigit: ASCII digits only)


def _hot(raw: bytes) -> Message | None:
    """The lines an agent sends for every transaction (BEGIN, IO, COMMIT, GRADUAL, RELEASE),
    parsed straight from the bytes when they are well-formed; None for anything else, which
    ``parse_line`` then parses or names what is wrong with. COSAK on Apache sends ~36 lines a
    request, so the per-line cost counts: this is ~2x faster than decoding and the generic table."""
    toks = raw.split(b" ")
    verb, n = toks[0], len(toks)
    if verb == b"COMMIT":
        if n == 2 and _num(toks[1]):
            return Commit(int(toks[1]))
    elif verb == b"BEGIN":
        if n == 3 and _num(toks[1]):
            parent = toks[2]
            if parent == b"-":
                return Begin(int(toks[1]), None)
            if _num(parent):
                return Begin(int(toks[1]), int(parent))
    elif verb == b"IO":
        if n == 6 and _num(toks[1]) and _num(toks[2]) and _num(toks[4]) and _num(toks[5]):
            start, end = int(toks[4]), int(toks[5])
            if end >= start:
                if toks[3] == b"out":
                    return Io(int(toks[1]), int(toks[2]), "out", start, end)
                if toks[3] == b"in":
                    return Io(int(toks[1]), int(toks[2]), "in", start, end)
    elif verb == b"RELEASE":
        if n == 3 and _num(toks[1]) and _num(toks[2]):
            return Release(int(toks[1]), int(toks[2]))
    elif verb == b"GRADUAL" and n == 3 and _num(toks[1]) and _num(toks[2]):
        return Gradual(int(toks[1]), int(toks[2]))
    return None


def encode(msg: Message) -> bytes:
    """One message as its line, newline included.

    Error handling:
        ValueError for a message that would not read back as itself (CR/LF, a space in a one-word
        field such as an ABORT reason, non-ASCII text).
    """
    match msg:
        case Hello(version, role, pid, token):
            text = f"HELLO {version} {role} {pid} {_word(token, 'token')}"
        case Guard():
            text = "GUARD"
        case Unguard():
            text = "UNGUARD"
        case Conn(cid, local, peer):
            text = f"CONN {cid} {local} {peer}"
        case Begin(tx, parent):
            text = f"BEGIN {tx} {'-' if parent is None else parent}"
        case Io(tx, cid, direction, start, end):
            text = f"IO {tx} {cid} {direction} {start} {end}"
        case Commit(tx):
            text = f"COMMIT {tx}"
        case Abort(tx, reason):
            text = f"ABORT {tx} {_word(reason, 'reason')}"
        case Gradual(tx, cid):
            text = f"GRADUAL {tx} {cid}"
        case Release(cid, upto):
            text = f"RELEASE {cid} {upto}"
        case Close(cid):
            text = f"CLOSE {cid}"
        case Ping(n):
            text = f"PING {n}"
        case Stats():
            text = "STATS"
        case Ok(detail):
            text = f"OK {detail}" if detail else "OK"
        case Err(code, err_text):
            text = f"ERR {_word(code, 'code')} {err_text}"
        case Pong(n):
            text = f"PONG {n}"
        case StatsReply(json):
            text = f"STATS {json}"
        case _:
            raise TypeError(f"not a control message: {msg!r}")
    if "\n" in text or "\r" in text:  # a reader strips a final \r, and \n would end the line
        raise ValueError(f"control message may not contain CR or LF: {text!r}")
    return text.encode("ascii") + b"\n"


class ControlReader:
    """Splits a control byte stream into messages (h11-style ``receive_data``/``next_event``).

    A line longer than MAX_LINE, not ASCII, or not parseable yields ``Malformed`` and the reader
    resynchronises at the next newline, so one bad line never stops the stream.
    """

    def __init__(self) -> None:
        self._buf = bytearray()  # bytes after the last newline seen
        self._lines: deque[bytes] = deque()  # complete lines not yet parsed
        self._discarding = False
        self._eof = False

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the socket; ``b""`` means the peer closed."""
        if not data:
            self._eof = True
        self._buf += data

    @property
    def at_eof(self) -> bool:
        """True once the peer closed and every complete line was consumed."""
        return self._eof and not self._lines and b"\n" not in self._buf

    def next_event(self) -> Message | Malformed | _NeedData:
        """The next message, ``Malformed`` for a bad line, or NEED_DATA."""
        while True:
            if not self._lines:
                # every complete line at once: one split per read, not a find and a buffer
                # shift per line (the agent batches many lines per write)
                nl = self._buf.rfind(b"\n")
                if nl < 0:
                    if len(self._buf) > MAX_LINE and not self._discarding:
                        self._discarding = True
                        head = bytes(self._buf[:60]).decode("ascii", "replace")
                        self._buf.clear()
                        return Malformed(
                            ControlProtocolError(f"line longer than {MAX_LINE} bytes", head))
                    if self._discarding:
                        self._buf.clear()
                    return NEED_DATA
                self._lines.extend(bytes(self._buf[:nl]).split(b"\n"))
                del self._buf[: nl + 1]
            raw = self._lines.popleft()
            if self._discarding:
                self._discarding = False
                continue
            if len(raw) > MAX_LINE:
                return Malformed(ControlProtocolError(f"line longer than {MAX_LINE} bytes",
                                                      raw[:60].decode("ascii", "replace")))
            msg = _hot(raw)
            if msg is not None:
                return msg
            try:
                line = raw.decode("ascii").rstrip("\r")
            except UnicodeDecodeError:
                return Malformed(ControlProtocolError("line is not ASCII",
                                                      raw[:60].decode("ascii", "replace")))
            try:
                return parse_line(line)
            except ControlProtocolError as exc:
                return Malformed(exc)

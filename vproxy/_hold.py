"""Held output and kept input of one connection (sans-IO: no sockets, no clock of its own).

``OutHold`` keeps the protected server's output from the first byte that is not yet releasable. The
control session marks stream ranges as owned by a transaction (HELD), released (committed root,
GRADUAL) or discarded (aborted); output owned by nobody is released by the ``RELEASE`` watermark.
``pump`` walks forward from the oldest held byte and returns what may go to the peer, in stream
order: a held range blocks everything after it, so a late event never reorders the stream.

``InKeep`` keeps a copy of the input the gateway delivered to the server, indexed by the server's
input offsets, so an aborted transaction's input can be sent again.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, replace
from typing import Final, Literal

HELD: Final = 0
RELEASED: Final = 1
DISCARDED: Final = 2

INFINITY: Final = 1 << 62


class OutRange:
    """Output bytes ``[start, end)`` of one transaction; ``state``: HELD/RELEASED/DISCARDED."""

    __slots__ = ("end", "start", "state")

    def __init__(self, start: int, end: int, state: int = HELD) -> None:
        self.start = start
        self.end = end
        self.state = state

    def __lt__(self, other: OutRange) -> bool:
        return self.start < other.start


@dataclass(frozen=True, slots=True)
class Mark:
    """At stream ``offset`` an aborted transaction's output is replaced or the link closed."""

    offset: int
    action: Literal["replace", "close"]
    reason: str


class OutHold:
    """The server's output on one connection from ``base`` (oldest byte not yet sent or dropped).

    Args:
        base: stream offset of the next byte fed (bytes before it went out unheld).
    """

    def __init__(self, base: int) -> None:
        self.base = base
        self.size = 0  # bytes held from ``base`` on
        # as received, each its own bytes object: a release that covers whole chunks (a
        # response read at once, its RELEASE after it) sends them without a copy
        self._chunks: deque[bytes] = deque()
        self.ranges: list[OutRange] = []
        self.marks: list[Mark] = []
        self.release_wm = base
        self.ended = False  # the server closed its output: ``end`` is final
        self._arrivals: deque[tuple[int, float]] = deque()

    @property
    def end(self) -> int:
        """Stream offset just past the last byte received from the server."""
        return self.base + self.size

    @property
    def held_since(self) -> float | None:
        """Arrival time of the oldest byte still held, None when nothing is held."""
        return self._arrivals[0][1] if self._arrivals else None

    def feed(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Append bytes the server wrote, received at time ``now``."""
        self._chunks.append(bytes(data))
        self.size += len(data)
        self._arrivals.append((self.base + self.size, now))

    def data(self) -> bytes:
        """Every byte held (a copy)."""
        return b"".join(self._chunks)

    def add_range(self, rng: OutRange) -> tuple[int, int] | None:
        """Register a transaction's output range (any order, before or after its bytes arrive).

        Returns:
            None, or once the output ended, the part of ``rng`` past ``end`` that will never
            arrive (cut off: only bytes that exist are held).
        """
        missing = None
        if self.ended and rng.end > self.end:
            missing = (max(rng.start, self.end), rng.end)
            rng.end = missing[0]
        if rng.end <= self.base or rng.start >= rng.end:
            return missing
        ranges = self.ranges
        if not ranges or ranges[-1].start <= rng.start:
            ranges.append(rng)  # the usual case: ranges come in stream order
        else:
            bisect.insort(ranges, rng)
        return missing

    def add_mark(self, mark: Mark) -> None:
        """Register a replacement/close point, kept in stream order (once the output ended, a
        point past its end acts at the end: the stream will never reach it)."""
        if self.ended and mark.offset > self.end:
            mark = replace(mark, offset=self.end)
        bisect.insort(self.marks, mark, key=lambda m: m.offset)

    def end_output(self) -> list[OutRange]:
        """The server closed its output: every byte it wrote has arrived, so announced bytes past
        ``end`` never will. Ranges are cut at ``end`` (wholly missing ones dropped) and marks past
        it move to ``end``, so only bytes that exist keep the link waiting.

        Returns:
            the missing parts, as ranges in the state their transaction had (for the log).
        """
        self.ended, end = True, self.end
        missing = [OutRange(max(r.start, end), r.end, r.state) for r in self.ranges if r.end > end]
        self.ranges = [r for r in self.ranges if r.start < end]
        for rng in self.ranges:
            rng.end = min(rng.end, end)
        self.marks = [m if m.offset <= end else replace(m, offset=end) for m in self.marks]
        return missing

    def pending(self) -> bool:
        """True when bytes, ranges or marks are still waiting."""
        return bool(self.size or self.marks or any(r.state == HELD for r in self.ranges))

    def pump(self, now: float, hold_times: list[float]) -> tuple[list[bytes | Mark], int, int]:
        """Resolve what can be resolved from ``base`` on.

        Args:
            now: current time (for hold durations).
            hold_times: receives, per resolved chunk, how long it was held (seconds).

        Returns:
            (items to deliver in order: bytes to send or a Mark to act on, bytes released, bytes
            discarded).
        """
        out: list[bytes | Mark] = []
        pos, end, base = self.base, self.end, self.base
        ranges, marks = self.ranges, self.marks
        released = discarded = 0
        spans: list[tuple[int, int]] = []  # released byte ranges not yet in ``out``
        j = 0
        while True:
            while marks and marks[0].offset <= pos:
                if spans:
                    out.append(self._take(spans))
                out.append(marks.pop(0))
            if pos >= end:
                break
            while j < len(ranges) and ranges[j].end <= pos:
                j += 1
            if j < len(ranges) and ranges[j].start <= pos:
                rng = ranges[j]
                if rng.state == HELD:
                    break
                stop, state = min(rng.end, end), rng.state
            else:
                nxt = ranges[j].start if j < len(ranges) else INFINITY
                stop, state = min(nxt, self.release_wm, end), RELEASED
                if stop <= pos:
                    break
            if marks and marks[0].offset < stop:
                stop = marks[0].offset
            if state == RELEASED:
                if spans and spans[-1][1] == pos - base:
                    spans[-1] = (spans[-1][0], stop - base)
                else:
                    spans.append((pos - base, stop - base))
                released += stop - pos
            else:
                discarded += stop - pos
            pos = stop
        if spans:
            out.append(self._take(spans))
        if pos > base:
            self._advance(pos, now, hold_times)
        return out, released, discarded

    def _take(self, spans: list[tuple[int, int]]) -> bytes:
        """The bytes of ``spans`` (offsets from ``base``, in order); ``spans`` is emptied. A span
        that is exactly one chunk is that chunk, not a copy (measured on the guarded wget crawl,
        copying each released response out of one buffer was ~5 % of the relay's Python)."""
        pieces = []
        chunks = iter(self._chunks)
        chunk = next(chunks)
        at = 0  # offset of ``chunk``
        for a, b in spans:
            while a < b:
                while at + len(chunk) <= a:
                    at += len(chunk)
                    chunk = next(chunks)
                lo, hi = a - at, min(b - at, len(chunk))
                pieces.append(chunk if lo == 0 and hi == len(chunk) else chunk[lo:hi])
                a = at + hi
        spans.clear()
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def force(self, now: float, hold_times: list[float], *, release: bool) -> int:
        """Resolve every byte received so far regardless of ranges (a bound fired).

        Returns:
            the number of bytes resolved; the caller sends ``data()`` first when releasing.
        """
        n = self.size
        self.release_wm = max(self.release_wm, self.end)
        for rng in self.ranges:
            if rng.start < self.end and rng.state == HELD:
                rng.state = RELEASED if release else DISCARDED
        self._advance(self.end, now, hold_times)
        return n

    def _advance(self, pos: int, now: float, hold_times: list[float]) -> None:
        chunks, drop = self._chunks, pos - self.base
        self.size -= drop
        while drop:
            if len(chunks[0]) <= drop:
                drop -= len(chunks.popleft())
            else:
                chunks[0] = chunks[0][drop:]
                drop = 0
        self.base = pos
        arrivals = self._arrivals
        while arrivals and arrivals[0][0] <= pos:
            hold_times.append(now - arrivals.popleft()[1])
        if arrivals and not self.size:
            arrivals.clear()
        ranges, k = self.ranges, 0
        while k < len(ranges) and ranges[k].end <= pos:
            k += 1
        del ranges[:k]


class InKeep:
    """A copy of the input delivered to the server from offset ``base``, at most ``cap`` bytes."""

    def __init__(self, base: int, cap: int) -> None:
        self.base = base
        self.buf = bytearray()
        self.cap = cap
        self.trimmed_for_cap = 0

    @property
    def end(self) -> int:
        return self.base + len(self.buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Record bytes just delivered to the server; the oldest go once ``cap`` is exceeded."""
        self.buf += data
        over = len(self.buf) - self.cap
        if over > 0:
            self.trimmed_for_cap += over
            self.trim(self.base + over)

    def trim(self, upto: int) -> None:
        """Forget input below ``upto`` (a committed transaction consumed it)."""
        upto = min(upto, self.end)
        if upto > self.base:
            del self.buf[: upto - self.base]
            self.base = upto

    def get(self, start: int, end: int) -> bytes | None:
        """The kept bytes ``[start, end)``, or None when part of them is no longer kept."""
        if start < self.base or end > self.end:
            return None
        return bytes(self.buf[start - self.base: end - self.base])

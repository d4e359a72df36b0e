"""Pass-through relaying for every unguarded link in one task, on one private epoll set.

Measured (bench/proxy.py): the kernel time of relaying a small keep-alive request was the same
for haproxy and for the task-per-direction relay (~19 us), but the relay spent ~14 us of Python per
request against haproxy's ~1.4 us, nearly all of it in trio's per-wake-up path (one-shot epoll
re-arm, scheduler, task switch) taken twice per request. Here the sockets stay registered
(level-triggered) in a private epoll whose own fd is the only thing trio waits on: one wake-up
serves every ready socket, and a message costs its ``recv`` and its ``send``.

A link leaves this path (``relay`` returns) when it ends, when the gateway becomes guarded (its
output must be held: the chunk just read is handed over, not sent), or when a peer does not accept
a whole chunk at once (the task path has backpressure); the task path then carries on with the
direction states and the unsent bytes as they are.
"""

from __future__ import annotations

import select
import socket
from typing import TYPE_CHECKING, Final

import trio

from vproxy import _sockio

if TYPE_CHECKING:
    from vproxy._link import Link

_CHUNK: Final = 65536
_EVENTS: Final = 128

INPUT: Final = 0  # towards the server
OUTPUT: Final = 1  # the server's output


class Handover:
    """Why a link left the fast path and what it leaves to the task path.

    Attributes:
        reason: ``done`` (both directions ended), ``guard``, ``slow`` (partial send) or ``error``.
        pending: per direction (INPUT, OUTPUT), bytes read but not yet sent (``b""`` if none).
        ended: per direction, True when its EOF was seen and passed on (half-close).
        error: the OSError for ``error``.
    """

    __slots__ = ("done", "ended", "error", "pending", "reason", "sides")

    def __init__(self) -> None:
        self.sides: tuple[_Side, ...] = ()
        self.reason = ""
        self.pending = [b"", b""]
        self.ended = [False, False]
        self.error: OSError | None = None
        self.done = trio.Event()


class _Side:
    __slots__ = ("direction", "dst", "handover", "link", "src")

    def __init__(self, link: Link, src: socket.socket, dst: socket.socket, direction: int,
                 handover: Handover) -> None:
        self.link, self.src, self.dst = link, src, dst
        self.direction, self.handover = direction, handover


class FastRelay:
    """The shared pass-through engine of one gateway (see the module docstring)."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._sides: dict[int, _Side] = {}
        self._buf = bytearray(_CHUNK)
        self._woken = trio.Event()

    async def relay(self, link: Link, server: socket.socket, peer: socket.socket,
                    handover: Handover) -> None:
        """Relay ``link`` here until it ends or must leave; ``handover`` then says why and how."""
        sides = handover.sides = (_Side(link, peer, server, INPUT, handover),
                                  _Side(link, server, peer, OUTPUT, handover))
        for side in sides:
            self._sides[side.src.fileno()] = side
            self._epoll.register(side.src.fileno(), select.EPOLLIN)
        self._woken.set()
        try:
            await handover.done.wait()
        finally:
            for side in sides:
                self._forget(side)

    def evict_all(self, reason: str) -> None:
        """Every link leaves now (the gateway became guarded)."""
        for side in list(self._sides.values()):
            self._finish(side.handover, reason)

    def evict(self, handover: Handover, reason: str) -> None:
        """One link leaves now (it needs a hold although the gateway is not guarded)."""
        self._finish(handover, reason)

    def _forget(self, side: _Side) -> None:
        fd = side.src.fileno()
        if fd >= 0 and self._sides.get(fd) is side:
            del self._sides[fd]
            self._epoll.unregister(fd)

    def _finish(self, handover: Handover, reason: str, error: OSError | None = None) -> None:
        if not handover.done.is_set():
            handover.reason, handover.error = reason, error
            handover.done.set()
            for side in handover.sides:  # now: level-triggered, they would be reported again
                self._forget(side)

    async def run(self) -> None:
        """Serve ready sockets forever (one task per gateway)."""
        epoll, sides, buf = self._epoll, self._sides, self._buf
        view = memoryview(buf)
        while True:
            if not sides:
                await self._woken.wait()
                self._woken = trio.Event()
                continue
            await trio.lowlevel.wait_readable(epoll.fileno())
            for fd, _ in epoll.poll(0, _EVENTS):
                side = sides.get(fd)
                if side is not None and not side.handover.done.is_set():
                    self._move(side, buf, view)

    def close(self) -> None:
        """Release the epoll set (after every link and ``run`` ended)."""
        self._epoll.close()

    def _move(self, side: _Side, buf: bytearray, view: memoryview) -> None:
        handover, link = side.handover, side.link
        try:
            n = side.src.recv_into(buf)
        except BlockingIOError:
            return
        except OSError as exc:
            self._finish(handover, "error", exc)
            return
        if n == 0:
            self._forget(side)
            _sockio.shutdown_write(side.dst)
            handover.ended[side.direction] = True
            if all(handover.ended):
                self._finish(handover, "done")
            return
        if side.direction == OUTPUT and (link.hold is not None or link.gateway.guarded):
            handover.pending[OUTPUT] = bytes(view[:n])  # to be held, not sent
            self._finish(handover, "guard")
            return
        try:
            sent = side.dst.send(view[:n])
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._finish(handover, "error", exc)
            return
        link.passed(side.direction == OUTPUT, view[:sent])
        if sent < n:
            handover.pending[side.direction] = bytes(view[sent:n])
            self._finish(handover, "slow")

"""The relay loop: one level-triggered epoll set for every link and control connection, served by
the relay thread (``vproxy/_threadrelay.py``, which runs it under the lock it shares with trio,
``vproxy/_turns.py``). What follows is why this loop looks as it does.

Measured (bench/proxy.py): the kernel time of relaying a small keep-alive request was the same
for haproxy and for the task-per-direction relay (~19 us), but the relay spent ~14 us of Python per
request against haproxy's ~1.4 us, nearly all of it in trio's per-wake-up path (one-shot epoll
re-arm, scheduler, task switch) taken twice per request. Here the sockets stay registered
(level-triggered) in a private epoll: one wake-up serves every ready socket, and a message costs
its ``recv`` and its ``send``.

Backpressure stays here too: when a peer takes only part of a chunk, the rest waits in the
direction's ``pending`` bytes, the direction stops reading, and the peer's socket is watched for
writability (bulk transfers, e.g. the wget crawl of the Apache manual, stay on this path).

Held output stays here too: the chunk read from the server goes into the link's hold and the link
releases what the control events already allow at once (``Link.held_output``; what stays held
goes out later from a control event or the link's writer task). Measured (bench/proxy.py, wrk
keep-alive through a guarded gateway without HTTP framing), this took the gateway's CPU per request
from ~55-58 us on the task-per-direction relay to ~39 us (haproxy ~22, pass-through ~26).

Control connections are watched here too (``watch``): their lines are applied in the same
wake-up as the output they release, with no task switch of their own (measured on the wget crawl
through a guarded gateway, a control task's trio socket wake-up per batch of lines was a sixth of
the gateway's CPU).

A link leaves (``relay`` returns) when it ends, or for the task path: when its held output is over
``hold_bytes`` (backpressure), when aborted input is replayed (the replay and the input share the
task path's lock), or when its output becomes held while unheld output of it still waits for the
peer (that goes first). The chunk read at that moment is handed over unsent, together with what
was already pending, and the task path carries on from there.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import trio

from vproxy import _sockio

if TYPE_CHECKING:
    from vproxy._link import Link
    from vproxy._turns import Turns

_CHUNK: Final = 65536
_EVENTS: Final = 128
_IN: Final = select.EPOLLIN
_OUT: Final = select.EPOLLOUT

INPUT: Final = 0  # towards the server
OUTPUT: Final = 1  # the server's output


class Handover:
    """Why a link left the relay loop and what it leaves to the task path.

    Attributes:
        reason: ``done`` (both directions ended), ``guard`` (output must be held from now on
            while unheld output of it still waits for the peer), ``backpressure`` (the hold is
            over hold-bytes), ``replay``, ``cancelled`` or ``error``.
        unsent: per direction (INPUT, OUTPUT), bytes relayed unheld whose send had not finished:
            the task path sends them first, never holds them. (Output's are handed to the link
            at once, ``Link.unheld_output``: they go out before anything released.)
        pending: per direction, bytes read at the hand-over and not sent (output: to be held).
        ended: per direction, True when its EOF was seen and passed on (half-close).
        error: the OSError for ``error``.
    """

    __slots__ = ("done", "ended", "error", "left", "pending", "reason", "sides", "unsent")

    def __init__(self) -> None:
        self.sides: tuple[_Side, ...] = ()
        self.left = False  # its sockets are out of the epoll set (``done`` may follow later)
        self.reason = ""
        self.unsent = [b"", b""]
        self.pending = [b"", b""]
        self.ended = [False, False]
        self.error: OSError | None = None
        self.done = trio.Event()


class _Side:
    """One direction of a link: read ``src``, write ``dst``; ``blocked`` bytes wait for ``dst``."""

    __slots__ = ("blocked", "direction", "dst", "dst_fd", "handover", "link", "src", "src_fd")

    def __init__(self, link: Link, src: socket.socket, dst: socket.socket, direction: int,
                 handover: Handover) -> None:
        self.link, self.src, self.dst = link, src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.direction, self.handover = direction, handover
        self.blocked = b""


class FastRelay:
    """The relay loop of one gateway (see the module docstring); its caller holds ``turns.lock``.

    Args:
        turns: the lock shared with trio, and the way to call into trio.
    """

    def __init__(self, turns: Turns) -> None:
        self.turns = turns
        self._epoll = select.epoll()
        self._readers: dict[int, _Side] = {}  # fd -> the direction that reads it
        self._writers: dict[int, _Side] = {}  # fd -> the direction with bytes blocked on it
        self._flags: dict[int, int] = {}  # fd -> what the epoll set watches now
        self._watched: dict[int, Callable[[], None]] = {}  # fd -> called when it is readable
        self._buf = bytearray(_CHUNK)

    def _enter(self, link: Link, server: socket.socket, peer: socket.socket,
               handover: Handover) -> None:
        sides = handover.sides = (_Side(link, peer, server, INPUT, handover),
                                  _Side(link, server, peer, OUTPUT, handover))
        for side in sides:
            self._readers[side.src_fd] = side
            self._watch(side.src_fd)

    def watch(self, sock: socket.socket, on_readable: Callable[[], None]) -> None:
        """Call ``on_readable()`` from the relay loop while ``sock`` is readable (level-triggered:
        it should read once and return; it must not raise). ``unwatch`` before closing ``sock``."""
        fd = sock.fileno()
        self._epoll.register(fd, _IN)
        self._watched[fd] = on_readable
        self._flags[fd] = _IN

    def unwatch(self, sock: socket.socket) -> None:
        """Stop watching ``sock`` (a no-op when it is not watched)."""
        fd = sock.fileno()
        if self._watched.pop(fd, None) is not None:
            self._epoll.unregister(fd)
            del self._flags[fd]

    def guard_all(self) -> None:
        """The gateway became guarded: output is held from now on (see ``hold_starts``)."""
        for side in list(self._readers.values()):
            self.hold_starts(side.handover)

    def hold_starts(self, handover: Handover) -> None:
        """The link's output is held from now on. It stays here unless unheld output of it is
        still waiting for the peer: the task path sends that first, before anything released."""
        output = handover.sides[OUTPUT] if handover.sides else None
        if output is not None and output.blocked:
            self._finish(handover, "guard")

    def evict(self, handover: Handover, reason: str) -> None:
        """One link leaves now (its output must be held although the gateway is not guarded)."""
        self._finish(handover, reason)

    def _watch(self, fd: int) -> None:
        """Make the epoll set watch ``fd`` for what its directions need now."""
        reader = self._readers.get(fd)
        flags = (_IN if reader is not None and not reader.blocked else 0) | \
            (_OUT if fd in self._writers else 0)
        old = self._flags.get(fd)
        if flags == old:
            return
        if old is None:
            self._epoll.register(fd, flags)
        elif flags:
            self._epoll.modify(fd, flags)
        else:
            self._epoll.unregister(fd)
            del self._flags[fd]
            return
        self._flags[fd] = flags

    def _finish(self, handover: Handover, reason: str, error: OSError | None = None) -> None:
        """The link leaves now (a no-op after the first time)."""
        if self._detach(handover, reason, error):
            self._conclude(handover)

    def _conclude(self, handover: Handover) -> None:
        """Tell the link now that output relayed unheld but unsent goes out first (before
        anything a control event releases next); wake its task (in trio)."""
        if handover.unsent[OUTPUT]:
            handover.sides[OUTPUT].link.unheld_output(handover.unsent[OUTPUT])
        self.turns.soon(handover.done.set)

    def _detach(self, handover: Handover, reason: str, error: OSError | None) -> bool:
        """Take the link's sockets out of the epoll set and note why; False if it had left."""
        if handover.left:
            return False
        handover.left, handover.reason, handover.error = True, reason, error
        for side in handover.sides:  # now: level-triggered, they would be reported again
            if side.blocked:
                handover.unsent[side.direction] = side.blocked
                side.blocked = b""
            for table, fd in ((self._readers, side.src_fd), (self._writers, side.dst_fd)):
                if table.get(fd) is side:
                    del table[fd]
            for fd in (side.src_fd, side.dst_fd):
                if fd in self._flags and fd not in self._readers and fd not in self._writers:
                    self._epoll.unregister(fd)
                    del self._flags[fd]
        return True

    def _serve(self, ready: list[tuple[int, int]], view: memoryview) -> None:
        """Act on one ``epoll.poll`` result."""
        readers, writers, watched, buf = self._readers, self._writers, self._watched, self._buf
        for fd, events in ready:
            if events & ~_IN:  # writable, or an error/hang-up a pending send will meet
                side = writers.get(fd)
                if side is not None:
                    self._unblock(side)
            if events & ~_OUT:  # readable, or an error/hang-up the receive will meet
                side = readers.get(fd)
                if side is not None:
                    if not side.blocked:
                        self._move(side, buf, view)
                elif (on_readable := watched.get(fd)) is not None:
                    on_readable()

    def close(self) -> None:
        """Release the epoll set (after every link and ``run`` ended)."""
        self._epoll.close()

    def _send(self, side: _Side, data: memoryview | bytes) -> bool:
        """Send what ``dst`` takes now; the rest blocks the direction. False after an error."""
        try:
            sent = side.dst.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._finish(side.handover, "error", exc)
            return False
        if sent < len(data):
            side.blocked = bytes(data[sent:])
            self._writers[side.dst_fd] = side
            self._watch(side.dst_fd)
            self._watch(side.src_fd)
        if side.direction == INPUT:  # (output was counted when read: see ``_move``)
            # last: this may make the link leave (its blocked bytes then go to the task path)
            side.link.passed(False, memoryview(data)[:sent])
        return True

    def _unblock(self, side: _Side) -> None:
        data, side.blocked = side.blocked, b""
        del self._writers[side.dst_fd]
        if self._send(side, data) and not side.blocked:
            self._watch(side.dst_fd)
            self._watch(side.src_fd)

    def _move(self, side: _Side, buf: bytearray, view: memoryview) -> None:
        handover, link = side.handover, side.link
        try:
            n = side.src.recv_into(buf)
        except BlockingIOError:
            return
        except OSError as exc:
            self._finish(handover, "error", exc)
            return
        held = side.direction == OUTPUT and (link.hold is not None or link.gateway.guarded)
        if n == 0:
            del self._readers[side.src_fd]
            self._watch(side.src_fd)
            if side.direction == OUTPUT:
                link.output_ended()
            if not held:  # (held output: the writer passes the EOF on after it)
                _sockio.shutdown_write(side.dst)
            handover.ended[side.direction] = True
            if all(handover.ended):
                self._finish(handover, "done")
            return
        if held:
            if link.held_output(view[:n]):  # over the hold's byte bound: stop reading
                self._finish(handover, "backpressure")
            return
        if side.direction == OUTPUT:
            # counted now, sent or not: a hold that starts while part of it waits for the peer
            # starts after it (these bytes are the server's output offsets before the hold)
            link.passed(True, view[:n])
        self._send(side, view[:n])

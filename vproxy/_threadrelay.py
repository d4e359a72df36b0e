"""The relay loop (``vproxy/_fastrelay.py``) in a dedicated OS thread: every link and every control
connection of the gateway, held or not.

Measured on the wget crawl (bench/proxy.py, fourth pass): the shared epoll of ``_fastrelay``
inside trio's epoll costs, per event, a trio wake-up, a nested ``epoll_wait`` and trio's one-shot
re-arm (``epoll_ctl``). Here the same relay loop (``FastRelay._serve``) runs in its own thread
blocked in ``epoll.poll``: an event costs one ``epoll_wait`` and its ``recv``/``send``. At first
only links that held nothing came here; a guarded gateway's links went back to a trio-side loop,
which cost the guarded crawl (coverage none) ~2 trio wake-ups and ~160 us of gateway CPU a
request. Now held output, the control lines that release it and the sends stay here too.

Threading contract:

- The thread and trio never run at once: the thread takes ``turns.lock`` for each ``poll``
  result, trio holds it whenever it runs (``vproxy/_turns.py``). So links, holds, sessions and
  counters are plain shared state; what only trio may do is queued with ``turns.soon``.
- The trio thread owns the lifecycle: ``run`` (a task of the gateway's nursery) starts the thread
  and waits for it through ``trio.to_thread``; cancelling ``run`` wakes the thread (an eventfd in
  its epoll set) and waits until it returned (shielded; it returns within one ``poll`` timeout
  even if the wake-up were lost). An exception in the thread ends ``run`` with
  ``RelayThreadError`` (logged).
- Hold bounds: a link that keeps output held asks for a wake-up at its hold-ms deadline
  (``arm``, from either side); the thread's ``poll`` timeout keeps the earliest, and when it
  passes the link's writer task is woken in trio (``Link.hold_due``).
- An event for an fd that trio took out (and maybe reused) between ``poll`` and the lock is
  harmless: only what the tables name is acted on, and every socket call is non-blocking.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import select
import socket
import threading
from typing import TYPE_CHECKING, Final

import structlog
import trio

from vproxy._fastrelay import _EVENTS, FastRelay, Handover

if TYPE_CHECKING:
    from vproxy._link import Link
    from vproxy._turns import Turns

_POLL_TIMEOUT: Final = 1.0  # seconds: a missed wake-up delays a stop this long at most

log = structlog.get_logger("vproxy")


class RelayThreadError(Exception):
    """The relay thread failed; links in it are stuck, so the gateway stops."""


class ThreadRelay(FastRelay):
    """The gateway's relay loop in its own OS thread (see the module docstring).

    Args:
        turns: the lock shared with trio, and the way to call into trio.
    """

    def __init__(self, turns: Turns) -> None:
        super().__init__(turns)
        self._stopping = False
        self._exited = threading.Event()
        self._error: BaseException | None = None  # why the thread ended on its own
        self._timers: list[tuple[float, int, Link]] = []  # (deadline, tie-break, link): a heap
        self._ties = itertools.count()
        self._wakefd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wakefd, select.EPOLLIN)
        self._watched[self._wakefd] = self._woken

    # --- trio side -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the relay thread until cancelled (one task per gateway); returns once it ended.

        Error handling:
            RelayThreadError when the thread raised (logged by the thread with its traceback).
        """
        thread = threading.Thread(target=self._main, name="vproxy-relay", daemon=True)
        thread.start()
        try:
            await trio.to_thread.run_sync(self._exited.wait, abandon_on_cancel=True)
        finally:  # (cancelled: the thread still runs; stop it and wait until it did)
            self._stopping = True
            os.eventfd_write(self._wakefd, 1)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join)
        raise RelayThreadError(f"the relay thread failed: {self._error!r}") from self._error

    async def relay(self, link: Link, server: socket.socket, peer: socket.socket,
                    handover: Handover) -> None:
        """Relay ``link`` in the thread until it ends or must leave; ``handover`` then says why
        and how."""
        self._enter(link, server, peer, handover)
        try:
            await handover.done.wait()
        finally:
            self._finish(handover, "cancelled")

    def close(self) -> None:
        super().close()
        os.close(self._wakefd)

    # --- the thread ----------------------------------------------------------------------------

    def arm(self, link: Link, deadline: float) -> None:
        """Call ``link.hold_due()`` in the thread once ``deadline`` (trio's clock) passed."""
        timers = self._timers
        earliest = not timers or deadline < timers[0][0]
        heapq.heappush(timers, (deadline, next(self._ties), link))
        if earliest:  # the thread's poll may wait longer than this (armed in trio)
            os.eventfd_write(self._wakefd, 1)

    def _woken(self) -> None:
        with contextlib.suppress(BlockingIOError):  # (read by an earlier report)
            os.eventfd_read(self._wakefd)  # level-triggered: it would be reported again

    def _main(self) -> None:
        epoll, view, lock, timers, now = self._epoll, memoryview(self._buf), self.turns.lock, \
            self._timers, self.turns.now
        timeout: float = _POLL_TIMEOUT
        try:
            while not self._stopping:
                ready = epoll.poll(timeout, _EVENTS)
                with lock:
                    self._serve(ready, view)
                    timeout = _POLL_TIMEOUT
                    if timers:  # (the clock is read once a round, and only then)
                        t = now()
                        while timers and timers[0][0] <= t:
                            heapq.heappop(timers)[2].hold_due()
                        if timers:
                            timeout = max(0.0, min(timeout, timers[0][0] - t))
        except BaseException as exc:  # reaches trio as RelayThreadError (``run``)
            log.exception("relay thread failed")
            self._error = exc
        finally:
            self._exited.set()

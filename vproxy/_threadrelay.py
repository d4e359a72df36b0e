"""Pass-through relaying in a dedicated OS thread: links that hold nothing, while not guarded.

Measured on the wget crawl (bench/proxy.py, fourth pass): the shared epoll of ``_fastrelay``
inside trio's epoll costs, per event, a trio wake-up, a nested ``epoll_wait`` and trio's one-shot
re-arm (``epoll_ctl``). Here the same relay loop (``FastRelay._serve``) runs in its own thread
blocked in ``epoll.poll``: an event costs one ``epoll_wait`` and its ``recv``/``send``.

Only links that hold nothing come here (a link accepted while the gateway is not guarded). When
one must hold output (GUARD, a transaction announced on it, an abort, a replay) trio takes it out
of the thread synchronously (``guard_all``, ``hold_starts``, ``evict``) before anything is held;
``vproxy/_link.py`` then relays it on the trio-side ``FastRelay`` (or the task path).

Threading contract:

- The trio thread owns the lifecycle: ``run`` (a task of the gateway's nursery) starts the thread
  and waits for it through ``trio.to_thread``; cancelling ``run`` wakes the thread (an eventfd in
  its epoll set) and waits until it returned (shielded; it returns within one ``poll`` timeout
  even if the wake-up were lost). An exception in the thread ends ``run`` with
  ``RelayThreadError`` (logged).
- The relay tables, the epoll set's registrations and every ``_Side``/``Handover`` of a link in
  the thread are guarded by ``_mutex``: the thread holds it while it acts on one ``poll`` result;
  trio holds it while it adds or takes out a link. So once ``guard_all``/``hold_starts``/``evict``
  return, the thread touches the link no more and its counts are exact.
- The thread never touches trio-side state (links, the gateway, stats, trio objects): bytes it
  relays are counted in the sides (``_Side.count``, given to the link when it leaves) and in
  ``passed`` (written by the thread only; ``Stats.bytes_passed`` adds it). A link the thread
  ends itself (both EOFs, or an error) is concluded in trio through
  ``TrioToken.run_sync_soon``; trio concludes the ones it takes out itself.
- An event for an fd that trio took out (and maybe reused) between ``poll`` and ``_mutex`` is
  harmless: only what the tables name is acted on, and every socket call is non-blocking.
"""

from __future__ import annotations

import os
import select
import socket
import threading
from typing import TYPE_CHECKING, Final

import structlog
import trio

from vproxy._fastrelay import _EVENTS, INPUT, OUTPUT, FastRelay, Handover, _Side

if TYPE_CHECKING:
    from vproxy._link import Link

_POLL_TIMEOUT: Final = 1.0  # seconds: a missed wake-up delays a stop this long at most

log = structlog.get_logger("vproxy")


class RelayThreadError(Exception):
    """The pass-through relay thread failed; links in it are stuck, so the gateway stops."""


class ThreadRelay(FastRelay):
    """The gateway's pass-through engine in its own OS thread (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.passed = 0  # bytes relayed here so far (written by the thread only)
        self._mutex = threading.Lock()
        self._stopping = False
        self._exited = threading.Event()
        self._error: BaseException | None = None  # why the thread ended on its own
        self._token: trio.lowlevel.TrioToken | None = None
        self._wakefd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wakefd, select.EPOLLIN)

    # --- trio side -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the relay thread until cancelled (one task per gateway); returns once it ended.

        Error handling:
            RelayThreadError when the thread raised (logged by the thread with its traceback).
        """
        self._token = trio.lowlevel.current_trio_token()
        thread = threading.Thread(target=self._main, name="vproxy-relay", daemon=True)
        thread.start()
        try:
            await trio.to_thread.run_sync(self._exited.wait, abandon_on_cancel=True)
        finally:  # (cancelled: the thread still runs; stop it and wait until it did)
            self._stopping = True
            os.eventfd_write(self._wakefd, 1)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join)
        raise RelayThreadError(f"the pass-through relay thread failed: {self._error!r}") \
            from self._error

    async def relay(self, link: Link, server: socket.socket, peer: socket.socket,
                    handover: Handover) -> None:
        """Relay ``link`` in the thread until it ends or trio takes it out (see ``FastRelay``)."""
        with self._mutex:
            self._enter(link, server, peer, handover)
        try:
            await handover.done.wait()
        finally:
            self._take_out(handover, "cancelled")

    def guard_all(self) -> None:
        """The gateway became guarded: every link leaves the thread (reason ``guard``)."""
        with self._mutex:
            for side in list(self._readers.values()) + list(self._writers.values()):
                self._take_out_locked(side.handover, "guard")

    def hold_starts(self, handover: Handover) -> None:
        """The link's output must be held: it leaves the thread (reason ``hold``)."""
        self._take_out(handover, "hold")

    def evict(self, handover: Handover, reason: str) -> None:
        """The link leaves for the task path (``reason``), even if a hold just took it out."""
        with self._mutex:
            self._take_out_locked(handover, reason)
            if handover.reason in ("guard", "hold"):  # taken out by trio, the link not resumed
                handover.reason = reason  # yet: a replay needs the task path (its input lock)

    def passed_so_far(self) -> int:
        """Bytes relayed here so far (read from trio: an int the thread alone writes)."""
        return self.passed

    def close(self) -> None:
        super().close()
        os.close(self._wakefd)

    def _take_out(self, handover: Handover, reason: str) -> None:
        with self._mutex:
            self._take_out_locked(handover, reason)

    def _take_out_locked(self, handover: Handover, reason: str) -> None:
        """Out of the thread now, and concluded now: a link the thread ended itself may still wait
        for its ``run_sync_soon`` conclusion, and its offsets must be right before a hold starts."""
        self._detach(handover, reason, None)
        if not handover.done.is_set():
            self._conclude(handover)

    def _conclude(self, handover: Handover) -> None:
        """(trio side) The link counts what was relayed here, and learns of its output's end."""
        if handover.done.is_set():
            return
        sides = handover.sides
        link = sides[INPUT].link
        link.relayed_unheld(sides[INPUT].count, sides[OUTPUT].count)
        sides[INPUT].count = sides[OUTPUT].count = 0
        if handover.ended[OUTPUT] and handover.reason in ("done", "error"):
            link.output_ended()  # (the task path does this itself for a link that leaves)
        super()._conclude(handover)

    # --- the thread ----------------------------------------------------------------------------

    def _main(self) -> None:
        epoll, view, mutex = self._epoll, memoryview(self._buf), self._mutex
        try:
            while not self._stopping:
                ready = epoll.poll(_POLL_TIMEOUT, _EVENTS)
                with mutex:
                    self._serve(ready, view)
        except BaseException as exc:  # reaches trio as RelayThreadError (``run``)
            log.exception("pass-through relay thread failed")
            self._error = exc
        finally:
            self._exited.set()

    def _finish(self, handover: Handover, reason: str, error: OSError | None = None) -> None:
        """(thread side, under ``_mutex``) The thread ended the link: trio concludes it."""
        if self._detach(handover, reason, error):
            assert self._token is not None
            self._token.run_sync_soon(self._conclude, handover)

    def _passed(self, side: _Side, chunk: memoryview) -> None:
        side.count += len(chunk)
        self.passed += len(chunk)

    def _held(self, side: _Side) -> bool:
        return False  # (a link that must hold is taken out before anything is held)

    def _output_ended(self, side: _Side) -> None:
        pass  # (told when the link is concluded)

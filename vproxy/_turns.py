"""The one lock that trio and the relay thread take turns on, so both may touch the gateway's state.

The relay thread (``vproxy/_threadrelay.py``) serves every link and control connection: it reads
the server's output into holds, applies control lines and sends what they release, all without a
trio wake-up. Trio still runs everything that waits (dialling, the writer of a held link, the task
path, replays, answers). Both work on the same links, holds and sessions, so they never run at the
same time: trio holds ``lock`` whenever it runs (a trio ``Instrument`` lets go of it only while
trio waits for I/O, ``before_io_wait``/``after_io_wait``), and the thread takes it for each batch of
ready sockets. Plain attribute work needs nothing more. What only trio may do (set a trio
``Event``, move a cancel scope's deadline, start a task) goes through ``soon``: run now when
called in trio, else queued to trio (``TrioToken.run_sync_soon``, in order).

Measured on the wget crawl through a guarded gateway (coverage none): serving held links and the
control lines in trio cost ~2 trio wake-ups a request (each: trio's own ``epoll_wait``, the
re-arm of the relay's epoll fd, the scheduler and a task switch; ~40 % of the gateway's Python).

Clock: hold times are taken with ``now`` on both sides: trio's clock read without trio (trio's
default ``SystemClock`` is ``perf_counter()`` plus a fixed offset), so deadlines computed in the
thread and cancel-scope deadlines in trio agree.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import trio


class Turns(trio.abc.Instrument):
    """The lock shared by trio and the relay thread, and the way back into trio (``soon``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._trio_thread = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._offset = 0.0

    def start(self) -> None:
        """(trio) Take the lock from now on whenever trio runs; call once, in the trio thread."""
        self._trio_thread = threading.get_ident()
        self._token = trio.lowlevel.current_trio_token()
        self._offset = trio.current_time() - time.perf_counter()
        self.lock.acquire()
        trio.lowlevel.add_instrument(self)

    def stop(self) -> None:
        """(trio) Stop taking turns (after the relay thread ended)."""
        trio.lowlevel.remove_instrument(self)
        self.lock.release()

    def before_io_wait(self, timeout: float) -> None:
        self.lock.release()  # trio waits: the thread may serve its sockets meanwhile

    def after_io_wait(self, timeout: float) -> None:
        self.lock.acquire()

    def now(self) -> float:
        """Trio's current time, from either side."""
        return time.perf_counter() + self._offset

    def in_trio(self) -> bool:
        """True when called from trio's thread (else from the relay thread)."""
        return threading.get_ident() == self._trio_thread

    def soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` in trio: now when in trio, else once the thread's turn is over.

        Error handling:
            an exception of ``fn`` queued from the thread crashes the trio run (as for any
            ``run_sync_soon`` callback): only pass functions that do not raise.
        """
        if threading.get_ident() == self._trio_thread:
            fn(*args)
        else:
            assert self._token is not None
            self._token.run_sync_soon(fn, *args)

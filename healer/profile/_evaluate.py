"""Measuring heals on the SEV paper's correctness scale: level 3 or better.

Level 3 is "externally visible behaviour remains the same as previous". The measure is direct: the
replies of the server to a fixed request sequence are recorded without injection (the baseline);
then, for each function and each of its calls in the sequence, the sequence is replayed with that
call failed (fault injection) and healed by SEV or by a fixed value (vanilla error virtualization).
A trial reaches level 3 when the process is alive, the healed request got an answer, and every
reply after the healed request equals the baseline: the heal may turn the request it interrupted
into an error (SEV's aim: malicious input handled like the bad input seen in training), but nothing
visible afterwards may change. ``same`` records the stricter outcome (every reply unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from healer.profile._session import ProfileSession, SessionError


class Target(Protocol):
    """A running server with the profile plugin loaded (``injectable`` set)."""

    session: ProfileSession

    def exchange(self, requests: Sequence[str]) -> list[str] | None:
        """Send ``requests`` in order, return the replies (None if the server died or hung)."""

    def stop(self) -> None:
        """Kill the server."""


@dataclass(frozen=True, slots=True)
class Trial:
    """One injected failure and its outcome."""

    function: str
    nth: int
    mode: str  # 'sev' or 'fixed N'
    value: str
    why: str
    request: int  # index of the request during which the call failed
    alive: bool
    same_after: bool  # the healed request was answered; every later reply equals the baseline
    same: bool  # every reply equals the baseline

    @property
    def level3(self) -> bool:
        return self.alive and self.same_after


def modes_label(fixed: int | None) -> str:
    return "sev" if fixed is None else f"fixed {fixed}"


def run_trials(start: Callable[[], Target], requests: Sequence[str], functions: Sequence[str],
               modes: Sequence[int | None], *, max_nth: int = 8) -> list[Trial]:
    """Inject a failure into each of the first ``max_nth`` calls of each function, once per mode.

    Args:
        start: starts a fresh target (called again after a trial killed the server).
        requests: the request sequence (it should reset the server's state first).
        functions: injectable functions to fail.
        modes: None for SEV, an int for vanilla error virtualization with that fixed value.

    Returns:
        Every trial whose injection fired (a function called fewer than ``nth`` times is skipped).

    Error handling:
        A baseline that differs between two uninjected runs raises RuntimeError: the server is not
        deterministic on this sequence, so no comparison would mean anything.
    """
    target = start()
    try:
        baseline = target.exchange(requests)
        if baseline is None or target.exchange(requests) != baseline:
            raise RuntimeError("the server's replies to the request sequence are not repeatable")
        calls = _calls_per_request(target, requests)
        trials = []
        for fn in functions:
            for nth in range(1, max_nth + 1):
                fired_any = False
                for fixed in modes:
                    where = next((i for i, c in enumerate(calls) if c.get(fn, 0) >= nth), -1)
                    trial, target = _trial(start, target, requests, baseline, fn, nth, fixed,
                                           where)
                    if trial is not None:
                        trials.append(trial)
                        fired_any = True
                if not fired_any:
                    break
        return trials
    finally:
        target.stop()


def _calls_per_request(target: Target, requests: Sequence[str]) -> list[dict[str, int]]:
    """Cumulative calls per function after each request (sent one by one, without injection)."""
    out = []
    start = target.session.status()["profile"]["perFunction"]
    for i in range(len(requests)):
        target.exchange(requests[i:i + 1])
        now = target.session.status()["profile"]["perFunction"]
        out.append({f: n - start.get(f, 0) for f, n in now.items()})
    return out


def _trial(start: Callable[[], Target], target: Target, requests: Sequence[str],
           baseline: list[str], fn: str, nth: int, fixed: int | None,
           where: int) -> tuple[Trial | None, Target]:
    s = target.session
    s.set_fixed(fixed)
    before = len(s.injects)
    s.inject(fn, nth)
    replies = target.exchange(requests)
    try:
        s.status()  # a round trip: every message sent before it has arrived
        alive = True
    except SessionError:
        alive = False
    fired = s.injects[before:]
    if alive:
        s.inject(fn, 0)  # disarm when the function was called fewer than nth times
    trial = None
    if fired:
        ev = fired[0]
        after = replies is not None and len(replies) == len(baseline) and where >= 0 and \
            replies[where + 1:] == baseline[where + 1:]
        trial = Trial(fn, nth, modes_label(fixed), ev["value"], ev["why"], where, alive, after,
                      replies == baseline)
    if not alive or replies is None:
        target.stop()
        target = start()
    return trial, target


def level3_rate(trials: Sequence[Trial], mode: str) -> tuple[float, int]:
    """(fraction of ``mode``'s trials at level 3 or better, number of trials)."""
    chosen = [t for t in trials if t.mode == mode]
    return (sum(t.level3 for t in chosen) / len(chosen) if chosen else 0.0), len(chosen)

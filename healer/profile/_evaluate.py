"""Measuring heals on the SEV paper's correctness scale: level 1 (alive) and level 3 or better.

Level 3 is "externally visible behaviour remains the same as previous". The measure is direct: the
replies of the server to a fixed request sequence are recorded without injection (the baseline);
then, for each function and each of the first requests that call it, the sequence is replayed with
that call failed through the real agent (``rpc.exports.inject``, armed once the earlier requests
are answered): the call runs as a transaction, its memory writes are rolled back and its return
value is chosen by SEV or is a fixed value (vanilla error virtualization), per mode. A trial
reaches level 3 when the process is alive, the healed request got an answer, and every reply after
it equals the baseline: the heal may turn the request it interrupted into an error (SEV's aim:
malicious input handled like the bad input seen in training), but nothing visible afterwards may
change. ``same`` records the stricter outcome (every reply unchanged). Without the gateway, output
the failed call wrote before its rollback has already reached the client (the rollback undoes
memory, not a write(2)); behind vproxy it would be dropped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from healer.profile._agent import AgentSession
from healer.profile._session import SessionError


class Target(Protocol):
    """A running server with the full agent attached (``AgentSession``)."""

    session: AgentSession

    def exchange(self, requests: Sequence[str],
                 pause: tuple[int, Callable[[], None]] | None = None) -> list[str] | None:
        """Send ``requests`` in order, return the replies (None if the server died or hung);
        ``pause=(k, fn)`` calls ``fn`` once the first ``k`` requests are answered."""

    def stop(self) -> None:
        """Kill the server."""


@dataclass(frozen=True, slots=True)
class Trial:
    """One injected failure and its outcome."""

    function: str
    nth: int  # the nth request of the sequence that calls the function
    mode: str
    value: str
    why: str
    request: int  # index of the request during which the call failed
    alive: bool
    same_after: bool  # the healed request was answered; every later reply equals the baseline
    same: bool  # every reply equals the baseline
    later_heals: int = 0  # faults the agent healed after the injected one (a bad value crashed)

    @property
    def level3(self) -> bool:
        return self.alive and self.same_after


def run_trials(start: Callable[[dict[str, Any]], Target], requests: Sequence[str],
               functions: Sequence[str], modes: dict[str, dict[str, Any]], *,
               max_nth: int = 8, fresh: bool = False) -> list[Trial]:
    """Fail each function once in each of the first ``max_nth`` requests calling it, per mode.

    Args:
        start: starts a fresh target with the given ``config.profile`` (called again after a
            trial killed the server or left an injection armed).
        requests: the request sequence (it should reset the server's state first).
        functions: functions to fail (supervised by the agent).
        modes: label -> ``config.profile`` (``agent_tables(...)``, with ``fixed`` for vanilla EV).
        fresh: a new target for every trial (a heal may leave damage that a request sequence
            cannot reset, e.g. Apache's pools and connection state); else only after a trial
            that killed or hung it.

    Returns:
        Every trial whose injection fired.

    Error handling:
        A baseline that differs between two uninjected runs raises RuntimeError: the server is not
        deterministic on this sequence, so no comparison would mean anything.
    """
    first = next(iter(modes.values()))
    target = start(first)
    try:
        baseline = target.exchange(requests)
        if baseline is None or target.exchange(requests) != baseline:
            raise RuntimeError("the server's replies to the request sequence are not repeatable")
        calls = _calls_per_request(target, requests)
        trials = []
        for label, profile in modes.items():
            target.session.set_profile(profile)
            for fn in functions:
                where = [i for i, c in enumerate(calls) if c.get(fn, 0) > 0][:max_nth]
                for nth, k in enumerate(where, 1):
                    trial, target = _trial(functools.partial(start, profile), target, requests,
                                           baseline, fn, nth, k, label, fresh)
                    if trial is not None:
                        trials.append(trial)
        return trials
    finally:
        target.stop()


def _calls_per_request(target: Target, requests: Sequence[str]) -> list[dict[str, int]]:
    """Calls per function in each request, without injection. The whole sequence is replayed
    once per request (paused after it to read the agent's counters): a request alone would lose
    what the earlier ones set up (maild's MAIL needs the session's HELO)."""

    def counts() -> dict[str, int]:
        got: dict[str, int] = target.session.status()["profile"]["perFunction"]
        return got

    prefix: list[dict[str, int]] = []  # calls made by the first k requests, k = 0 .. n
    for k in range(len(requests)):
        before = counts()
        at_k: dict[str, int] = {}
        target.exchange(requests, pause=(k, functools.partial(_read_into, at_k, counts)))
        after = counts()
        prefix.append({f: n - before.get(f, 0) for f, n in at_k.items()})
        if k == len(requests) - 1:
            prefix.append({f: n - before.get(f, 0) for f, n in after.items()})
    return [{f: n - prefix[i].get(f, 0) for f, n in prefix[i + 1].items()}
            for i in range(len(requests))]


def _read_into(into: dict[str, int], read: Callable[[], dict[str, int]]) -> None:
    into.update(read())


def _trial(start: Callable[[], Target], target: Target, requests: Sequence[str],
           baseline: list[str], fn: str, nth: int, k: int, label: str, fresh: bool
           ) -> tuple[Trial | None, Target]:
    s = target.session
    injects, heals = len(s.of_type("inject")), len(s.of_type("heal"))
    replies = target.exchange(requests, pause=(k, lambda: s.inject(fn)))
    try:
        s.status()  # a round trip: every event sent before it has arrived
        alive = True
    except SessionError:
        alive = False
    fired = s.of_type("inject")[injects:]
    trial = None
    if fired:
        ev = fired[0]
        after = replies is not None and len(replies) == len(baseline) and \
            replies[k + 1:] == baseline[k + 1:]
        trial = Trial(fn, nth, label, ev["value"], ev["why"], k, alive, after, replies == baseline,
                      len(s.of_type("heal")) - heals)
    if fresh or not alive or replies is None or not fired:  # or hung, or injection still armed
        target.stop()
        target = start()
    return trial, target


def level3_rate(trials: Sequence[Trial], mode: str) -> tuple[float, int]:
    """(fraction of ``mode``'s trials at level 3 or better, number of trials)."""
    chosen = [t for t in trials if t.mode == mode]
    return (sum(t.level3 for t in chosen) / len(chosen) if chosen else 0.0), len(chosen)


class Server(Protocol):
    """A started server: its pid, a request exchange as ``Target.exchange``, and a kill."""

    @property
    def pid(self) -> int: ...

    def exchange(self, requests: Sequence[str], timeout: float = ...,
                 pause: tuple[int, Callable[[], None]] | None = None) -> list[str] | None: ...

    def stop(self) -> None: ...


class AgentTarget:
    """``server`` with the full agent attached: ``functions`` supervised, ``profile`` loaded.

    Error handling:
        SessionError from the attach; the server is stopped before it propagates.
    """

    def __init__(self, server: Server, functions: Sequence[str], profile: dict[str, Any]) -> None:
        self.server = server
        try:
            self.session = AgentSession(server.pid, functions, profile)
        except BaseException:
            server.stop()
            raise

    def exchange(self, requests: Sequence[str],
                 pause: tuple[int, Callable[[], None]] | None = None) -> list[str] | None:
        return self.server.exchange(requests, pause=pause)

    def stop(self) -> None:
        # the server first: a clean detach from a live server can wait for a thread to leave the
        # agent (up to UNLOAD_WAIT, every trial); from a dead one it returns at once
        self.server.stop()
        self.session.close()

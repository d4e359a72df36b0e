"""Run a scenario against a live payfront/ledger pair and judge the outcome.

The runner only talks TCP: it opens one client connection per conversation (towards payfront,
directly or through the gateway) and an audit connection to the ledger for ``DUMP`` before and
after.
How those connections are made (plain loopback, or sockets inside network namespaces) is the
caller's ``Endpoints``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
import trio

from vproxy.scenario._format import Conversation, Scenario
from vproxy.scenario._lines import LineStream, PeerClosed, ReplyTimeout

log = structlog.get_logger("vproxy.scenario")

Opener = Callable[[], Awaitable[trio.abc.Stream]]
Counters = Callable[[], Awaitable[dict[str, int]]]

_SETTLE_POLLS = 40      # DUMPs while waiting for the ledger to drop prepares of closed links
_SETTLE_INTERVAL = 0.05


class UnreachableError(Exception):
    """A server of the scenario could not be reached; the message says which and how to fix it."""


@dataclass(frozen=True, slots=True)
class Endpoints:
    """How to reach the system under test.

    Args:
        front: opens a new client connection to payfront (or to the gateway in front of it).
        ledger: opens an audit connection straight to the ledger (for DUMP).
        front_name, ledger_name: the addresses, for messages.
    """

    front: Opener
    ledger: Opener
    front_name: str
    ledger_name: str


@dataclass(frozen=True, slots=True)
class LedgerState:
    balances: dict[str, int]
    pending: int   # prepared, not committed transfers
    applied: int   # committed transfers since the ledger started

    @property
    def total(self) -> int:
        return sum(self.balances.values())


@dataclass
class ConversationResult:
    name: str
    kind: str
    steps: int
    passed: int = 0
    failure: str | None = None
    done: int = 0                 # DONE lines: transfers payfront reported as applied
    transcript: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass
class Outcome:
    """Everything a report needs; ``passed`` is the verdict."""

    scenario: Scenario
    conversations: list[ConversationResult]
    before: LedgerState
    after: LedgerState
    gateway: dict[str, int] | None = None     # counter deltas from the gateway, if one was used
    notes: list[str] = field(default_factory=list)  # e.g. "payfront exited (SIGSEGV)"

    @property
    def money_conserved(self) -> bool:
        return self.before.total == self.after.total and self.after.pending == 0

    @property
    def applied_once(self) -> bool:
        """Every transfer the ledger applied was reported DONE to exactly one client, and back."""
        return self.after.applied - self.before.applied == sum(c.done for c in self.conversations)

    @property
    def balances_match(self) -> bool:
        want = self.scenario.final_balances
        return want is None or all(self.after.balances.get(k) == v for k, v in want.items())

    @property
    def passed(self) -> bool:
        return (all(c.ok for c in self.conversations) and self.money_conserved
                and self.applied_once and self.balances_match and not self.notes)


async def _open(opener: Opener, what: str, timeout: float) -> trio.abc.Stream:
    try:
        with trio.fail_after(timeout):
            return await opener()
    except (OSError, trio.TooSlowError) as exc:
        raise UnreachableError(f"cannot connect to {what}: {exc or 'timed out'}; check that it "
                               f"is running and listening there") from None


async def read_ledger(endpoints: Endpoints, timeout: float = 5.0) -> LedgerState:
    """Ask the ledger for every balance (``DUMP``).

    Error handling:
        UnreachableError if the ledger cannot be reached or does not answer a DUMP properly.
    """
    where = f"the ledger at {endpoints.ledger_name}"
    lines = LineStream(await _open(endpoints.ledger, where, timeout), timeout)
    balances: dict[str, int] = {}
    counters: dict[str, int] = {}
    try:
        await lines.send_line("DUMP")
        for _ in range(10_000):
            words = (await lines.read_line()).split()
            if words == ["END"]:
                return LedgerState(balances, counters.get("PENDING", 0), counters.get("APPLIED", 0))
            if len(words) == 3 and words[0] == "ACCOUNT":
                balances[words[1]] = int(words[2])
            elif len(words) == 2 and words[0] in ("PENDING", "APPLIED"):
                counters[words[0]] = int(words[1])
            else:
                raise ValueError(f"unexpected line {' '.join(words)!r}")
        raise ValueError("no END after 10000 lines")
    except (PeerClosed, ReplyTimeout, ValueError) as exc:
        raise UnreachableError(f"{where} did not answer DUMP: {exc}; is it a sead ledger?"
                               ) from None
    finally:
        await lines.aclose()


async def _converse(conv: Conversation, endpoints: Endpoints, timeout: float,
                    result: ConversationResult) -> None:
    lg = log.bind(conversation=conv.name)
    try:
        stream = await _open(endpoints.front, f"payfront at {endpoints.front_name}", timeout)
    except UnreachableError as exc:
        result.failure = str(exc)
        return
    lines = LineStream(stream, timeout)
    step_line = conv.line
    try:
        for step in conv.steps:
            step_line = step.line
            result.transcript.append(f"> {step.send[:80]}")
            await lines.send_line(step.send)
            for want in step.expect:
                try:
                    got = await lines.read_line()
                except (PeerClosed, ReplyTimeout) as exc:
                    raise _Mismatch(f"expected {want}: {exc}") from None
                result.transcript.append(f"< {got[:80]}")
                if got.startswith("DONE "):
                    result.done += 1
                if not want.matches(got):
                    raise _Mismatch(f"expected {want}, got {got!r}")
            if step.closed:
                try:
                    extra = await lines.wait_closed()
                except ReplyTimeout as exc:
                    raise _Mismatch(f"expected the server to close: {exc}") from None
                if extra:
                    raise _Mismatch(f"expected the server to close, got {extra[:80]!r} first")
            result.passed += 1
        if not conv.steps[-1].closed:
            await _no_stray_lines(lines)
    except _Mismatch as exc:
        result.failure = f"line {step_line}: {exc}"
        lg.debug("conversation failed", reason=result.failure)
    except PeerClosed as exc:
        result.failure = f"line {step_line}: {exc}"
    finally:
        await lines.aclose()


class _Mismatch(Exception):
    pass


async def _no_stray_lines(lines: LineStream) -> None:
    # A PING answered by the very next line proves nothing unexpected (a leaked partial reply,
    # a gateway's replacement line) arrived after the last expected line.
    await lines.send_line("PING")
    try:
        got = await lines.read_line()
    except (PeerClosed, ReplyTimeout) as exc:
        raise _Mismatch(f"after the last step, PING got no PONG: {exc}") from None
    if got != "PONG":
        raise _Mismatch(f"unexpected line after the last step: {got!r}")


async def _settle(endpoints: Endpoints, timeout: float) -> LedgerState:
    """The ledger's state once the prepares of closed connections are gone (bounded wait)."""
    state = await read_ledger(endpoints, timeout)
    for _ in range(_SETTLE_POLLS):
        if state.pending == 0:
            break
        await trio.sleep(_SETTLE_INTERVAL)
        state = await read_ledger(endpoints, timeout)
    return state


async def run_scenario(scenario: Scenario, endpoints: Endpoints, *, check_initial: bool = True,
                       counters: Counters | None = None) -> Outcome:
    """Play every conversation (concurrently, honouring ``after``) and audit the ledger.

    Args:
        scenario: the parsed scenario.
        endpoints: how to reach payfront and the ledger.
        check_initial: refuse to run unless the ledger holds the scenario's initial balances.
        counters: reads the gateway's counters; the outcome carries their change over the run.

    Returns:
        The Outcome (reply mismatches are results, not exceptions).

    Error handling:
        UnreachableError if the ledger cannot be audited, or (``check_initial``) if it does not hold
        the scenario's accounts and balances: the expected final state would be meaningless.
    """
    before = await read_ledger(endpoints, scenario.timeout)
    first = await counters() if counters is not None else None
    want = {a.name: a.balance for a in scenario.accounts}
    if check_initial and before.balances != want:
        raise UnreachableError(
            f"the ledger at {endpoints.ledger_name} holds {before.balances}, but "
            f"{scenario.path} starts from {want}; restart the ledger with those balances")
    results = {c.name: ConversationResult(c.name, c.kind, len(c.steps))
               for c in scenario.conversations}
    finished = {c.name: trio.Event() for c in scenario.conversations}

    async def play(conv: Conversation) -> None:
        try:
            for dep in conv.after:
                await finished[dep].wait()
            await _converse(conv, endpoints, scenario.timeout, results[conv.name])
        finally:
            finished[conv.name].set()

    async with trio.open_nursery() as nursery:
        for conv in scenario.conversations:
            nursery.start_soon(play, conv)
    after = await _settle(endpoints, scenario.timeout)
    gateway = None
    if counters is not None and first is not None:
        last = await counters()
        gateway = {k: v - first.get(k, 0) for k, v in last.items()}
    return Outcome(scenario, list(results.values()), before, after, gateway)

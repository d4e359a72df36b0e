"""Record a scenario from live traffic: a relay in front of payfront that writes down each line.

Every client connection becomes a conversation: each line the client sends is a step, and the lines
payfront answered before the client's next line are that step's expectations (so a client that
pipelines requests gets its replies attached to the last line it had sent: fine for replay, which
sends one line at a time). A conversation that started after others had ended waits for them
(``after``), which keeps the order that mattered. The ledger is asked for its balances when
recording starts (the scenario's accounts) and when it stops (the expected final balances).
Passwords come from successful ``LOGIN`` lines; an account nobody logged into gets a placeholder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import structlog
import trio
import yaml

from vproxy.scenario._runner import Endpoints, LedgerState, Opener, read_ledger

log = structlog.get_logger("vproxy.record")

_RUN = re.compile(r"(.)\1{15,}")  # 16 or more of one character: written as ${C*N}


@dataclass
class _Step:
    send: str
    replies: list[str] = field(default_factory=list)


@dataclass
class Recorded:
    """One recorded client connection."""

    name: str
    steps: list[_Step] = field(default_factory=list)
    closed_by_server: bool = False
    after: list[str] = field(default_factory=list)
    ended: bool = False


def _compact(text: str) -> str:
    return _RUN.sub(lambda m: f"${{{m.group(1)}*{len(m.group(0))}}}", text)


class Recorder:
    """The recording relay.

    Args:
        upstream: opens a connection to payfront for each client.
        endpoints: used for the ledger audit (``DUMP``) at start and stop.
    """

    def __init__(self, upstream: Opener, endpoints: Endpoints) -> None:
        self._upstream = upstream
        self._endpoints = endpoints
        self.conversations: list[Recorded] = []
        self.before: LedgerState | None = None
        self.finished = 0
        self._changed = trio.Condition()

    async def start(self) -> None:
        """Read the ledger's initial balances; UnreachableError if it cannot be audited."""
        self.before = await read_ledger(self._endpoints)

    async def wait_finished(self, count: int) -> None:
        """Return once ``count`` client connections have ended."""
        async with self._changed:
            while self.finished < count:
                await self._changed.wait()

    async def handle(self, client: trio.SocketStream) -> None:
        """Relay one client connection to payfront and record it (a ``serve_tcp`` handler)."""
        conv = Recorded(f"c{len(self.conversations) + 1}",
                        after=[c.name for c in self.conversations if c.ended])
        self.conversations.append(conv)
        try:
            server = await self._upstream()
        except OSError as exc:
            log.warning("payfront unreachable; client dropped", conversation=conv.name,
                        error=str(exc))
            await client.aclose()
            conv.ended = True
            return
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, server, conv, True, nursery.cancel_scope)
            nursery.start_soon(self._pump, server, client, conv, False, nursery.cancel_scope)
        conv.ended = True
        async with self._changed:
            self.finished += 1
            self._changed.notify_all()

    async def _pump(self, src: trio.abc.Stream, dst: trio.abc.Stream, conv: Recorded,
                    from_client: bool, scope: trio.CancelScope) -> None:
        buf = bytearray()
        try:
            while chunk := await src.receive_some(65536):
                await dst.send_all(chunk)
                buf += chunk
                while (nl := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:nl]).rstrip(b"\r").decode("latin-1")
                    del buf[: nl + 1]
                    if from_client:
                        conv.steps.append(_Step(line))
                    elif conv.steps:
                        conv.steps[-1].replies.append(line)
            if not from_client:
                conv.closed_by_server = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()  # either side closing ends the recorded conversation

    async def scenario_yaml(self, name: str) -> str:
        """The recorded scenario as YAML (asks the ledger for the final balances)."""
        assert self.before is not None, "start() first"
        after = await read_ledger(self._endpoints)
        passwords: dict[str, str] = {}
        for conv in self.conversations:
            for step in conv.steps:
                words = step.send.split(" ")
                if len(words) == 3 and words[0] == "LOGIN" and \
                        step.replies[:1] == [f"OK welcome {words[1]}"]:
                    passwords[words[1]] = words[2]
        doc: dict[str, object] = {
            "scenario": name,
            "description": f"recorded by vproxy record: {len(self.conversations)} client "
                           "connections; mark attacks with kind: hostile",
            "accounts": {k: {"password": passwords.get(k, f"unknown-{k}"), "balance": v}
                         for k, v in self.before.balances.items()},
            "conversations": self._conversations(),
            "ledger": dict(after.balances),
        }
        return yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=False)

    def _conversations(self) -> list[dict[str, object]]:
        kept = {c.name: c for c in self.conversations if c.steps}
        out = []
        for conv in kept.values():
            deps = {d for d in conv.after if d in kept}
            # Only the direct predecessors: a dependency that another one already waits for is
            # implied (keeps recordings of many connections readable).
            implied = {x for d in deps for x in kept[d].after}
            out.append(self._conversation(conv, sorted(deps - implied, key=conv.after.index)))
        return out

    @staticmethod
    def _conversation(conv: Recorded, after: list[str]) -> dict[str, object]:
        steps: list[dict[str, object]] = []
        for i, step in enumerate(conv.steps):
            item: dict[str, object] = {"send": _compact(step.send)}
            if step.replies:
                item["expect"] = [_compact(r) for r in step.replies]
            if conv.closed_by_server and i == len(conv.steps) - 1:
                item["closed"] = True
            steps.append(item)
        out: dict[str, object] = {"name": conv.name}
        if after:
            out["after"] = after
        out["steps"] = steps
        return out

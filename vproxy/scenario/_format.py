"""The scenario file (YAML): accounts, client conversations with expected replies, final balances.

Parsed from PyYAML's node tree rather than from plain Python objects so that every complaint names
the file and line of the offending node. ``docs/scenarios.md`` is the reference for the format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

Kind = Literal["legit", "hostile"]
_REPEAT = re.compile(r"\$\{(.)\*(\d{1,5})\}")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,31}")


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message starts with ``file:line:``."""


@dataclass(frozen=True, slots=True)
class Expect:
    """One expected reply line: equal to ``text``, or (``regex``) fully matching it."""

    text: str
    regex: bool = False

    def matches(self, line: str) -> bool:
        return re.fullmatch(self.text, line) is not None if self.regex else line == self.text

    def __str__(self) -> str:
        return f"/{self.text}/" if self.regex else repr(self.text)


@dataclass(frozen=True, slots=True)
class Step:
    """Send one line (without its newline), then read one reply line per ``expect``."""

    send: str
    expect: tuple[Expect, ...]
    closed: bool  # the server closes the connection after the expected lines
    line: int     # where the step is written, for failure messages


@dataclass(frozen=True, slots=True)
class Conversation:
    """One client connection: its steps run in order; ``after`` names conversations to wait for."""

    name: str
    kind: Kind
    steps: tuple[Step, ...]
    after: tuple[str, ...]
    line: int


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    password: str
    balance: int


@dataclass(frozen=True, slots=True)
class Scenario:
    """A whole scenario file."""

    name: str
    description: str
    path: str
    accounts: tuple[Account, ...]
    conversations: tuple[Conversation, ...]
    final_balances: dict[str, int] | None  # None: only conservation is checked
    timeout: float                         # seconds to wait for any one reply line


def expand(text: str) -> str:
    """Expand ``${A*200}`` (a character repeated) so hostile payloads stay readable in YAML."""
    return _REPEAT.sub(lambda m: m.group(1) * int(m.group(2)), text)


class _Reader:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, node: yaml.Node | None, message: str) -> ScenarioError:
        line = node.start_mark.line + 1 if node is not None else 1
        return ScenarioError(f"{self.path}:{line}: {message}")

    def mapping(self, node: yaml.Node, what: str, required: set[str], optional: set[str]
                ) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        out: dict[str, yaml.Node] = {}
        for key, value in node.value:
            name = self.scalar(key, f"a key of {what}")
            if name not in required | optional:
                known = ", ".join(sorted(required | optional))
                raise self.fail(key, f"unknown key {name!r} in {what} (known: {known})")
            if name in out:
                raise self.fail(key, f"key {name!r} given twice in {what}")
            out[name] = value
        missing = sorted(required - out.keys())
        if missing:
            raise self.fail(node, f"{what} lacks {', '.join(missing)}")
        return out

    def scalar(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"{what} must be a single value")
        return str(node.value)

    def integer(self, node: yaml.Node, what: str) -> int:
        text = self.scalar(node, what)
        try:
            return int(text)
        except ValueError:
            raise self.fail(node, f"{what} must be a whole number, not {text!r}") from None

    def name(self, node: yaml.Node, what: str) -> str:
        text = self.scalar(node, what)
        if not _NAME.fullmatch(text):
            raise self.fail(node, f"{what} {text!r} must be 1-31 letters, digits, '_', '.', '-'")
        return text

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        return [node]  # a single item may be written without the list brackets

    def expect(self, node: yaml.Node) -> Expect:
        if isinstance(node, yaml.MappingNode):
            fields = self.mapping(node, "an expected line", {"match"}, set())
            pattern = self.scalar(fields["match"], "match")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise self.fail(fields["match"], f"bad regular expression {pattern!r}: {exc}"
                                ) from None
            return Expect(pattern, regex=True)
        return Expect(expand(self.scalar(node, "an expected line")))

    def step(self, node: yaml.Node) -> Step:
        fields = self.mapping(node, "a step", {"send"}, {"expect", "closed"})
        closed = fields.get("closed")
        closed_flag = False
        if closed is not None:
            text = self.scalar(closed, "closed").lower()
            if text not in ("true", "false"):
                raise self.fail(closed, "closed must be true or false")
            closed_flag = text == "true"
        expects = tuple(self.expect(n) for n in self.sequence(fields["expect"], "expect")) \
            if "expect" in fields else ()
        send = expand(self.scalar(fields["send"], "send"))
        if "\n" in send:
            raise self.fail(fields["send"], "send is one line; use one step per line")
        return Step(send, expects, closed_flag, node.start_mark.line + 1)

    def conversation(self, node: yaml.Node) -> Conversation:
        fields = self.mapping(node, "a conversation", {"name", "steps"}, {"kind", "after"})
        kind = self.scalar(fields["kind"], "kind") if "kind" in fields else "legit"
        if kind not in ("legit", "hostile"):
            raise self.fail(fields["kind"], f"kind must be legit or hostile, not {kind!r}")
        steps = tuple(self.step(n) for n in self.sequence(fields["steps"], "steps"))
        if not steps:
            raise self.fail(fields["steps"], "a conversation needs at least one step")
        after = tuple(self.name(n, "after") for n in self.sequence(fields["after"], "after")) \
            if "after" in fields else ()
        return Conversation(self.name(fields["name"], "conversation name"), kind,  # type: ignore[arg-type]
                            steps, after, node.start_mark.line + 1)

    def account(self, key: yaml.Node, value: yaml.Node) -> Account:
        fields = self.mapping(value, "an account", {"password", "balance"}, set())
        password = self.scalar(fields["password"], "password")
        if not password or " " in password or ":" in password:
            raise self.fail(fields["password"], "a password is one word without ':'")
        balance = self.integer(fields["balance"], "balance")
        if balance < 0:
            raise self.fail(fields["balance"], "a balance cannot be negative")
        return Account(self.name(key, "account name"), password, balance)


def parse(text: str, path: str = "<scenario>") -> Scenario:
    """Parse scenario YAML.

    Args:
        text: the file's content.
        path: the name used in error messages.

    Returns:
        The Scenario.

    Error handling:
        Any problem (YAML syntax, unknown key, wrong type, unknown conversation in ``after``, a
        cycle, a final balance for an unknown account) raises ScenarioError naming file and line.
    """
    r = _Reader(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        raise ScenarioError(f"{path}:{line}: not valid YAML: {exc.problem}") from None
    if root is None:
        raise ScenarioError(f"{path}:1: the file is empty; see docs/scenarios.md for the format")
    top = r.mapping(root, "the scenario", {"scenario", "accounts", "conversations"},
                    {"description", "ledger", "timeout"})
    if not isinstance(top["accounts"], yaml.MappingNode) or not top["accounts"].value:
        raise r.fail(top["accounts"], "accounts must map at least one name to {password, balance}")
    accounts = tuple(r.account(k, v) for k, v in top["accounts"].value)
    names = {a.name for a in accounts}
    convs = tuple(r.conversation(n) for n in r.sequence(top["conversations"], "conversations"))
    seen: set[str] = set()
    for conv in convs:
        if conv.name in seen:
            raise ScenarioError(f"{path}:{conv.line}: conversation {conv.name!r} is defined twice")
        seen.add(conv.name)
    for conv in convs:
        for dep in conv.after:
            if dep not in seen:
                raise ScenarioError(f"{path}:{conv.line}: {conv.name!r} waits for unknown "
                                    f"conversation {dep!r}")
    _check_acyclic(convs, path)
    final = None
    if "ledger" in top:
        node = top["ledger"]
        if not isinstance(node, yaml.MappingNode):
            raise r.fail(node, "ledger must map account names to expected final balances")
        final = {}
        for k, v in node.value:
            name = r.name(k, "account name")
            if name not in names:
                raise r.fail(k, f"ledger names {name!r}, which is not in accounts")
            final[name] = r.integer(v, f"final balance of {name}")
    timeout = 5.0
    if "timeout" in top:
        try:
            timeout = float(r.scalar(top["timeout"], "timeout"))
        except ValueError:
            raise r.fail(top["timeout"], "timeout is a number of seconds") from None
        if not 0 < timeout <= 120:
            raise r.fail(top["timeout"], "timeout must be between 0 and 120 seconds")
    description = r.scalar(top["description"], "description") if "description" in top else ""
    return Scenario(r.name(top["scenario"], "scenario name"), description.strip(), path, accounts,
                    convs, final, timeout)


def _check_acyclic(convs: tuple[Conversation, ...], path: str) -> None:
    # Kahn's algorithm: whatever cannot be ordered waits, directly or not, on itself.
    waiting = {c.name: set(c.after) for c in convs}
    ready = [n for n, deps in waiting.items() if not deps]
    while ready:
        done = ready.pop()
        for name, deps in waiting.items():
            if done in deps:
                deps.discard(done)
                if not deps:
                    ready.append(name)
    stuck = [c for c in convs if waiting[c.name]]
    if stuck:
        names = ", ".join(c.name for c in stuck)
        raise ScenarioError(f"{path}:{stuck[0].line}: conversations wait for each other in a cycle "
                            f"({names}); remove one of their 'after' entries")


def load(path: str | Path) -> Scenario:
    """Read and parse a scenario file; an unreadable file raises ScenarioError naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}:1: cannot read the scenario: {exc}") from None
    return parse(text, str(path))

"""How the demo talks to the operator: numbered steps, indented details, a summary at the end."""

from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

_TTY = sys.stdout.isatty()
#: words that mark the log lines of a heal (healer and gateway logs)
LOG_WORDS = ("abort", '"heal"', "virtualiz", "rollback", "replace", "fault", "inject")


def _paint(text: str, code: str) -> str:
    return f"\033[{code}m{text}\033[0m" if _TTY else text


@dataclass
class Narrator:
    """Prints ``[n/total] title`` steps and remembers each outcome for the summary."""

    total: int
    step_no: int = 0
    outcomes: list[tuple[str, str, str]] = field(default_factory=list)  # (title, status, note)

    def step(self, title: str, why: str) -> None:
        self.step_no += 1
        print(f"\n{_paint(f'[{self.step_no}/{self.total}]', '1;36')} {_paint(title, '1')}")
        print(textwrap.fill(why, width=100, initial_indent="      ", subsequent_indent="      "))
        self._title = title

    def detail(self, text: str) -> None:
        for line in text.splitlines() or [""]:
            print(f"      {line}")

    def ok(self, note: str) -> None:
        print(f"      {_paint('ok', '32')}: {note}")
        self.outcomes.append((self._title, "ok", note))

    def failed(self, note: str) -> None:
        print(f"      {_paint('FAILED', '1;31')}: {note}")
        self.outcomes.append((self._title, "FAILED", note))

    def skipped(self, note: str) -> None:
        print(f"      {_paint('not available', '33')}: {note}")
        self.outcomes.append((self._title, "not available", note))

    def summary(self, headline: str) -> None:
        print(f"\n{_paint('Summary', '1')}: {headline}")
        for title, status, note in self.outcomes:
            print(f"  {status:>13}  {title}: {note}")


def quote(data: bytes, limit: int = 160) -> str:
    """Bytes as an operator reads them: the first line(s), escaped, cut at ``limit``."""
    text = data[:limit].decode("latin-1").replace("\r", "\\r").replace("\n", "\\n")
    return text + (f" ... ({len(data)} bytes)" if len(data) > limit else f" ({len(data)} bytes)")


def log_lines(path: Path, words: tuple[str, ...], limit: int = 8) -> list[str]:
    """Log lines of ``path`` (JSON lines or text) that mention one of ``words``, compacted."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    picked = []
    for line in lines:
        if not any(w in line.lower() for w in words):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            picked.append(line.strip()[:200])
            continue
        event = rec.pop("event", "")
        rec.pop("timestamp", None)
        level = rec.pop("level", "")
        fields = " ".join(f"{k}={v}" for k, v in rec.items())
        picked.append(f"{level:<7} {event} {fields}"[:200])
    return picked[-limit:]

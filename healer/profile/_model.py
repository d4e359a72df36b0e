"""The behaviour-profile file: what is kept per function, versioned, loadable, mergeable.

A profile aggregates the calls it was built from instead of storing them (cheap to store: the size
grows with the number of distinct windows and values, not with the length of the run):

- ``values``: every return value seen, in first-seen order (first-seen and round-robin scheduling
  need that order), with its count;
- ``contexts``: execution-window context (most recent first, width ``window``) -> value -> count;
- ``args``: distinct (argument values, return value) pairs with counts, capped per function
  (argument-closest scheduling);
- ``successors``: return value -> the function called next -> count (post-evaluation of a heal).

``ret_bits`` says how return values were read (32: sign-extended from 32 bits, C ``int``
functions); the agent reads them the same way when the profile is loaded.

File format: JSON, ``{"format": "sead-profile", "version": 1, "window": N, "functions": {...}}``;
a name ending in ``.gz`` is gzip-compressed.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "sead-profile"
VERSION = 1
MAX_ARG_SAMPLES = 64
"""Distinct argument tuples kept per function: enough for argument-closest, bounded in size."""

Window = tuple[str, ...]


class ProfileError(Exception):
    """A profile file cannot be read or two profiles cannot be combined; the message says why."""


@dataclass
class FunctionProfile:
    """Everything learned about one function (its name, or ``0x...`` address if stripped)."""

    name: str
    calls: int = 0
    values: dict[int, int] = field(default_factory=dict)  # insertion order == first-seen order
    contexts: dict[Window, Counter[int]] = field(default_factory=dict)
    args: dict[tuple[int, ...], Counter[int]] = field(default_factory=dict)
    successors: dict[int, Counter[str]] = field(default_factory=dict)

    def add_call(self, window: Window, args: tuple[int, ...], value: int) -> None:
        """Account one returned call of this function."""
        self.calls += 1
        self.values[value] = self.values.get(value, 0) + 1
        self.contexts.setdefault(window, Counter())[value] += 1
        if args in self.args or len(self.args) < MAX_ARG_SAMPLES:
            self.args.setdefault(args, Counter())[value] += 1

    def add_successor(self, value: int, next_name: str) -> None:
        """Account that ``next_name`` was the first call after this function returned ``value``."""
        self.successors.setdefault(value, Counter())[next_name] += 1

    def merge(self, other: FunctionProfile) -> None:
        """Add ``other``'s observations (values keep this profile's first-seen order)."""
        self.calls += other.calls
        for v, n in other.values.items():
            self.values[v] = self.values.get(v, 0) + n
        for w, c in other.contexts.items():
            self.contexts.setdefault(w, Counter()).update(c)
        for a, c in other.args.items():
            if a in self.args or len(self.args) < MAX_ARG_SAMPLES:
                self.args.setdefault(a, Counter()).update(c)
        for v, c2 in other.successors.items():
            self.successors.setdefault(v, Counter()).update(c2)

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "values": [[v, n] for v, n in self.values.items()],
            "contexts": [[list(w), _counts(c)] for w, c in self.contexts.items()],
            "args": [[list(a), _counts(c)] for a, c in self.args.items()],
            "successors": {str(v): dict(c) for v, c in self.successors.items()},
        }

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any]) -> FunctionProfile:
        return cls(
            name=name,
            calls=int(d["calls"]),
            values={int(v): int(n) for v, n in d["values"]},
            contexts={tuple(w): _counter(c) for w, c in d["contexts"]},
            args={tuple(int(x) for x in a): _counter(c) for a, c in d["args"]},
            successors={int(v): Counter({k: int(n) for k, n in c.items()})
                        for v, c in d["successors"].items()},
        )


@dataclass
class Profile:
    """A behaviour profile: per-function observations with execution windows of width ``window``."""

    window: int
    functions: dict[str, FunctionProfile] = field(default_factory=dict)
    runs: int = 1
    ret_bits: int = 64  # return values were sign-extended from this width (32: C int functions)
    # how the agent uses it (``healer profile set``): strategy, strategies, anomaly_width,
    # anomaly_action; agent_tables() reads them when its caller gives none
    settings: dict[str, Any] = field(default_factory=dict)

    def function(self, name: str) -> FunctionProfile:
        """The entry for ``name``, created empty if it has none yet."""
        fp = self.functions.get(name)
        if fp is None:
            fp = self.functions[name] = FunctionProfile(name)
        return fp

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "window": self.window, "runs": self.runs,
                "ret_bits": self.ret_bits, "settings": self.settings,
                "functions": {n: fp.to_json() for n, fp in sorted(self.functions.items())}}

    @classmethod
    def from_json(cls, d: Any, origin: str = "profile") -> Profile:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ProfileError(f"{origin} is not a sead profile (no \"format\": \"{FORMAT}\"); "
                               "make one with 'healer profile ... --out FILE'")
        if d.get("version") != VERSION:
            raise ProfileError(f"{origin} has profile version {d.get('version')!r}, this healer "
                               f"reads version {VERSION}; record it again with this healer")
        try:
            return cls(window=int(d["window"]), runs=int(d.get("runs", 1)),
                       ret_bits=int(d.get("ret_bits", 64)), settings=dict(d.get("settings", {})),
                       functions={n: FunctionProfile.from_json(n, f)
                                  for n, f in d["functions"].items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"{origin} is damaged ({type(exc).__name__}: {exc}); "
                               "record it again") from None


def merge(a: Profile, b: Profile) -> Profile:
    """A new profile holding the observations of both (e.g. several training runs); the settings
    are ``a``'s.

    Error handling:
        Profiles with different window widths raise ProfileError: their contexts are not comparable.
    """
    if a.window != b.window:
        raise ProfileError(f"cannot merge profiles with window widths {a.window} and {b.window}; "
                           "record both with the same --window")
    if a.ret_bits != b.ret_bits:
        raise ProfileError(f"cannot merge profiles recorded with --ret-width {a.ret_bits} and "
                           f"{b.ret_bits}; record both with the same width")
    out = Profile.from_json(a.to_json())
    for name, fp in b.functions.items():
        out.function(name).merge(fp)
    out.runs = a.runs + b.runs
    return out


def save(profile: Profile, path: str | Path) -> None:
    """Write ``profile`` to ``path`` (gzip if the name ends in ``.gz``).

    Error handling:
        OSError becomes ProfileError naming the file.
    """
    path = Path(path)
    data = json.dumps(profile.to_json(), separators=(",", ":")).encode()
    try:
        path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    except OSError as exc:
        raise ProfileError(f"cannot write profile {path}: {exc.strerror}") from None


def load(path: str | Path) -> Profile:
    """Read a profile written by ``save``.

    Error handling:
        A missing/unreadable file, bad JSON, another format or version raise ProfileError.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        d = json.loads(raw)
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror}") from None
    except (ValueError, EOFError) as exc:
        raise ProfileError(f"{path} is not a readable profile ({exc}); record it again") from None
    return Profile.from_json(d, origin=str(path))


def _counts(c: Counter[int]) -> dict[str, int]:
    return {str(v): n for v, n in c.items()}


def _counter(d: dict[str, int]) -> Counter[int]:
    return Counter({int(v): int(n) for v, n in d.items()})

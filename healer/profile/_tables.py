"""The profile as the agent consumes it (``config.profile`` of ``rpc.exports.init``).

The agent chooses values on the faulting thread, in the target, with no round trip to the host, so
the host pre-digests the profile into lookup tables: values in first-seen order, every window prefix
(1..width) with its values ordered most frequent first, argument samples, successors per value, and
the set of known windows at the anomaly width. Values travel as decimal strings (64-bit safe).

A return value that is an address (``|v| >= 2**32``: pointers into the heap, stack or a mapping)
belonged to the training process only; replayed in another process it points nowhere. The tables
carry such values as 0 (NULL), the one pointer every process shares: SEV's value for a function
that returned addresses in training is NULL, as vanilla error virtualization's for pointers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from healer.profile._model import Profile

STRATEGIES = ("first", "round-robin", "delayed-round-robin", "argument-closest", "context")
"""SEV return-value scheduling strategies (SEV paper, section 3.2), selectable per function."""


def check_settings(strategy: str, strategies: dict[str, str], anomaly_action: str) -> None:
    """Raise ValueError naming the accepted values for an unknown strategy or anomaly action."""
    for chosen in [strategy, *strategies.values()]:
        if chosen not in STRATEGIES:
            raise ValueError(f"unknown scheduling strategy {chosen!r}; "
                             f"use one of {', '.join(STRATEGIES)}")
    if anomaly_action not in ("log", "supervise"):
        raise ValueError(f"unknown anomaly action {anomaly_action!r}; use log or supervise")


def agent_tables(profile: Profile, *, strategy: str | None = None,
                 strategies: dict[str, str] | None = None, anomaly_width: int | None = None,
                 anomaly_action: str | None = None,
                 fixed: int | Mapping[str, int] | None = None) -> dict[str, Any]:
    """``config.profile`` for the agent.

    Args:
        profile: the trained profile.
        strategy: default scheduling strategy; ``strategies`` overrides it per function.
        anomaly_width: windows of this many functions never seen in training raise an ``anomaly``
            event (0: no anomaly detection).
        anomaly_action: ``log`` or ``supervise`` (also ask the coverage module to supervise it).
        fixed: answer this value for every repair instead of a SEV value (vanilla error
            virtualization through the same agent path; None: SEV); a mapping gives the value per
            function (e.g. by return type) and leaves the functions it does not name to SEV.
        An argument left out comes from the profile's settings (``healer profile set``), else
        ``context``, no per-function strategies, 0, ``log``, SEV.

    Error handling:
        An unknown strategy or action raises ValueError naming the accepted ones.
    """
    st = profile.settings
    strategy = strategy if strategy is not None else st.get("strategy", "context")
    strategies = dict(strategies if strategies is not None else st.get("strategies", {}))
    anomaly_width = anomaly_width if anomaly_width is not None else st.get("anomaly_width", 0)
    anomaly_action = (anomaly_action if anomaly_action is not None
                      else st.get("anomaly_action", "log"))
    fixed = fixed if fixed is not None else st.get("fixed")
    check_settings(strategy, strategies, anomaly_action)
    functions: dict[str, Any] = {}
    for name, fp in profile.functions.items():
        prefixes: dict[str, Counter[int]] = {}
        for w, c in fp.contexts.items():
            for s in range(1, len(w) + 1):
                prefixes.setdefault("|".join(w[:s]), Counter()).update(c)
        succ: dict[str, set[str]] = {}
        for v, after in fp.successors.items():
            succ.setdefault(_portable(v), set()).update(after)
        functions[name] = {
            "values": list(dict.fromkeys(_portable(v) for v in fp.values)),
            "ctx": {k: _ranked(c) for k, c in prefixes.items()},
            "args": [[[str(a) for a in args], _ranked(c)[0][0]] for args, c in fp.args.items()],
            "succ": {v: sorted(c) for v, c in succ.items()},
            "windows": sorted({"|".join(w[:anomaly_width]) for w in fp.contexts})
            if anomaly_width else [],
        }
    tables = {"window": profile.window, "retBits": profile.ret_bits,
              "strategy": strategy, "strategies": strategies,
              "anomaly": {"width": anomaly_width, "action": anomaly_action},
              "functions": functions}
    if isinstance(fixed, Mapping):
        tables["fixed"] = {fn: str(int(v)) for fn, v in fixed.items()}
    elif fixed is not None:
        tables["fixed"] = str(int(fixed))
    return tables


def _portable(value: int) -> str:
    """``value`` as the agent may replay it in another process: an address becomes 0 (NULL)."""
    return "0" if abs(value) >= 1 << 32 else str(value)


def _ranked(counts: Counter[int]) -> list[list[Any]]:
    """[[value, count], ...] with addresses merged into 0, most frequent first (ties: smallest)."""
    merged: Counter[str] = Counter()
    for v, n in counts.items():
        merged[_portable(v)] += n
    return [[v, n] for v, n in sorted(merged.items(), key=lambda vn: (-vn[1], int(vn[0])))]

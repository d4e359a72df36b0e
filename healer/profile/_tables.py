"""The profile as the agent consumes it (``config.profile`` of ``rpc.exports.init``).

The agent chooses values on the faulting thread, in the target, with no round trip to the host, so
the host pre-digests the profile into lookup tables: values in first-seen order, every window prefix
(1..width) with its values ordered most frequent first, argument samples, successors per value, and
the set of known windows at the anomaly width. Values travel as decimal strings (64-bit safe).
"""

from __future__ import annotations

from collections import Counter
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
                 anomaly_action: str | None = None, fixed: int | None = None) -> dict[str, Any]:
    """``config.profile`` for the agent.

    Args:
        profile: the trained profile.
        strategy: default scheduling strategy; ``strategies`` overrides it per function.
        anomaly_width: windows of this many functions never seen in training raise an ``anomaly``
            event (0: no anomaly detection).
        anomaly_action: ``log`` or ``supervise`` (also ask the coverage module to supervise it).
        fixed: answer this value for every repair instead of a SEV value (vanilla error
            virtualization through the same agent path; None: SEV).
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
        functions[name] = {
            "values": [str(v) for v in fp.values],
            "ctx": {k: [[str(v), n] for v, n in sorted(c.items(), key=lambda vn: (-vn[1], vn[0]))]
                    for k, c in prefixes.items()},
            "args": [[[str(a) for a in args], str(min(c, key=lambda v: (-c[v], v)))]
                     for args, c in fp.args.items()],
            "succ": {str(v): sorted(c) for v, c in fp.successors.items()},
            "windows": sorted({"|".join(w[:anomaly_width]) for w in fp.contexts})
            if anomaly_width else [],
        }
    tables = {"window": profile.window, "retBits": profile.ret_bits,
              "strategy": strategy, "strategies": strategies,
              "anomaly": {"width": anomaly_width, "action": anomaly_action},
              "functions": functions}
    if fixed is not None:
        tables["fixed"] = str(int(fixed))
    return tables

"""The short report of a scenario run: read at a glance, one fact a line."""

from __future__ import annotations

from vproxy.scenario._runner import Outcome


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def render(outcome: Outcome, *, verbose: bool = False) -> str:
    """The report as text (no trailing newline).

    Args:
        outcome: what ``run_scenario`` returned (plus gateway counters and notes, if any).
        verbose: add each failed conversation's transcript.
    """
    s = outcome.scenario
    convs = outcome.conversations
    legit = [c for c in convs if c.kind == "legit"]
    hostile = [c for c in convs if c.kind == "hostile"]
    before, after = outcome.before, outcome.after
    lines = [
        f"scenario {s.name} ({s.path}): {'PASS' if outcome.passed else 'FAIL'}",
        f"  conversations   {len(convs)}: legit {sum(c.ok for c in legit)}/{len(legit)} completed, "
        f"hostile {sum(c.ok for c in hostile)}/{len(hostile)} refused",
        f"  steps           {sum(c.passed for c in convs)}/{sum(c.steps for c in convs)} "
        "as expected",
        f"  transfers       {after.applied - before.applied} applied by the ledger, "
        f"{sum(c.done for c in convs)} reported done; applied once: {_yes(outcome.applied_once)}",
        f"  money conserved {_yes(outcome.money_conserved)} (total {before.total} before, "
        f"{after.total} after, {after.pending} prepared left open)",
    ]
    if s.final_balances is not None:
        lines.append(f"  final balances  {'as expected' if outcome.balances_match else 'WRONG'}: "
                     + ", ".join(f"{k}={v}" for k, v in sorted(after.balances.items())))
    g = outcome.gateway
    if g is None:
        lines.append("  gateway         none (payfront reached directly)")
    else:
        lines.append(f"  gateway         commits {g.get('committed', 0)}, "
                     f"aborts {g.get('aborted', 0)}; bytes held {g.get('bytes_held', 0)}, "
                     f"released {g.get('bytes_released', 0)}, "
                     f"discarded {g.get('bytes_discarded', 0)}")
    lines.extend(f"  note            {n}" for n in outcome.notes)
    for c in convs:
        if c.failure is not None:
            lines.append(f"  FAILED {c.kind} {c.name}: {c.failure}")
            if verbose:
                lines.extend(f"      {t}" for t in c.transcript)
    if not outcome.balances_match and s.final_balances is not None:
        wrong = {k: (v, after.balances.get(k)) for k, v in s.final_balances.items()
                 if after.balances.get(k) != v}
        lines.append("  WRONG balances  " + ", ".join(f"{k}: want {w}, got {g_}"
                                                      for k, (w, g_) in sorted(wrong.items())))
    return "\n".join(lines)

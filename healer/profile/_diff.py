"""Regression testing: what changed between two profiles (two builds, or two runs)."""

from __future__ import annotations

from dataclasses import dataclass

from healer.profile._model import FunctionProfile, Profile


@dataclass(frozen=True, slots=True)
class FunctionChange:
    """One function's differences; ``significant`` when beyond the diff's threshold."""

    name: str
    kind: str  # 'added', 'removed' or 'changed'
    values_added: tuple[int, ...] = ()
    values_removed: tuple[int, ...] = ()
    context_distance: float = 0.0  # 1 - Jaccard similarity of the context sets
    frequency_change: float = 0.0  # relative change of calls per run
    significant: bool = True


def diff(old: Profile, new: Profile, *, threshold: float = 0.2,
         context_width: int = 3) -> list[FunctionChange]:
    """Functions whose return-value sets, contexts or call frequencies differ.

    Args:
        old, new: the profiles to compare.
        threshold: a context distance or relative call-frequency change above this is significant;
            a changed return-value set and an added or removed function always are.
        context_width: contexts are compared on their first N functions (full windows are too
            specific to compare across builds).

    Returns:
        Every function that differs at all, sorted by name (significant or not).
    """
    out = []
    for name in sorted(set(old.functions) | set(new.functions)):
        a, b = old.functions.get(name), new.functions.get(name)
        if a is None or b is None:
            out.append(FunctionChange(name, "added" if a is None else "removed"))
            continue
        va, vb = set(a.values), set(b.values)
        ctx = _distance(_contexts(a, context_width), _contexts(b, context_width))
        fa, fb = a.calls / old.runs, b.calls / new.runs
        freq = abs(fb - fa) / max(fa, fb) if max(fa, fb) else 0.0
        if va == vb and ctx == 0.0 and freq == 0.0:
            continue
        out.append(FunctionChange(
            name, "changed", tuple(sorted(vb - va)), tuple(sorted(va - vb)), ctx, freq,
            significant=va != vb or ctx > threshold or freq > threshold))
    return out


def _contexts(fp: FunctionProfile, width: int) -> set[tuple[str, ...]]:
    return {w[:width] for w in fp.contexts}


def _distance(a: set[tuple[str, ...]], b: set[tuple[str, ...]]) -> float:
    union = a | b
    return 1.0 - len(a & b) / len(union) if union else 0.0

"""The return-value predictability score (STEM paper, section 6 and Figure 5).

For a function F and a window size S: every context window of size s <= S that leads to F gets an
individual score, the relative frequency of that window among all windows leading to F (over all
return values). The score of F is the sum of the individual scores of the windows that lead to a
single return value, counting only the smallest such windows: once a window (say ``A``) predicts a
value, its extensions (``KA``, ``LA`` ...) add nothing. The score lies in [0, 1] and cannot fall as
S grows. docs/profiles.md works through the Figure 5 example.
"""

from __future__ import annotations

from collections import defaultdict

from healer.profile._model import FunctionProfile, Window


def predictability(fp: FunctionProfile, size: int) -> float:
    """The score of ``fp`` for windows up to ``size`` functions (0.0 if never called)."""
    return predictability_by_size(fp, size)[-1] if size > 0 else 0.0


def predictability_by_size(fp: FunctionProfile, size: int) -> list[float]:
    """Scores for window sizes 1..size (element i is the score for size i + 1)."""
    total = sum(sum(c.values()) for c in fp.contexts.values())
    if total == 0:
        return [0.0] * size
    unresolved: list[tuple[Window, dict[int, int]]] = [(w, dict(c)) for w, c in fp.contexts.items()]
    score = 0.0
    out = []
    for s in range(1, size + 1):
        groups: dict[Window, list[tuple[Window, dict[int, int]]]] = defaultdict(list)
        for inst in unresolved:
            groups[inst[0][:s]].append(inst)
        unresolved = []
        for members in groups.values():
            values = {v for _, c in members for v in c}
            if len(values) == 1:
                score += sum(n for _, c in members for n in c.values()) / total
            else:
                unresolved.extend(members)
        out.append(score)
    return out

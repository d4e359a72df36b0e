"""Return-value prediction from the execution-window context (conditional probability).

The predictor looks up the longest prefix of the current window (most recent function first) that
was seen in training and answers that prefix's most frequent return value; a window never seen at
any size falls back to the function's most frequent value. The agent's ``context`` scheduling
strategy (healer/agent/40_profile.js) makes the same choice from the tables of ``agent_tables``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection

from healer.profile._model import FunctionProfile, Profile, Window


class Predictor:
    """Trained on one function's contexts; ``predict(window)`` returns the most likely value."""

    def __init__(self, fp: FunctionProfile, width: int) -> None:
        self.width = width
        self._by_prefix: dict[Window, Counter[int]] = {}
        for w, c in fp.contexts.items():
            for s in range(1, min(width, len(w)) + 1):
                self._by_prefix.setdefault(w[:s], Counter()).update(c)
        self._fallback = Counter(fp.values).most_common(1)[0][0] if fp.values else None

    def predict(self, window: Window) -> int | None:
        for s in range(min(self.width, len(window)), 0, -1):
            c = self._by_prefix.get(window[:s])
            if c:
                return _most_common(c)
        return self._fallback


def accuracy(train: Profile, test: Profile, width: int,
             functions: Collection[str] | None = None) -> tuple[float, int]:
    """Fraction of the calls in ``test`` whose return value ``train`` predicts from their window.

    Args:
        functions: judge only these functions' calls (the others still shape the windows: e.g.
            library calls recorded for their context, not predicted); None: every function.

    Returns:
        (accuracy in [0, 1], number of calls predicted). Functions absent from ``train`` count as
        misses: an unseen function cannot be predicted.
    """
    hits = total = 0
    for name, fp in test.functions.items():
        if functions is not None and name not in functions:
            continue
        trained = train.functions.get(name)
        predictor = Predictor(trained, width) if trained else None
        for w, c in fp.contexts.items():
            guess = predictor.predict(w) if predictor else None
            n = sum(c.values())
            total += n
            hits += c.get(guess, 0) if guess is not None else 0
    return (hits / total if total else 0.0), total


def _most_common(c: Counter[int]) -> int:
    # ties go to the smallest value so that Python and the agent agree
    best = max(c.values())
    return min(v for v, n in c.items() if n == best)

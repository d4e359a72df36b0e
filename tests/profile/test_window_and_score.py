"""Execution windows (STEM Figure 4) and the predictability score (STEM Figure 5)."""

from collections import Counter

import pytest

from healer.profile import ContextTracker, FunctionProfile, predictability, predictability_by_size


def test_figure4_window_is_siblings_then_parents():
    # tree: 1 -> (2 -> (3, 4)), (5 -> (6 -> (7, [8])))
    t = ContextTracker(width=10)
    t.call("1")
    t.call("2")
    t.call("3")
    t.ret("3")
    t.call("4")
    t.ret("4")
    t.ret("2")
    t.call("5")
    t.call("6")
    t.call("7")
    t.ret("7")
    assert t.call("8") == ("7", "6", "5", "2", "1")


def test_window_is_cut_at_width_and_unwinds_unmatched_returns():
    t = ContextTracker(width=2)
    t.call("main")
    t.call("a")
    t.call("b")  # a never returns explicitly (longjmp-like): main's return unwinds it
    assert t.ret("main") == ((), ())
    assert t.call("main") == ("main",)  # the first main is now a previous sibling
    assert t.call("x") == ("main", "main")
    t.ret("x")
    t.call("y")
    t.ret("y")
    assert t.call("z") == ("y", "x")  # width 2: the parent no longer fits


def _figure5() -> FunctionProfile:
    """Our reconstruction of Figure 5 (docs/profiles.md): 20 calls of F, return values 0 and 1.

    Windows are written most recent first: ("B", "K") is the paper's KB -> F.
    """
    fp = FunctionProfile("F")
    calls = [
        (("A", "P"), 0, 2), (("A", "Q"), 0, 2),            # A: always 0         -> 4/20 at S1
        (("B", "K"), 1, 2), (("B", "L"), 0, 2), (("B", "M"), 1, 2),  # B mixed; KB LB MB unique
        (("C", "X", "P"), 0, 3), (("C", "X", "Q"), 1, 3),  # XC mixed; PXC QXC unique
        (("C", "Y", "R"), 0, 2),                           # YC mixed with YSC; RYC unique
        (("C", "Y", "S"), 0, 1), (("C", "Y", "S"), 1, 1),  # SYC: never unique
    ]
    for window, value, n in calls:
        fp.contexts.setdefault(window, Counter())[value] += n
        fp.values[value] = fp.values.get(value, 0) + n
        fp.calls += n
    return fp


def test_figure5_predictability_score():
    fp = _figure5()
    s1, s2, s3 = predictability_by_size(fp, 3)
    assert s1 == pytest.approx(0.2)  # only A: 4 of 20 windows, as in the caption
    assert s2 == pytest.approx(0.5)  # + KB, LB, MB (6/20); AF's extensions are not counted again
    assert s3 == pytest.approx(0.9)  # + PXC, QXC, RYC (8/20); SYC leads to 0 and 1
    assert predictability(fp, 4) == pytest.approx(0.9)


def test_score_of_a_function_with_one_value_is_one_and_of_none_is_zero():
    fp = FunctionProfile("g")
    fp.add_call(("a",), (), 5)
    fp.add_call(("b",), (), 5)
    assert predictability(fp, 1) == 1.0
    assert predictability(FunctionProfile("h"), 3) == 0.0

"""Profile files (version, save/load, merge), prediction, diff and the agent tables."""

import gzip
import json

import pytest

from healer.profile import (
    Predictor,
    Profile,
    ProfileBuilder,
    ProfileError,
    accuracy,
    agent_tables,
    diff,
    load,
    merge,
    save,
)


def _run(pattern: list[tuple[str, int]], repeat: int = 3) -> Profile:
    """main -> (f -> g returns v) for each (name, v) of the pattern."""
    b = ProfileBuilder(4)
    for _ in range(repeat):
        b.call(1, "main", (1,))
        for name, v in pattern:
            b.call(1, name, (v,))
            b.call(1, "g", (v * 10,))
            b.ret(1, "g", v)
            b.ret(1, name, 0)
        b.ret(1, "main", 0)
    return b.profile


def test_builder_records_values_contexts_args_successors():
    p = _run([("ok", 0), ("bad", -1)])
    g = p.functions["g"]
    assert list(g.values) == [0, -1]  # first-seen order
    assert g.calls == 6
    assert g.contexts[("ok", "main")] == {0: 1}  # first round: no previous sibling of main
    assert g.args[(-10,)] == {-1: 3}
    assert p.functions["ok"].successors[0] == {"bad": 3}


def test_save_load_roundtrip_plain_and_gzip(tmp_path):
    p = _run([("ok", 0), ("bad", -1)])
    for name in ("p.json", "p.json.gz"):
        save(p, tmp_path / name)
        assert load(tmp_path / name).to_json() == p.to_json()
    assert gzip.decompress((tmp_path / "p.json.gz").read_bytes())[:1] == b"{"


@pytest.mark.parametrize("content, words", [
    (b"not json", "not a readable profile"),
    (json.dumps({"format": "other"}).encode(), "not a sead profile"),
    (json.dumps({"format": "sead-profile", "version": 99}).encode(), "version 99"),
    (json.dumps({"format": "sead-profile", "version": 1, "window": 3,
                 "functions": {"f": {}}}).encode(), "damaged"),
])
def test_load_rejects_bad_files_with_a_reason(tmp_path, content, words):
    (tmp_path / "p").write_bytes(content)
    with pytest.raises(ProfileError, match=words):
        load(tmp_path / "p")
    with pytest.raises(ProfileError, match="cannot read"):
        load(tmp_path / "missing")


def test_merge_adds_counts_and_keeps_first_seen_order():
    a = _run([("ok", 0)], repeat=2)
    b = _run([("bad", -1), ("ok", 0)], repeat=1)
    m = merge(a, b)
    assert m.runs == 2
    assert list(m.functions["g"].values) == [0, -1]
    assert m.functions["g"].values == {0: 3, -1: 1}
    assert m.functions["ok"].calls == 3
    with pytest.raises(ProfileError, match="window widths"):
        merge(a, Profile(window=9))


def test_predictor_uses_the_longest_known_window():
    train = _run([("ok", 0), ("bad", -1)])
    g = train.functions["g"]
    pred = Predictor(g, 4)
    assert pred.predict(("bad", "ok")) == -1
    assert pred.predict(("ok", "main")) == 0
    assert pred.predict(("never",)) == 0  # fallback: the most frequent value
    acc, n = accuracy(train, _run([("ok", 0), ("bad", -1)], repeat=2), 4)
    assert (acc, n) == (1.0, 10)  # 2 x (main, ok, bad, g, g)


def test_diff_reports_changed_values_contexts_and_frequencies():
    old = _run([("ok", 0), ("bad", -1)])
    assert diff(old, old) == []
    new = _run([("ok", 0), ("bad", -2), ("extra", 0)])
    changes = {c.name: c for c in diff(old, new)}
    assert changes["extra"].kind == "added"
    assert changes["g"].values_added == (-2,) and changes["g"].values_removed == (-1,)
    assert changes["g"].significant
    more = _run([("ok", 0), ("bad", -1)], repeat=6)
    freq = {c.name: c for c in diff(old, more, threshold=0.2)}
    assert freq["g"].frequency_change == pytest.approx(0.5) and freq["g"].significant
    assert not {c.name: c for c in diff(old, more, threshold=0.6)}["g"].significant


def test_agent_tables_order_values_by_frequency_and_check_strategies():
    p = _run([("ok", 0), ("bad", -1), ("bad", -1)])
    t = agent_tables(p, strategy="first", strategies={"g": "context"}, anomaly_width=2)
    g = t["functions"]["g"]
    assert g["values"] == ["0", "-1"]
    assert g["ctx"]["bad"] == [["-1", 6]]
    assert "bad|bad" in g["windows"]
    with pytest.raises(ValueError, match="round-robin"):
        agent_tables(p, strategy="random")

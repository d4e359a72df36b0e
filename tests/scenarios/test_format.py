"""The scenario format: what it accepts, and errors that name file and line for what it refuses."""

from __future__ import annotations

import pytest

from vproxy import scenario as sc

GOOD = """\
scenario: tiny
accounts:
  alice: {password: pw, balance: 10}
  bob: {password: pw2, balance: 0}
conversations:
  - name: one
    steps:
      - send: LOGIN alice ${A*5}
        expect: [ERR denied, {match: "x+"}]
        closed: true
  - name: two
    kind: hostile
    after: one
    steps:
      send: PING
ledger: {alice: 10}
"""


def test_parses_steps_expectations_and_payload_expansion() -> None:
    s = sc.parse(GOOD, "good.yaml")
    assert [a.name for a in s.accounts] == ["alice", "bob"]
    one, two = s.conversations
    assert one.steps[0].send == "LOGIN alice AAAAA"
    assert one.steps[0].expect[0].matches("ERR denied")
    assert not one.steps[0].expect[0].matches("ERR denied!")
    assert one.steps[0].expect[1].matches("xxx") and not one.steps[0].expect[1].matches("xy")
    assert one.steps[0].closed and one.steps[0].line == 8
    assert two.kind == "hostile" and two.after == ("one",) and two.steps[0].expect == ()
    assert s.final_balances == {"alice": 10} and s.timeout == 5.0


@pytest.mark.parametrize(("text", "line", "words"), [
    (GOOD.replace("send: PING", "sned: PING"), 15, "unknown key 'sned'"),
    (GOOD.replace("balance: 10}", "balance: ten}"), 3, "whole number"),
    (GOOD.replace("after: one", "after: three"), 11, "unknown conversation 'three'"),
    (GOOD.replace("kind: hostile", "kind: evil"), 12, "legit or hostile"),
    (GOOD.replace('"x+"', '"x+("'), 9, "bad regular expression"),
    (GOOD.replace("ledger: {alice: 10}", "ledger: {eve: 10}"), 16, "not in accounts"),
    (GOOD.replace("  - name: one\n", "  - name: one\n    after: two\n"), 6, "cycle"),
    (GOOD.replace("  - name: two", "  - name: one"), 11, "defined twice"),
    (GOOD + "  bad: [\n", 17, "not valid YAML"),
    ("", 1, "empty"),
    ("scenario: x\n", 1, "lacks accounts, conversations"),
])
def test_errors_name_file_and_line(text: str, line: int, words: str) -> None:
    with pytest.raises(sc.ScenarioError) as info:
        sc.parse(text, "bad.yaml")
    assert str(info.value).startswith(f"bad.yaml:{line}:"), str(info.value)
    assert words in str(info.value)


def test_unreadable_file_is_a_scenario_error(tmp_path) -> None:
    with pytest.raises(sc.ScenarioError, match="cannot read"):
        sc.load(tmp_path / "missing.yaml")

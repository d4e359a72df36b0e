"""Smart Error Virtualization end to end: kv_server, Frida attached, failures injected."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from healer.profile import FunctionProfile, Profile, ProfileSession, SessionError, agent_tables
from healer.profile._agent import AgentSession
from healer.profile._evaluate import AgentTarget, level3_rate, run_trials
from targets.kv_server import EVAL_REQUESTS, FUNCTIONS, KvServer


def _start(profile: dict[str, Any]) -> AgentTarget:
    return AgentTarget(KvServer.start(), FUNCTIONS, profile)


def test_sev_through_the_real_agent_reaches_level3_more_often_than_a_fixed_value(trained):
    tables = agent_tables(trained)
    modes = {"sev": tables, "fixed 0": agent_tables(trained, fixed=0),
             "fixed -1": agent_tables(trained, fixed=-1)}
    trials = run_trials(_start, EVAL_REQUESTS, FUNCTIONS, modes, max_nth=3)
    level3 = {m: level3_rate(trials, m) for m in modes}
    strict = {m: sum(t.alive and t.same for t in trials if t.mode == m) for m in modes}
    assert level3["sev"][1] == 3 * len(FUNCTIONS) - 2  # remove_slot, count_used: 2 requests each
    assert all(level3[m][1] == level3["sev"][1] for m in modes)
    assert all(t.alive for t in trials)  # level 1: no heal left kv_server dead
    assert level3["sev"][0] > max(level3["fixed 0"][0], level3["fixed -1"][0])
    assert strict["sev"] > max(strict["fixed 0"], strict["fixed -1"])
    for t in trials:
        if t.mode == "sev":
            assert t.why.startswith("context: ")  # how the value was selected, with evidence
            assert int(t.value) in trained.functions[t.function].values  # seen in training
        else:
            assert t.value == t.mode.split()[1] and t.why.startswith("fixed: ")
    # the failed call ran and was rolled back: store_value answered its usual 0 under SEV, yet
    # the value it stored is gone, so no store_value trial keeps the later replies
    assert all(not t.level3 for t in trials if t.function == "store_value")


def test_injected_call_runs_and_its_writes_are_rolled_back(kv, trained):
    target = AgentTarget(kv, FUNCTIONS, agent_tables(trained))
    try:
        s = target.session
        replies = target.exchange(["RESET", "SET alpha 1", "SET beta 2", "GET alpha", "GET beta"],
                                  pause=(2, lambda: s.inject("store_value")))
        s.status()
        assert replies == ["RESET", "STORED", "STORED", "VALUE 1", "NOT_FOUND"]
        [ev] = s.of_type("inject")
        assert ev["function"] == "store_value" and ev["selected"] == "profile"
        assert ev["value"] == "0"  # what store_value returns: the caller saw a success
        assert kv.proc.poll() is None
    finally:
        target.session.close()


def _tiny_profile() -> Profile:
    p = Profile(window=15)
    fp = p.function("store_value")
    for v in (5, 7, 9):
        fp.add_call(("alloc_slot", "find_slot"), (v,), v)
    fp.args = {(0,): Counter({100: 1}), (3,): Counter({300: 1})}
    fp.values.update({100: 1, 300: 1})
    return p


@pytest.mark.parametrize("strategy, expected", [
    ("first", ["5", "5", "5", "5"]),
    ("round-robin", ["5", "7", "9", "100"]),
    ("delayed-round-robin", ["5", "7", "9", "100"]),
    ("argument-closest", ["100", "100", "100", "100"]),  # slot 0 is closest to (0,)
    ("context", ["5", "5", "5", "5"]),  # window (alloc_slot, find_slot, ...): ties -> smallest
])
def test_scheduling_strategies_choose_in_the_target(kv, sessions, strategy, expected):
    s = AgentSession(kv.pid, FUNCTIONS, agent_tables(_tiny_profile(), strategy=strategy))
    sessions.append(s)
    got = []
    for i in range(4):
        s.inject("store_value")
        assert kv.exchange(["RESET", f"SET k{i} v"]) == ["RESET", "STORED"]
        s.status()
        ev = s.of_type("inject")[-1]
        got.append(ev["value"])
        assert ev["why"].startswith(strategy + ":")
    assert got == expected


def test_fixed_value_setting_is_vanilla_error_virtualization(kv, sessions, trained):
    tables = agent_tables(trained)
    s = AgentSession(kv.pid, FUNCTIONS, agent_tables(trained, fixed=-1))
    sessions.append(s)
    s.inject("key_valid")  # -1 is "true" for a C int flag: the malformed key is accepted
    assert kv.exchange(["RESET", "SET bad! 1", "COUNT"]) == ["RESET", "STORED", "COUNT 1"]
    s.set_profile(agent_tables(trained, fixed=0))  # 0 is "false": a good key is refused
    s.inject("key_valid")
    assert kv.exchange(["RESET", "SET good 1", "COUNT"]) == ["RESET", "ERROR bad key", "COUNT 0"]
    s.set_profile(tables)  # back to SEV
    s.inject("key_valid")
    kv.exchange(["RESET", "SET good 1", "COUNT"])
    s.status()
    got = [(e["selected"], e["value"]) for e in s.of_type("inject")]
    assert got[:2] == [("fixed", "-1"), ("fixed", "0")]
    assert got[2][0] == "profile" and int(got[2][1]) in trained.functions["key_valid"].values
    with pytest.raises(SessionError, match="fixed must be a decimal integer"):
        s.set_profile(dict(tables, fixed="not a number"))  # refused; the old setting stays
    s.inject("key_valid")
    kv.exchange(["GET good"])
    s.status()
    assert s.of_type("inject")[-1]["selected"] == "profile"


def test_fixed_values_per_function_leave_the_other_functions_to_sev(kv, sessions, trained):
    # vanilla EV's return-type heuristic gives each function its own value
    s = AgentSession(kv.pid, FUNCTIONS, agent_tables(trained, fixed={"key_valid": 0}))
    sessions.append(s)
    s.inject("key_valid")  # fixed 0: "false", a good key is refused
    assert kv.exchange(["RESET", "SET good 1", "COUNT"]) == ["RESET", "ERROR bad key", "COUNT 0"]
    s.inject("parse_command")  # not named: SEV chooses
    kv.exchange(["RESET", "COUNT"])
    s.status()
    got = [(e["function"], e["selected"], e["value"]) for e in s.of_type("inject")]
    assert got[0] == ("key_valid", "fixed", "0")
    assert got[1][:2] == ("parse_command", "profile")
    assert int(got[1][2]) in trained.functions["parse_command"].values


def test_addresses_seen_in_training_are_replayed_as_null():
    fp = FunctionProfile("getword")
    for window, value in [(("a",), 0x7F12_3456_7000), (("a",), 0x7F12_3456_8000), (("b",), 0),
                          (("a",), 0x5555_5555_1000), (("c",), -1)]:
        fp.add_call(window, (), value)
    t = agent_tables(Profile(window=3, functions={"getword": fp}))["functions"]["getword"]
    assert t["values"] == ["0", "-1"]  # three addresses and a NULL: one value, 0
    assert t["ctx"]["a"] == [["0", 3]] and t["ctx"]["c"] == [["-1", 1]]


def test_post_evaluation_reports_a_heal_that_leaves_the_profile(kv, sessions, trained):
    tables = agent_tables(trained)
    s = AgentSession(kv.pid, FUNCTIONS, tables)
    sessions.append(s)
    s.inject("parse_command")  # SEV: a value seen in training
    kv.exchange(["GET k1", "COUNT", "COUNT"])
    s.set_profile(agent_tables(trained, fixed=77))  # a command code parse_command never returned
    s.inject("parse_command")
    kv.exchange(["GET k1", "COUNT", "COUNT"])
    st = s.status()
    posts = s.of_type("profile:post")
    assert len(posts) == 2
    first, second = posts
    assert (first["taintDepth"], second["taintDepth"]) == (1, 2)
    assert first["ok"], first
    assert not second["ok"]
    assert "parse_command returned 77, never seen in training" in second["offProfile"]
    assert st["profile"]["heals"] == 2 and st["profile"]["postOff"] == 1


def test_anomaly_detector_flags_a_window_never_seen_in_training(kv, sessions, record):
    rnd = random.Random(5)
    normal = ["RESET"] + [rnd.choice([f"SET k{rnd.randrange(9)} {rnd.randrange(99)}",
                                      f"GET k{rnd.randrange(9)}", f"DEL k{rnd.randrange(9)}",
                                      "COUNT"]) for _ in range(400)]
    with_server = KvServer.start()
    try:
        profile = record(with_server, normal)
    finally:
        with_server.stop()
    s = ProfileSession(window=15, functions=FUNCTIONS, record=False, ret_bits=32,
                       tables=agent_tables(profile, anomaly_width=2))
    sessions.append(s)
    s.attach(kv.pid)
    kv.exchange(normal[:200])
    s.status()
    assert s.anomalies == []  # the traffic it was trained on raises nothing
    kv.exchange(["GET bad!"])  # key_valid fails: send_reply right after key_valid is new
    s.status()
    assert [(a["function"], a["window"]) for a in s.anomalies] == [
        ("send_reply", ["key_valid", "parse_command"])]
    assert s.anomalies[0]["reason"] == "window never seen in training"


def test_agent_tables_reject_unknown_strategy_before_attaching():
    with pytest.raises(ValueError, match="argument-closest"):
        agent_tables(Profile(window=3, functions={"f": FunctionProfile("f")}), strategy="best")


def test_library_calls_recorded_as_module_bang_name_enter_the_windows(kv, record):
    # handle_line calls strtok_r before count_tokens: a library call is a previous sibling
    lib = "libc!strtok_r"
    s = ProfileSession(window=5, functions=[*FUNCTIONS, lib], ret_bits=32)
    s.attach(kv.pid)
    try:
        assert s.skipped == []
        kv.exchange(["RESET", "SET a 1", "GET a", "COUNT"])
        prof = s.profile()
    finally:
        s.close()
    assert prof.functions[lib].calls >= 4 * 2  # each line: tokens, then the NULL at the end
    windows = list(prof.functions["count_tokens"].contexts)
    assert windows and all(w[0] == lib and "handle_line" in w for w in windows)
    plain = record(kv, ["RESET", "SET a 1"], width=5)  # without it: the window is the parent
    assert all(lib not in w for w in plain.functions["count_tokens"].contexts)
    assert kv.exchange(["GET a"]) == ["VALUE 1"]  # detached; the server is unharmed

"""Heals followed by more writes (targets/memlog_nested.c, the real agent): after any heal, every
open parent transaction and every later transaction on the thread is logged completely.

- nested: the child (inner) faults and is healed, the parent (outer) then writes (globals, heap
  through memcpy/memset, its caller's frame) and faults: every byte of both is back.
- repeated: 50 rounds of that on one thread (100 heals), at -O0 and -O2, each round checked.
- root heals, and nested heals whose parent commits, each followed by a nested transaction whose
  parent aborts: nothing of the aborted one escapes either (another 200 heals).
With rollback disabled the same run leaves the parent's writes in place (the test can fail).
"""

from __future__ import annotations

import pytest

from healer._agent_source import agent_source

ROUNDS = 50


def regions(line: str) -> dict[str, str]:
    return dict(tok.split("=") for tok in line.split()[1:5])


def protect(target, rollback: bool = True):
    events: list = []
    script = target.load(agent_source(), lambda m, d: events.append(m))
    target.resume()
    script.exports_sync.init({"rollback": rollback,
                              "coverage": {"mode": "list", "functions": ["outer", "inner"]}})
    return script, events


def heals(script) -> int:
    return script.exports_sync.status()["txn"]["heals"]


@pytest.mark.parametrize("opt", ["-O0", "-O2"])
def test_parent_writes_after_a_nested_heal_are_rolled_back(memlog_target, opt):
    target = memlog_target(opt, "attach", "memlog_nested")
    script, events = protect(target)
    before = target.command("state")
    after = target.command("nest 1 1")
    assert after.endswith("ret=-1"), (after, events)
    assert regions(after) == regions(before), (after, before)
    assert heals(script) == 2
    # a healthy nested call still commits: its writes stay
    assert regions(target.command("nest 0 0"))["parent"] != regions(before)["parent"]
    assert target.alive()


@pytest.mark.parametrize("opt", ["-O0", "-O2"])
def test_fifty_heals_in_a_row_each_followed_by_writes_all_restored(memlog_target, opt):
    target = memlog_target(opt, "attach", "memlog_nested")
    script, events = protect(target)
    before = regions(target.command("state"))
    for i in range(ROUNDS):
        line = target.command("nest 1 1")          # inner healed, then outer writes and is healed
        assert regions(line) == before, (i, line, events[-3:])
    for i in range(ROUNDS):
        line = target.command("call 1")            # a root heal ...
        assert regions(line) == before, (i, line)
        line = target.command("nest 0 1")          # ... then a later transaction that aborts
        assert regions(line) == before, (i, line)
        before = regions(target.command("nest 1 0"))  # a nested heal, the parent commits ...
        line = target.command("nest 0 1")          # ... then a later transaction that aborts
        assert regions(line) == before, (i, line)
    assert heals(script) == 6 * ROUNDS
    stats = script.exports_sync.status()["memlog"]
    assert stats["overflows"] == 0 and stats["restored"] > 0
    assert target.alive()


def test_without_rollback_the_parent_writes_stay(memlog_target):
    target = memlog_target("-O2", "attach", "memlog_nested")
    script, _ = protect(target, rollback=False)
    before = regions(target.command("state"))
    after = regions(target.command("nest 1 1"))
    assert after["parent"] != before["parent"] and after["inner"] != before["inner"]
    assert heals(script) == 2


def test_frida_code_run_after_a_follow_is_never_logged(memlog_target):
    """The first transaction follows the thread from inside Frida's callback, which finishes
    translated: it must log exactly the stores a later identical transaction logs."""
    target = memlog_target("-O2", "attach", "memlog_nested")
    script, _ = protect(target)
    logged = []
    for _ in range(3):
        target.command("nest 0 0")
        logged.append(script.exports_sync.status()["memlog"]["logged"])
    first, second, third = logged[0], logged[1] - logged[0], logged[2] - logged[1]
    assert first == second == third > 0, logged

"""Read-only glibc routines run natively (20_memlog.js excludeReadOnly) and rollback stays complete.

parse_line (targets/memlog_strings.c) stores before, between and after calls of strlen, strcmp,
memchr, strchr, strstr, strncasecmp and strspn, each reached through a PLT stub's indirect jmp.
With the routines excluded, Stalker must translate no block inside them (blocksExcluded, counted by
the transform) and fewer blocks in all than with them followed, and every store parse_line made
after a native call must still be undone by the rollback. The target is lazily bound: one call
before the script binds its GOT slots (a call site translated before its slot is bound stays
followed, a documented limit).
"""

from __future__ import annotations

import pytest

from healer._agent_source import agent_source

from .conftest import harness_source

CALLED = {"strlen", "strcmp", "memchr", "strchr", "strstr", "strncasecmp", "strspn"}


def run_calls(target, exclude: bool, calls: int = 3) -> tuple[str, list[str], dict]:
    script = target.load(harness_source())
    target.resume()
    warm = target.command("call 0")
    script.exports_sync.init({"memlog": {"excludeReadOnly": exclude}}, ["parse_line"], "always")
    after = [target.command("call 0") for _ in range(calls)]
    return warm, after, script.exports_sync.status()["memlog"]


@pytest.mark.parametrize("opt", ["-O0", "-O2"])
def test_read_only_routines_run_natively_and_rollback_is_complete(memlog_target, opt):
    target = memlog_target(opt, "attach", name="memlog_strings")
    warm, after, stats = run_calls(target, exclude=True)
    assert {r["name"] for r in stats["readOnly"]} >= CALLED, stats["readOnly"]
    assert stats["blocksExcluded"] == 0 and stats["nativeCalls"] > 0, stats
    for line in after:
        assert line == warm
    assert stats["overflows"] == 0
    assert stats["restored"] == stats["logged"] > 0
    assert target.alive()


def test_following_them_translates_more_blocks(memlog_target):
    excluded = run_calls(memlog_target("-O2", "attach", name="memlog_strings"), exclude=True)[2]
    followed = run_calls(memlog_target("-O2", "attach", name="memlog_strings"), exclude=False)[2]
    assert followed["readOnly"] == []
    assert followed["logged"] == excluded["logged"]  # the same stores, after native calls too
    assert followed["blocks"] > excluded["blocks"], (followed["blocks"], excluded["blocks"])


@pytest.mark.parametrize("opt", ["-O0", "-O2"])
def test_a_fault_inside_a_native_routine_is_healed_with_full_rollback(memlog_target, opt):
    """The real agent: strchr(NULL) faults inside glibc, run natively from the code cache, after
    parse_line's first stores; the heal must undo them and return -1 to the caller."""
    target = memlog_target(opt, "attach", name="memlog_strings")
    warm = target.command("call 0")
    script = target.load(agent_source())
    script.exports_sync.init({"coverage": {"mode": "list", "functions": ["parse_line"]}})
    healed = [target.command("call 1") for _ in range(2)]
    status = script.exports_sync.status()
    assert status["txn"]["heals"] == 2, status
    assert status["memlog"]["nativeCalls"] > 0 and status["memlog"]["blocksExcluded"] == 0
    for line in healed:
        assert line == warm.replace("ret=1", "ret=-1")
    assert target.command("call 0").endswith("ret=1")  # a healthy call after the heals commits
    assert target.alive()

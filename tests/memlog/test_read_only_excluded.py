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

from .conftest import harness_source

CALLED = {"strlen", "strcmp", "memchr", "strchr", "strstr", "strncasecmp", "strspn"}


def run_calls(target, exclude: bool, calls: int = 3) -> tuple[str, list[str], dict]:
    script = target.load(harness_source())
    target.resume()
    warm = target.command("call")
    script.exports_sync.init({"memlog": {"excludeReadOnly": exclude}}, ["parse_line"], "always")
    after = [target.command("call") for _ in range(calls)]
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

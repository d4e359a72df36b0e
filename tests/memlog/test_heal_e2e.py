"""The real agent (healer/agent, every module) heals a fault in a supervised function and the memory
log puts back every byte it changed: a global struct, a heap buffer (also through glibc memcpy and
memset, AVX-512 and rep stosb stores) and its caller's stack frame hold exactly their pre-call
bytes afterwards, at -O0 and -O2, attached and spawned, while the function's own entry/exit stubs
and Interceptor's enter/leave thunks (of the input calls) run uninstrumented and call their common
code natively (20_memlog.js skipHookCode). With rollback disabled
(config flag) the same run leaves all three changed, so the test proves it can fail.
"""

from __future__ import annotations

import pytest

from healer._agent_source import agent_source

from .test_rollback_log import regions

CALLS = 3


def heal_calls(target, rollback: bool) -> tuple[str, list[str], dict]:
    events: list = []
    script = target.load(agent_source(), lambda m, d: events.append(m))
    target.resume()
    before = target.command("state")
    script.exports_sync.init({"rollback": rollback,
                              "coverage": {"mode": "list", "functions": ["update_account"]}})
    after = [target.command("call 1") for _ in range(CALLS)]
    status = script.exports_sync.status()
    assert status["txn"]["heals"] == CALLS, (status, events)
    return before, after, status["memlog"]


@pytest.mark.parametrize("opt", ["-O0", "-O2"])
@pytest.mark.parametrize("mode", ["attach", "spawn"])
def test_heal_restores_every_byte_and_without_rollback_does_not(memlog_target, opt, mode):
    target = memlog_target(opt, mode)
    before, after, stats = heal_calls(target, rollback=True)
    for line in after:
        assert line.endswith("ret=-1")      # the virtualized return value reached the caller
        assert regions(line) == regions(before), (line, before)
    assert stats["overflows"] == 0 and stats["restored"] == stats["logged"] > 0
    assert len(stats["interceptorThunks"]) == 2 and stats["stubs"] > 0, stats
    assert stats["fridaCalls"] >= 2, stats   # the stubs' calls of their common code
    # A healthy call after the heals still commits normally.
    assert target.command("call 0").endswith("ret=1")

    control = memlog_target(opt, mode)
    before, after, stats = heal_calls(control, rollback=False)
    for region in ("global", "heap", "frame"):
        assert regions(after[0])[region] != regions(before)[region], region
    assert stats["restored"] == 0 and control.alive()


@pytest.mark.parametrize("how", ["munmap", "mprotect", "brk", "readonly"])
@pytest.mark.parametrize("opt", ["-O0", "-O2"])
def test_a_store_that_faults_on_a_page_logged_before_is_healed(memlog_target, opt, how):
    """A page the memory log has logged stores on stops taking them. The inline log reads the old
    bytes itself only on pages record() read before; each way a page stops being readable that the
    agent watches (munmap, mprotect PROT_NONE, the break moved below it) makes it forget the page,
    so the store that then faults is healed like any other (without the forgetting, the inline
    read faulted inside Stalker's code and the process died). A page made read-only is still
    readable: the store is logged, faults, and the rollback must not write its old bytes back
    there (it faulted again inside the exception handler and the process died, before the inline
    log too). mmap MAP_FIXED over a logged page is not watched: docs/memlog-and-wire.md."""
    target = memlog_target(opt, "attach")
    events: list = []
    script = target.load(agent_source(), lambda m, d: events.append(m))
    target.resume()
    script.exports_sync.init({"coverage": {"mode": "list", "functions": ["poke"]}})
    page = "brk" if how == "brk" else "mmap"
    assert [target.command(f"poke {page}") for _ in range(3)] == ["poke ret=1"] * 3
    assert script.exports_sync.status()["memlog"]["inlineLogged"] >= 2   # the page was known
    assert target.command(f"drop {how}") == f"dropped {how}"
    assert target.command(f"poke {page}") == "poke ret=-1", events
    status = script.exports_sync.status()
    assert status["txn"]["heals"] == 1 and target.alive(), (status, events)

"""The memory log on its own: every store update_account makes (global struct, heap through
memcpy/memset with AVX-512 and rep stosb, the caller's stack frame) is undone by rollback.

The stand-in core rolls back on the normal return, so no fault is involved: after each call the
state line must equal the one before it. The same run with rollback disabled must differ (the test
proves it can fail).
"""

from __future__ import annotations

import pytest

from .conftest import harness_source


def run_calls(target, rollback: bool, calls: int = 3) -> tuple[str, list[str], dict]:
    script = target.load(harness_source())
    target.resume()
    before = target.command("state")
    script.exports_sync.init({"rollback": rollback}, ["update_account"], "always")
    after = [target.command("call 0") for _ in range(calls)]
    return before, after, script.exports_sync.status()["memlog"]


def regions(state_line: str) -> dict[str, str]:
    return dict(tok.split("=") for tok in state_line.split()[1:4])


@pytest.mark.parametrize("opt", ["-O0", "-O2"])
@pytest.mark.parametrize("mode", ["attach", "spawn"])
def test_rollback_restores_every_region(memlog_target, opt, mode):
    target = memlog_target(opt, mode)
    before, after, stats = run_calls(target, rollback=True)
    for line in after:
        assert regions(line) == regions(before), (line, before)
    assert stats["overflows"] == 0
    assert stats["restored"] == stats["logged"] > 0
    # both ways of logging were taken: inline (plain stores of 1-32 bytes: globals, indexed
    # history[i], the caller's frame, vector copies) and memlog_store (rep stos, masked tails)
    assert 0 < stats["inlineLogged"] < stats["logged"]
    assert target.alive()


@pytest.mark.parametrize("opt", ["-O2"])
def test_without_rollback_every_region_changes(memlog_target, opt):
    target = memlog_target(opt, "attach")
    before, after, stats = run_calls(target, rollback=False, calls=1)
    changed = regions(after[0])
    for region in ("global", "heap", "frame"):
        assert changed[region] != regions(before)[region], region
    assert stats["restored"] == 0 and stats["logged"] > 0


def test_a_full_log_is_reported_never_silently_incomplete(memlog_target):
    target = memlog_target("-O2", "attach")
    messages: list = []
    script = target.load(harness_source(), lambda m, d: messages.append(m.get("payload")))
    script.exports_sync.init({"memlog": {"bytes": 1024}}, ["update_account"], "always")
    target.command("call 0")
    stats = script.exports_sync.status()["memlog"]
    assert stats["overflows"] > 0
    logged = [p["fields"] for p in messages if p and p.get("event") == "log"]
    assert any(f["event"] == "memlog-overflow" for f in logged), messages
    assert target.alive()

"""The transform's inline gate: a followed thread's stores outside every transaction are not
logged (in a server that is nearly all of them), and logging resumes with the next transaction.

update_account is supervised (its first call follows the thread for good); ``bench`` then runs
bench_stores unsupervised on the same, still followed thread: 50,000 stores through translated
code with the gate off. Also checks that the two changes to Frida's internals that make
translation cheaper (20_memlog.js: fastFridaMemset, reuseCapstone) found their code in the
installed Frida: after a Frida upgrade they silently stop applying otherwise.
"""

from __future__ import annotations

from .conftest import harness_source

OUTSIDE_CALLS, OUTSIDE_STORES = 50, 1000


def test_stores_outside_transactions_are_not_logged(memlog_target):
    target = memlog_target("-O2", "attach")
    script = target.load(harness_source())
    script.exports_sync.init({}, ["update_account"], "never")
    target.command("call 0")
    first = script.exports_sync.status()["memlog"]
    assert first["threads"] == 1 and first["logged"] > 0

    assert target.command(f"bench {OUTSIDE_CALLS} {OUTSIDE_STORES}").startswith("bench ns=")
    outside = script.exports_sync.status()["memlog"]
    assert outside["blocks"] > first["blocks"]  # bench_stores ran translated, followed
    assert outside["logged"] == first["logged"]

    target.command("call 0")
    second = script.exports_sync.status()["memlog"]
    assert second["logged"] == 2 * first["logged"]
    assert second["overflows"] == 0
    assert target.alive()


def test_frida_internals_patched(memlog_target):
    target = memlog_target("-O2", "attach")
    script = target.load(harness_source())
    script.exports_sync.init({}, ["update_account"], "never")
    target.command("call 0")
    patches = script.exports_sync.status()["memlog"]["fridaPatches"]
    assert patches == {"memset": 1, "disassembleAt": 1, "icEntries": 32}, (
        f"{patches}: Frida's code changed (upgrade?): find the two functions and the GumStalker "
        "layout again (docs/memlog-and-wire.md, 20_memlog.js SLOW_MEMSET / DISASSEMBLE_AT / "
        "IC_AT)")
    assert target.alive()

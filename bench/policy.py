"""Repair-policy interpretation time at repair time (STEM/SEAD section 4: 15 ms on average).

Runs healer/agent/30_policy.js inside a real login server (targets/login_server.c) with the stub
core of tests/policy/harness.js and times complete repair decisions in-process: the IVPs at
function exit, the rp (value, memory assignments), the assertions after the repair, and for the
fallback case an rp whose assertion fails, is undone, and the next rp. Side by side, in the same
run: one message round trip to the host, which is what a host-side interpreter would cost per
decision. Goal: well under a millisecond per decision.

    python -m bench policy [--iterations N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import frida

from healer.policy import compile_text, load
from targets import build

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tests" / "policy" / "harness.js"
INTERPRETER = ROOT / "healer" / "agent" / "30_policy.js"
RESULTS = ROOT / "bench" / "results" / "policy.json"
PAPER_MS = 15.0
RET = "0x401234"

HEAVY = """
symval FAIL = 0;
cdi failures : i32 @ &failed_logins;
ivp Frame :=: ('raddress == 'shadowstack[0]), ('arg0 != 0), (login_attempts >= 0);
ivp Counters :=: (failures >= 0 && failures < 1000000), (u8[&last_user] != 0xff);
rp Strict := (rollback), ('rvalue = FAIL), (failures = failures + 1), (assert failures < 0);
rp Counted := (rollback), ('rvalue == FAIL), (failed_logins = failures + 1),
              (assert i32('rvalue) == FAIL && failures > 0);
tp check_credentials &Frame, &Counters :=: &Strict, &Counted;
"""


def _scenarios(exe: Path) -> list[tuple[str, dict, dict]]:
    figure3 = load(ROOT / "policies" / "figure3.pol", binary=exe)
    heavy = compile_text(HEAVY, "heavy.pol", binary=exe)
    check = {"fn": "check_credentials", "ret": RET, "args": ["0x1000"]}
    return [
        ("figure 3, fault, IVP holds", figure3, check),
        ("figure 3, smashed return address", figure3, {**check, "slot": "0x4141414141"}),
        ("5 IVP checks, rp fails its assertion, fallback rp", heavy, check),
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench policy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20000, help="decisions per scenario")
    parser.add_argument("--round-trips", type=int, default=500, help="host round trips timed")
    args = parser.parse_args(argv)

    exe = build("login_server", opt="-O2")
    server = subprocess.Popen([str(exe), "0"], stdout=subprocess.PIPE, text=True)
    session = None
    try:
        assert server.stdout is not None
        server.stdout.readline()
        session = frida.attach(server.pid)
        source = HARNESS.read_text().replace("/*POLICY_JS*/", INTERPRETER.read_text())
        script = session.create_script(source)

        def on_message(message: Any, _data: bytes | None) -> None:
            if message.get("payload", {}).get("type") == "decide":
                script.post({"type": "decision"})

        script.on("message", on_message)
        script.load()
        api = script.exports_sync
        rows = {}
        for label, policy, spec in _scenarios(exe):
            api.init({"policy": policy})
            api.time(spec, "SIGSEGV", 200)  # warm up (closures, symbol cache)
            rows[label] = api.time(spec, "SIGSEGV", args.iterations) * 1000.0  # us
        started = time.perf_counter()
        round_trip_us = api.host_round_trip(args.round_trips) * 1000.0
        elapsed = time.perf_counter() - started
    finally:
        if session is not None:
            session.detach()
        server.kill()
        server.wait(timeout=10)

    print(f"{'scenario':<52} {'us/decision':>12} {'paper/this':>11} {'host RTT/this':>14}")
    for label, us in rows.items():
        paper_ratio = PAPER_MS * 1000 / us
        print(f"{label:<52} {us:>12.2f} {paper_ratio:>10.0f}x {round_trip_us / us:>13.1f}x")
    print(f"{'one host round trip (send + wait for reply)':<52} {round_trip_us:>12.2f}"
          f"   ({args.round_trips} in {elapsed:.2f} s)")
    worst = max(rows.values())
    verdict = "met" if worst < 1000.0 else "MISSED"
    print(f"goal 'well under 1 ms per decision': {verdict} (worst {worst:.2f} us; paper 15 ms)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"us_per_decision": rows, "host_round_trip_us": round_trip_us,
                                   "paper_ms": PAPER_MS, "iterations": args.iterations}, indent=2))
    return 0 if worst < 1000.0 else 1

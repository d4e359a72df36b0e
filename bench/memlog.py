"""Cost of the memory log per logged store, against native and against Interceptor-only.

memlog_target's ``bench N K`` calls ``bench_stores`` (K stores to a global) N times and prints the
time per call. Three configurations are measured side by side in one run, alternating rounds, in
one process each (median of the rounds):

- ``native``: no Frida;
- ``interceptor``: the function hooked as a transaction (JS onEnter/onLeave of the stand-in core,
  tests/memlog/harness*.js), no memory log;
- ``memlog``: the same plus 20_memlog.js: the thread followed by Stalker once, an inline call of
  memlog_store before each store, the old bytes logged, entries dropped at commit;
- ``gate-off``: 20_memlog.js with ``update_account`` supervised once (so the thread is followed)
  and ``bench_stores`` not supervised: every store passes the transform's inline gate, which is
  off. What a server mostly runs: followed code outside any transaction.

Each is measured at FEW and MANY stores a call: the cost per logged store is the slope
((memlog@MANY - memlog@FEW) / (MANY - FEW)), the fixed cost of a supervised call the rest. Prints
both and the ratios; writes ``memlog.json`` to ``--out`` (default ``bench/results``).

    python -m bench memlog
    python -m bench.memlog --calls 5000 --rounds 5 --out /tmp/memlog-bench
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import frida

from targets import build

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
AGENT = ROOT / "healer" / "agent"
HARNESS = ROOT / "tests" / "memlog"
FEW, MANY = 10, 1000
TIMEOUT = 120


def harness_source(modules: tuple[str, ...]) -> str:
    """tests/memlog's stand-in core around the agent modules named (bench/commit_latency too)."""
    csource = {f.name: f.read_text() for f in sorted(AGENT.glob("*.c"))}
    return (f"const CSOURCE = {json.dumps(csource)};\n" + (HARNESS / "harness.js").read_text()
            + "".join((AGENT / m).read_text() for m in modules)
            + (HARNESS / "harness_main.js").read_text())


def _measure(exe: Path, mode: str, calls: int) -> dict[int, float]:
    """ns per call at FEW and at MANY stores, in one process."""
    proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    session = None
    try:
        assert proc.stdin is not None and proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("memlog_target did not start")
        if mode != "native":
            session = frida.attach(proc.pid)
            script = session.create_script(
                harness_source(("20_memlog.js",) if mode in ("memlog", "gate-off") else ()))
            script.load()
            if mode == "gate-off":
                script.exports_sync.init({}, ["update_account"], "never")
                proc.stdin.write("call 0\n")  # one transaction: the thread is followed from now on
                proc.stdin.flush()
                proc.stdout.readline()
            else:
                script.exports_sync.init({}, ["bench_stores"], "never")
        out = {}
        # The warm-up runs translate the blocks under Stalker once.
        for n, stores in ((10, FEW), (10, MANY), (calls, FEW), (calls, MANY)):
            proc.stdin.write(f"bench {n} {stores}\n")
            proc.stdin.flush()
            out[stores] = float(proc.stdout.readline().split("ns=")[1])
        return out
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
        if session is not None:
            session.detach()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench memlog", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    exe = build("memlog_target", opt="-O2")
    modes = ("native", "interceptor", "memlog", "gate-off")
    samples: dict[str, list[dict[int, float]]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for m in modes:
            samples[m].append(_measure(exe, m, args.calls))
    med = {m: {k: statistics.median(r[k] for r in v) for k in (FEW, MANY)}
           for m, v in samples.items()}
    slope = {m: (med[m][MANY] - med[m][FEW]) / (MANY - FEW) for m in modes}
    fixed = {m: med[m][FEW] - FEW * slope[m] for m in modes}
    result = {"calls": args.calls, "rounds": args.rounds, "ns_per_call": med,
              "ns_per_store": slope, "ns_fixed_per_call": fixed,
              "store_memlog_vs_native": slope["memlog"] / slope["native"],
              "call_memlog_vs_interceptor": fixed["memlog"] / fixed["interceptor"],
              "store_gate_off_vs_native": slope["gate-off"] / slope["native"],
              "samples": samples}
    for m in modes:
        print(f"{m:12s} {med[m][FEW]:9.1f} ns/call at {FEW} stores, {med[m][MANY]:10.1f} at {MANY}:"
              f" {slope[m]:7.2f} ns per store, {fixed[m]:8.1f} ns fixed per call")
    print(f"per logged store: {slope['memlog']:.1f} ns ({result['store_memlog_vs_native']:.0f}x a "
          f"native store); fixed cost of a supervised call with the log: "
          f"{result['call_memlog_vs_interceptor']:.2f}x Interceptor-only")
    print(f"a store in followed code outside a transaction (gate off): {slope['gate-off']:.2f} ns "
          f"({result['store_gate_off_vs_native']:.1f}x a native store)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memlog.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

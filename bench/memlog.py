"""Cost of the memory log per logged store, against native and against Interceptor-only.

memlog_target's ``bench N`` calls ``bench_stores`` (100 stores to a global) N times and prints the
time per call. Three configurations are measured side by side in one run, alternating rounds, in
one process each (median of the rounds):

- ``native``: no Frida;
- ``interceptor``: the function hooked as a transaction (JS onEnter/onLeave of the stand-in core,
  tests/memlog/harness*.js), no memory log;
- ``memlog``: the same plus 20_memlog.js: the thread followed by Stalker once, a C callout before
  each store, the old bytes logged, entries dropped at commit.

Prints ns per call and per logged store ((memlog - interceptor) / 100) and the ratios; writes
``bench/results/memlog.json``.

    python -m bench memlog
    python -m bench.memlog --calls 20000 --rounds 5
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
STORES = 100
TIMEOUT = 120


def harness_source(modules: tuple[str, ...]) -> str:
    """tests/memlog's stand-in core around the agent modules named (bench/commit_latency too)."""
    csource = {f.name: f.read_text() for f in sorted(AGENT.glob("*.c"))}
    return (f"const CSOURCE = {json.dumps(csource)};\n" + (HARNESS / "harness.js").read_text()
            + "".join((AGENT / m).read_text() for m in modules)
            + (HARNESS / "harness_main.js").read_text())


def _measure(exe: Path, mode: str, calls: int) -> float:
    proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    session = None
    try:
        assert proc.stdin is not None and proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("memlog_target did not start")
        if mode != "native":
            session = frida.attach(proc.pid)
            script = session.create_script(
                harness_source(("20_memlog.js",) if mode == "memlog" else ()))
            script.load()
            script.exports_sync.init({}, ["bench_stores"], "never")
        # A warm-up call translates the blocks under Stalker once.
        for n in (100, calls):
            proc.stdin.write(f"bench {n}\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        return float(line.split("ns=")[1])
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
        if session is not None:
            session.detach()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench memlog", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    exe = build("memlog_target", opt="-O2")
    modes = ("native", "interceptor", "memlog")
    samples: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for m in modes:
            samples[m].append(_measure(exe, m, args.calls))
    med = {m: statistics.median(v) for m, v in samples.items()}
    per_store = (med["memlog"] - med["interceptor"]) / STORES
    result = {"calls": args.calls, "rounds": args.rounds, "ns_per_call": med,
              "ns_per_logged_store": per_store,
              "memlog_vs_native": med["memlog"] / med["native"],
              "memlog_vs_interceptor": med["memlog"] / med["interceptor"],
              "interceptor_vs_native": med["interceptor"] / med["native"], "samples": samples}
    for m in modes:
        print(f"{m:12s} {med[m]:10.1f} ns/call ({STORES} stores)")
    print(f"per logged store: {per_store:.1f} ns")
    print(f"ratios: memlog/native {result['memlog_vs_native']:.1f}x, memlog/interceptor "
          f"{result['memlog_vs_interceptor']:.2f}x, interceptor/native "
          f"{result['interceptor_vs_native']:.1f}x")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memlog.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

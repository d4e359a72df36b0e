"""Healing latency and the cost of supervision (STEM/SEAD sections 3 and 7).

1. Fault to resumed execution: round trips of Figure 1 exploit requests (a stack overflow healed
   by error virtualization) against the same server's legitimate requests, interleaved on one
   connection; the difference of the medians (and p99s) is what a heal costs. The paper reports
   15 ms to interpret its repair policy per repair.
2. Cost per supervised call: ``work()`` of targets/callbench.c called in a loop, native, with an
   empty C listener of Interceptor.attach (what the agent hooked with before its own stubs),
   supervised on the agent's C path (no plugin wants per-transaction JS hooks), then on its JS
   path (a repair policy with an integrity check on ``work``: the policy's JS onTxLeave), all in
   one run.

    python -m bench healing [--rounds N] [--calls N]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import frida
import trio

from healer.config import Options, build_config
from healer.session import open_healer
from targets import build

RESULTS = Path(__file__).resolve().parent / "results" / "healing.json"
PAPER_REPAIR_MS = 15.0
ALL_PLUGINS = ("wire", "memlog", "policy", "profile")


class _Target:
    def __init__(self, exe: Path) -> None:
        self.proc = subprocess.Popen([str(exe), "0"], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline().split()[1])
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        self.file = self.sock.makefile("rwb")

    def ask(self, line: str) -> str:
        self.file.write(line.encode() + b"\n")
        self.file.flush()
        return self.file.readline().decode().strip()

    def close(self) -> None:
        self.sock.close()
        self.proc.kill()
        self.proc.wait(5)


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _supervised(pid: int, disabled: tuple[str, ...], policy: Path | None = None) -> Any:
    config = build_config(Options(coverage="all", rollback=False, disabled=disabled,
                                  policy=policy), None)
    return open_healer(config, pid=pid)


# An integrity check on `work`'s epilogue: the policy then offers the core a JS onTxLeave, which
# puts every supervised call through JavaScript (the wire and the memory log have native hooks
# only).
_IVP_POLICY = """ivp MeasureStack :=: ('raddress=='shadowstack[0]);
rp Zero := ('rvalue==0);
tp work &MeasureStack :=: &Zero;
"""


async def _heal_latency(rounds: int) -> dict[str, Any]:
    target = _Target(build("fig1_server", opt="-O2", stack_protector=True))
    try:
        async with _supervised(target.proc.pid, ALL_PLUGINS):
            heal, plain = [], []
            for _ in range(rounds):
                t0 = time.perf_counter()
                assert target.ask("BAR " + "A" * 100).startswith("RET -1")
                t1 = time.perf_counter()
                assert target.ask("BAR hello").startswith("RET 0")
                t2 = time.perf_counter()
                heal.append((t1 - t0) * 1e6)
                plain.append((t2 - t1) * 1e6)
    finally:
        target.close()
    extra = [h - p for h, p in zip(heal, plain, strict=True)]  # per round: healed minus plain
    return {"rounds": rounds,
            "healed_request_us": {"median": statistics.median(heal), "p99": _pct(heal, 0.99)},
            "plain_request_us": {"median": statistics.median(plain), "p99": _pct(plain, 0.99)},
            "heal_cost_us": {"median": statistics.median(extra), "p99": _pct(extra, 0.99)}}


def _ns_per_call(target: _Target, calls: int) -> float:
    best = min(int(target.ask(f"RUN {calls}").split()[1]) for _ in range(5))
    return best / calls


# The reference: Interceptor.attach with a listener whose C callbacks do nothing.
_EMPTY_LISTENER = """
const cm = new CModule('void e (void * ic) {} void l (void * ic) {}');
Interceptor.attach(Process.mainModule.getExportByName('work'), { onEnter: cm.e, onLeave: cm.l });
"""


def _empty_listener_ns(target: _Target, calls: int) -> float:
    session = frida.attach(target.proc.pid)
    try:
        script = session.create_script(_EMPTY_LISTENER)
        script.load()
        ns = _ns_per_call(target, calls)
        script.unload()
    finally:
        session.detach()
    return ns


async def _call_cost(calls: int) -> dict[str, Any]:
    target = _Target(build("callbench", opt="-O2"))
    try:
        native = _ns_per_call(target, calls)
        empty = await trio.to_thread.run_sync(_empty_listener_ns, target, calls)
        async with _supervised(target.proc.pid, ALL_PLUGINS):
            c_path = _ns_per_call(target, calls)
        with tempfile.TemporaryDirectory() as tmp:
            policy = Path(tmp, "ivp.pol")
            policy.write_text(_IVP_POLICY)
            async with _supervised(target.proc.pid, ("memlog", "profile"), policy):
                js_path = _ns_per_call(target, calls // 20)
        native_after = _ns_per_call(target, calls)
    finally:
        target.close()
    return {"calls": calls, "native_ns": native, "native_after_detach_ns": native_after,
            "frida_empty_listener_ns": empty,
            "c_path_ns": c_path, "js_path_ns": js_path,
            "c_path_overhead_ns": c_path - native, "js_path_overhead_ns": js_path - native,
            "c_path_ratio": c_path / native, "js_path_ratio": js_path / native}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench healing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2000, help="exploit/legit request pairs")
    parser.add_argument("--calls", type=int, default=200000, help="calls per timing batch")
    args = parser.parse_args(argv)
    heal = trio.run(_heal_latency, args.rounds)
    cost = trio.run(_call_cost, args.calls)
    h = heal["heal_cost_us"]
    print(f"fault -> resumed (extra round trip of a healed request, {args.rounds} rounds): "
          f"median {h['median']:.0f} us, p99 {h['p99']:.0f} us "
          f"(paper: {PAPER_REPAIR_MS:.0f} ms to interpret the repair policy; "
          f"{PAPER_REPAIR_MS * 1000 / max(h['median'], 1):.0f}x faster)")
    print(f"healed request median {heal['healed_request_us']['median']:.0f} us vs plain "
          f"{heal['plain_request_us']['median']:.0f} us")
    print(f"per call: native {cost['native_ns']:.1f} ns, supervised C path {cost['c_path_ns']:.1f} "
          f"ns ({cost['c_path_ratio']:.1f}x, +{cost['c_path_overhead_ns']:.0f} ns), JS path "
          f"{cost['js_path_ns']:.1f} ns ({cost['js_path_ratio']:.1f}x, "
          f"+{cost['js_path_overhead_ns']:.0f} ns); "
          f"native after detach {cost['native_after_detach_ns']:.1f} ns")
    print(f"Interceptor.attach with an empty C listener {cost['frida_empty_listener_ns']:.1f} ns a "
          f"call: the agent's stubs and bookkeeping take "
          f"{cost['c_path_ns'] / cost['frida_empty_listener_ns']:.2f}x that (65_stubs.js)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"heal": heal, "call_cost": cost}, indent=2) + "\n")
    print(f"results: {RESULTS}")
    return 0

"""Smart Error Virtualization on a real server: correctness after injected failures, prediction
accuracy, and profiling overhead, measured side by side in one run.

1. Train: targets/kv_server.c under `healer profile` recording (normal and malformed requests).
2. Predict: return-value prediction accuracy from the execution window (width 1, 3, 5, 15) on a
   held-out run (the predictability work behind SEV reports 97% at width 15).
3. Correctness through the real agent: kv_server with the full healer agent attached (its
   functions supervised, memory log on). For every function and each of the first requests that
   call it, `rpc.exports.inject({function})` (what `healer inject` sends) fails that call: the
   call runs, its memory writes are rolled back, and the value it returns is chosen by SEV (each
   scheduling strategy) or is fixed (vanilla error virtualization, 0 and -1: the profile plugin's
   `fixed` setting). Level 1: the process lived; level 3: alive and every reply after the healed
   request equals the uninjected baseline. Results also go to bench/results/sev.json.
4. Overhead: pipelined requests per second, native vs profile recording vs a loaded profile (SEV
   tables, anomaly detection at width 3), every kv_server function hooked with Interceptor.attach.
5. Apache in profile mode (apache2 -X): calls recorded, predictability, prediction accuracy.

    python -m bench sev
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from healer.profile import (
    STRATEGIES,
    Profile,
    ProfileSession,
    accuracy,
    agent_tables,
    merge,
    predictability,
)
from healer.profile._evaluate import AgentTarget, Trial, run_trials
from targets.kv_server import EVAL_REQUESTS, FUNCTIONS, KvServer, training_requests

KV_FUNCTIONS = list(FUNCTIONS)
RESULTS = Path(__file__).resolve().parent / "results" / "sev.json"
WIDTH = 15
APACHE_PATHS = ["/manual/", "/manual/index.html", "/manual/mod/", "/manual/howto/cgi.html",
                "/manual/nothere.html", "/manual/../../etc/passwd", "/manual/%zz",
                "/manual/%2e%2e/", "/manual/images/", "/manual/mod/core.html"]
APACHE_FUNCTIONS = [
    # the request path of apache2 (exported ap_* functions that return a status, flag or count)
    "ap_read_request", "ap_parse_uri", "ap_getword_white", "ap_getword", "ap_getword_nc",
    "ap_unescape_url", "ap_set_keepalive", "ap_meets_conditions", "ap_process_request",
    "ap_process_request_internal", "ap_getparents", "ap_is_url", "ap_count_dirs",
    "ap_rgetline_core", "ap_discard_request_body", "ap_run_translate_name",
    "ap_run_map_to_storage", "ap_run_handler", "ap_run_fixups", "ap_run_type_checker",
    "ap_run_access_checker", "ap_run_check_user_id", "ap_run_auth_checker",
    "ap_run_post_read_request", "ap_run_header_parser", "ap_run_log_transaction",
    "ap_core_translate", "ap_directory_walk", "ap_location_walk", "ap_file_walk",
    "ap_is_initial_req", "ap_some_auth_required", "ap_update_mtime", "ap_set_content_length",
    "ap_set_etag", "ap_send_error_response", "ap_die", "ap_pass_brigade", "ap_get_brigade",
    "ap_method_number_of", "ap_setup_client_block", "ap_should_client_block",
    "ap_sub_req_lookup_uri", "ap_run_sub_req", "ap_destroy_sub_req", "ap_internal_redirect",
    "ap_index_of_response", "ap_http_header_filter", "ap_byterange_filter",
    "ap_content_length_filter", "ap_core_output_filter", "ap_core_input_filter",
]


def _start(profile: dict[str, Any]) -> AgentTarget:
    return AgentTarget(KvServer.start(), KV_FUNCTIONS, profile)


def train(runs: Sequence[int], n: int) -> Profile:
    """One recorded kv_server run per seed, merged."""
    profile: Profile | None = None
    for seed in runs:
        server = KvServer.start()
        session = ProfileSession(window=WIDTH, functions=KV_FUNCTIONS, ret_bits=32)
        try:
            session.attach(server.pid)
            for i in range(0, n, 200):
                server.exchange(training_requests(200, seed * 1000 + i))
            got = session.profile()
        finally:
            session.close()
            server.stop()
        profile = got if profile is None else merge(profile, got)
    assert profile is not None
    return profile


def _rate(server: KvServer, lines: list[str], rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        server.exchange(lines)
    return rounds * len(lines) / (time.perf_counter() - start)


def overhead(tables: dict[str, Any]) -> dict[str, float]:
    """Requests/s native, recording, and with a profile loaded, same server process, same run."""
    lines = training_requests(2000, 99)
    server = KvServer.start()
    try:
        out = {"native": _rate(server, lines, 3)}
        for label, kw in (("profile recording", {"record": True}),
                          ("profile loaded (SEV)", {"record": False, "tables": tables})):
            s = ProfileSession(window=WIDTH, functions=KV_FUNCTIONS, ret_bits=32, **kw)
            s.attach(server.pid)
            try:
                out[label] = _rate(server, lines, 3)
            finally:
                s.close()
        out["native (after detach)"] = _rate(server, lines, 3)
        return out
    finally:
        server.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fetch_all(httpd: Any, rounds: int) -> None:
    """Fetch every APACHE_PATHS entry ``rounds`` times (normal and bad requests)."""
    for rnd in range(rounds):
        for p in APACHE_PATHS:
            # 404 and 400 answers are part of the training input
            with contextlib.suppress(OSError):
                urllib.request.urlopen(httpd.url(p) + f"?r={rnd}", timeout=5).read()


def _wrk(url: str, seconds: int = 3) -> float:
    """Requests/s of one wrk connection (a C client: no GIL shared with the profile host)."""
    out = subprocess.run(["wrk", "-t1", "-c1", f"-d{seconds}s", url], capture_output=True,
                         text=True, timeout=seconds + 30).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"wrk printed no rate: {out!r}")
    return float(match.group(1))


def apache_profile(rounds: int = 15) -> str:
    """Record Apache (-X) serving manual pages and bad requests, twice; predict run 2 from run 1;
    compare the request rate with and without recording."""
    from targets import apache

    profiles = []
    rates = []
    with apache.running(port=_free_port(), workers=0) as httpd:
        page = httpd.url("/manual/mod/core.html")
        native = _wrk(page)
        for _ in range(2):
            s = ProfileSession(window=WIDTH, functions=APACHE_FUNCTIONS, ret_bits=32, args=2)
            s.attach(httpd.pid)
            try:
                _fetch_all(httpd, rounds)
                profiles.append(s.profile())  # the mixed workload only, before wrk's load
                rates.append(_wrk(page))
            finally:
                s.close()
        native_after = _wrk(page)
    a, b = profiles
    accs = ", ".join(f"width {w}: {accuracy(a, b, w)[0]:.1%}" for w in (1, 3, 5, WIDTH))
    calls = sum(fp.calls for fp in b.functions.values())
    weighted = {size: sum(predictability(fp, size) * fp.calls for fp in a.functions.values())
                / max(1, sum(fp.calls for fp in a.functions.values())) for size in (1, WIDTH)}
    certain = sum(predictability(fp, 1) == 1.0 for fp in a.functions.values())
    return (f"apache2 -X in profile mode: {len(a.functions)} functions recorded, {calls} calls in "
            f"the held-out run\n"
            f"  prediction accuracy: {accs}\n"
            f"  predictability score, call-weighted mean: S1 {weighted[1]:.2f}, "
            f"S{WIDTH} {weighted[WIDTH]:.2f}; {certain} functions always return one value\n"
            f"  requests/s of /manual/mod/core.html (wrk, 1 connection): native {native:.0f}, "
            f"recording {min(rates):.0f} ({min(rates) / native:.2f} x native), native after "
            f"detach {native_after:.0f}")


def _counts(trials: Sequence[Trial]) -> dict[str, Any]:
    n = len(trials)
    return {"trials": n, "level1": sum(t.alive for t in trials),
            "level3": sum(t.level3 for t in trials),
            "unchanged": sum(t.alive and t.same for t in trials),
            "later_heals": sum(t.later_heals for t in trials)}


def _pct(part: int, whole: int) -> str:
    return f"{part / whole:6.1%}" if whole else "   n/a"


def correctness(profile: Profile, max_nth: int) -> dict[str, Any]:
    """Level 1 and level 3 per mode and per function, through the real agent's injection."""
    modes = {f"SEV {st}": agent_tables(profile, strategy=st) for st in STRATEGIES}
    modes |= {f"fixed {v}": agent_tables(profile, fixed=v) for v in (0, -1)}
    t0 = time.monotonic()
    trials = run_trials(_start, EVAL_REQUESTS, KV_FUNCTIONS, modes, max_nth=max_nth)
    elapsed = time.monotonic() - t0
    per_mode = {m: _counts([t for t in trials if t.mode == m]) for m in modes}
    per_function = {fn: {m: _counts([t for t in trials if t.mode == m and t.function == fn])
                         for m in modes} for fn in KV_FUNCTIONS}
    print("\nSEV paper's correctness scale after one failure injected through the real agent")
    print("(the call runs, its writes are rolled back, its return value is chosen; level 1: alive;")
    print(f"level 3: alive and every later reply as without injection; {elapsed:.0f} s):")
    for m, c in per_mode.items():
        print(f"  {m:26} level 1 {_pct(c['level1'], c['trials'])}   level 3 "
              f"{_pct(c['level3'], c['trials'])} of {c['trials']} trials   (every reply "
              f"unchanged {_pct(c['unchanged'], c['trials'])})")
    sev = per_mode["SEV context"]["level3"]
    best = max(per_mode["fixed 0"]["level3"], per_mode["fixed -1"]["level3"])
    ratio = sev / best if best else 0.0
    print(f"  ratio level 3, SEV(context) / best fixed value: {ratio:.2f}")
    print("  per function, level 1 / level 3 (SEV context | fixed 0 | fixed -1), SEV's values:")
    for fn in KV_FUNCTIONS:
        cells = []
        for m in ("SEV context", "fixed 0", "fixed -1"):
            c = per_function[fn][m]
            cells.append(f"{c['level1']}/{c['level3']} of {c['trials']}")
        values = sorted({t.value for t in trials if t.function == fn and t.mode == "SEV context"})
        print(f"    {fn:14} {' | '.join(cells)}   SEV chose {', '.join(values)}")
    return {"max_nth": max_nth, "requests": len(EVAL_REQUESTS), "seconds": elapsed,
            "per_mode": per_mode, "per_function": per_function,
            "ratio_level3_sev_context_over_best_fixed": ratio,
            "trials": [dataclasses.asdict(t) for t in trials]}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sev", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=1200, help="requests per training run")
    parser.add_argument("--max-nth", type=int, default=6, help="requests failed per function")
    parser.add_argument("--no-apache", action="store_true")
    args = parser.parse_args(argv)

    t0 = time.monotonic()
    profile = train([1, 2, 3], args.train)
    held_out = train([4], args.train // 2)
    print(f"trained on 3 runs: {sum(fp.calls for fp in profile.functions.values())} calls, "
          f"{len(profile.functions)} functions ({time.monotonic() - t0:.0f} s)")

    print("\nreturn-value prediction from the execution window (held-out run):")
    for w in (1, 3, 5, WIDTH):
        acc, n = accuracy(profile, held_out, w)
        print(f"  width {w:2}: {acc:.1%} of {n} calls")
    print("  predictability score per function (S1 / S3 / S15):")
    for name, fp in sorted(profile.functions.items()):
        sc = [predictability(fp, s) for s in (1, 3, WIDTH)]
        print(f"    {name:14} {' / '.join(f'{x:.2f}' for x in sc)}   values {len(fp.values)}")

    results: dict[str, Any] = {"correctness": correctness(profile, args.max_nth)}

    print("\nthroughput, pipelined requests (same server process, same run):")
    rates = overhead(agent_tables(profile, anomaly_width=3))
    for label, r in rates.items():
        print(f"  {label:22} {r:9.0f} req/s   {r / rates['native']:.2f} x native")
    results["throughput_req_s"] = rates

    if not args.no_apache:
        print("\n" + apache_profile())
    print(f"\ntotal {time.monotonic() - t0:.0f} s")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {RESULTS}")
    return 0

"""Smart Error Virtualization on real servers: correctness after injected failures, prediction
accuracy, and profiling overhead, measured side by side in one run.

kv_server (targets/kv_server.c, our test server):
1. Train under `healer profile` recording (normal and malformed requests, 3 runs merged).
2. Predict: return-value prediction accuracy from the execution window (width 1, 3, 5, 15) on a
   held-out run (the predictability work behind SEV reports 97% at width 15).
3. Correctness through the real agent: the full healer agent attached (functions supervised,
   memory log on; a rollback check first). For every function and each of the first requests that
   call it, `rpc.exports.inject({function})` (what `healer inject` sends) fails that call: the
   call runs, its memory writes are rolled back, and the value it returns is chosen by SEV (each
   scheduling strategy) or is fixed (vanilla error virtualization: 0, and -1, which is also the
   paper's return-type heuristic for these int functions). Level 1: the process lived; level 3
   (externally visible behaviour the same): every reply as in the uninjected baseline ("all
   replies"), or every reply after the healed request ("later").
4. Overhead: pipelined requests per second, native vs profile recording vs a loaded profile.

Apache (apache2 -X serving the manual, targets/apache_sev.py):
5. Profile mode: calls recorded, predictability, prediction accuracy with and without library
   calls (APR, libc) in the windows, requests/s with and without recording (wrk).
6. Correctness as in 3, trained on normal and malformed requests: SEV context, the best other SEV
   strategy on kv_server, fixed 0, fixed -1, and vanilla EV's return-type heuristic (int -1,
   pointer NULL), per function class. Results go to bench/results/sev.json.

    python -m bench sev
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import time
from collections.abc import Callable, Sequence
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
from targets.apache_sev import EVAL_REQUESTS as APACHE_EVAL
from targets.apache_sev import FUNCTIONS as APACHE_FUNCTIONS
from targets.apache_sev import LIBRARY_CALLS, HttpdServer
from targets.apache_sev import RETURN_TYPES as APACHE_TYPES
from targets.apache_sev import training_requests as apache_training
from targets.kv_server import EVAL_REQUESTS, FUNCTIONS, KvServer, training_requests
from targets.maild import EVAL_REQUESTS as MAILD_EVAL
from targets.maild import FUNCTIONS as MAILD_FUNCTIONS
from targets.maild import RETURN_TYPES as MAILD_TYPES
from targets.maild import MaildServer
from targets.maild import training_requests as maild_training

KV_FUNCTIONS = list(FUNCTIONS)
RESULTS = Path(__file__).resolve().parent / "results" / "sev.json"
WIDTH = 15
KV_CLASSES = {
    # what the failed call's return value can still decide once its writes are rolled back
    "side effect (table write, reply, dispatch)": ["handle_line", "store_value", "remove_slot",
                                                   "send_reply"],
    "computes a value (code, flag, index, length, count)": [
        "parse_command", "count_tokens", "key_valid", "value_len", "find_slot", "alloc_slot",
        "count_used"],
}


MAILD_CLASSES = {
    "side effect (recipient list, body, delivery, reply, handlers)": [
        "handle_line", "add_recipient", "body_add", "deliver", "send_code", "cmd_helo",
        "cmd_mail", "cmd_rcpt", "cmd_data", "data_line", "cmd_stat"],
    "computes a value (verb, state, flag, length, mailbox, count)": [
        "parse_verb", "next_state", "valid_name", "parse_address", "find_mailbox",
        "mailbox_count"],
}


def _start(profile: dict[str, Any]) -> AgentTarget:
    return AgentTarget(KvServer.start(), KV_FUNCTIONS, profile)


def _start_maild(profile: dict[str, Any]) -> AgentTarget:
    return AgentTarget(MaildServer.start(), MAILD_FUNCTIONS, profile)


def _start_apache(profile: dict[str, Any]) -> AgentTarget:
    return AgentTarget(HttpdServer.start(), APACHE_FUNCTIONS, profile)


def train(runs: Sequence[int], n: int, server_class: type[KvServer] = KvServer,
          functions: Sequence[str] = KV_FUNCTIONS, ret_bits: int = 32,
          requests: Callable[[int, int], list[str]] = training_requests) -> Profile:
    """One recorded run of the line server per seed, merged."""
    profile: Profile | None = None
    for seed in runs:
        server = server_class.start()
        session = ProfileSession(window=WIDTH, functions=functions, ret_bits=ret_bits)
        try:
            session.attach(server.pid)
            for i in range(0, n, 200):
                server.exchange(requests(200, seed * 1000 + i))
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


def rollback_works(profile: Profile) -> bool:
    """The memory log really undoes a failed call (the agent is being changed by others while
    this runs: a run on a broken memory log would measure nothing): store_value fails while
    "beta" is stored, so "beta" must be missing afterwards."""
    target = _start(agent_tables(profile))
    try:
        s = target.session
        replies = target.exchange(["RESET", "SET alpha 1", "SET beta 2", "GET alpha", "GET beta"],
                                  pause=(2, lambda: s.inject("store_value")))
        return replies == ["RESET", "STORED", "STORED", "VALUE 1", "NOT_FOUND"]
    finally:
        target.stop()


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


def _wrk(url: str, seconds: int = 3) -> float:
    """Requests/s of one wrk connection (a C client: no GIL shared with the profile host)."""
    out = subprocess.run(["wrk", "-t1", "-c1", f"-d{seconds}s", url], capture_output=True,
                         text=True, timeout=seconds + 30).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"wrk printed no rate: {out!r}")
    return float(match.group(1))


def apache_profile(rounds: int) -> tuple[Profile, dict[str, Any]]:
    """Record Apache (-X) serving manual pages and bad requests, twice; predict run 2 from run 1;
    compare the request rate with and without recording. Returns run 1's profile (the training
    of the correctness trials) and the numbers."""
    profiles = []
    rates: list[float] = []
    server = HttpdServer.start()
    try:
        page = server.httpd.url("/manual/en/mod/mod_alias.html")
        native = _wrk(page)
        for functions in (APACHE_FUNCTIONS, APACHE_FUNCTIONS, APACHE_FUNCTIONS + LIBRARY_CALLS,
                          APACHE_FUNCTIONS + LIBRARY_CALLS):
            s = ProfileSession(window=WIDTH, functions=functions, ret_bits=64, args=2)
            s.attach(server.pid)
            try:
                server.exchange(apache_training(rounds))
                profiles.append(s.profile())  # the mixed workload only, before wrk's load
                if len(rates) < 2:
                    rates.append(_wrk(page))
            finally:
                s.close()
        native_after = _wrk(page)
    finally:
        server.stop()
    a, b, with_lib_a, with_lib_b = profiles
    ints = [fn for fn, ty in APACHE_TYPES.items() if ty == "int"]
    accs = {w: accuracy(a, b, w)[0] for w in (1, 3, 5, WIDTH)}
    acc_table = {
        (label, judged): {w: accuracy(x, y, w, fns)[0] for w in (1, 3, WIDTH)}
        for label, x, y in (("ap_* only", a, b), ("ap_* + library calls", with_lib_a, with_lib_b))
        for judged, fns in (("every ap_*", APACHE_FUNCTIONS), ("int-returning ap_*", ints))}
    calls = sum(fp.calls for fp in b.functions.values())
    weighted = {size: sum(predictability(fp, size) * fp.calls for fp in a.functions.values())
                / max(1, sum(fp.calls for fp in a.functions.values())) for size in (1, WIDTH)}
    certain = sum(predictability(fp, 1) == 1.0 for fp in a.functions.values())
    print(f"\napache2 -X in profile mode: {len(a.functions)} functions recorded, {calls} calls in "
          f"the held-out run")
    print("  prediction accuracy: " + ", ".join(f"width {w}: {x:.1%}" for w, x in accs.items()))
    print(f"  accuracy with and without {len(LIBRARY_CALLS)} library calls (APR, libc) in the "
          "windows, held-out run,\n  judged on the ap_* calls only (pointer values differ "
          "between runs: the int-returning ones apart):")
    for (label, judged), by_w in acc_table.items():
        print(f"    windows of {label:22} {judged:20} " + ", ".join(
            f"width {w}: {x:.1%}" for w, x in by_w.items()))
    print(f"  predictability score, call-weighted mean: S1 {weighted[1]:.2f}, "
          f"S{WIDTH} {weighted[WIDTH]:.2f}; {certain} functions always return one value")
    print(f"  requests/s of /manual/en/mod/mod_alias.html (wrk, 1 connection): native "
          f"{native:.0f}, recording {min(rates):.0f} ({min(rates) / native:.2f} x native), "
          f"native after detach {native_after:.0f}")
    return a, {"functions": len(a.functions), "held_out_calls": calls,
               "accuracy": {str(w): x for w, x in accs.items()},
               "accuracy_library_calls": {f"{label}; {judged}": {str(w): x for w, x in v.items()}
                                          for (label, judged), v in acc_table.items()},
               "predictability_weighted": {str(k): v for k, v in weighted.items()},
               "req_s": {"native": native, "recording": min(rates),
                         "native_after_detach": native_after}}


def _counts(trials: Sequence[Trial]) -> dict[str, Any]:
    n = len(trials)
    return {"trials": n, "level1": sum(t.alive for t in trials),
            "level3": sum(t.level3 for t in trials),
            "unchanged": sum(t.alive and t.same for t in trials),
            "later_heals": sum(t.later_heals for t in trials)}


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _pct(part: int, whole: int) -> str:
    return f"{part / whole:6.1%}" if whole else "   n/a"


def correctness(label: str, start: Callable[[dict[str, Any]], AgentTarget],
                requests: Sequence[str], functions: Sequence[str], modes: dict[str, Any],
                classes: dict[str, list[str]], max_nth: int, fresh: bool) -> dict[str, Any]:
    """Level 1 and level 3 per mode, per function class and per function, through the real
    agent's injection (``run_trials``)."""
    t0 = time.monotonic()
    trials = run_trials(start, requests, functions, modes, max_nth=max_nth, fresh=fresh)
    elapsed = time.monotonic() - t0
    per_mode = {m: _counts([t for t in trials if t.mode == m]) for m in modes}
    per_function = {fn: {m: _counts([t for t in trials if t.mode == m and t.function == fn])
                         for m in modes} for fn in functions}
    per_class = {cl: {m: _counts([t for t in trials if t.mode == m and t.function in fns])
                      for m in modes} for cl, fns in classes.items()}
    print(f"\n{label}: the SEV paper's correctness scale after one failure injected through the "
          "real agent\n(the call runs, its writes are rolled back, its return value is chosen. "
          "Level 1: alive. Level 3,\nexternally visible behaviour the same: 'all replies', "
          "every reply as without injection, the\nhealed request's own included; 'later', "
          "every reply after the healed request, which may\nitself turn into an error. "
          f"{len(requests)} requests, {elapsed:.0f} s):")
    for m, c in per_mode.items():
        print(f"  {m:34} level 1 {_pct(c['level1'], c['trials'])}   level 3 all replies "
              f"{_pct(c['unchanged'], c['trials'])}, later {_pct(c['level3'], c['trials'])} "
              f"of {c['trials']:3} trials")
    fixed = [m for m in per_mode if not m.startswith("SEV")]
    ratios = {key: {m: _ratio(per_mode["SEV context"][key], per_mode[m][key]) for m in fixed}
              for key in ("level3", "unchanged")}
    for key, what in (("unchanged", "level 3 all replies"), ("level3", "level 3 later")):
        print(f"  ratio {what}, SEV(context) / " + ", ".join(
            f"{m}: {'n/a' if r is None else format(r, '.2f')}" for m, r in ratios[key].items()))
    shown = ["SEV context", *fixed]
    print(f"  level 3 all replies / later, per function class ({' | '.join(shown)}):")
    for cl, by_mode in per_class.items():
        cells = " | ".join(f"{_pct(by_mode[m]['unchanged'], by_mode[m]['trials'])} /"
                           f"{_pct(by_mode[m]['level3'], by_mode[m]['trials'])}"
                           for m in shown)
        print(f"    {cl:52} {cells}   ({by_mode[shown[0]]['trials']} trials a mode; "
              f"{len(classes[cl])} functions)")
    print("  per function, level 1 / level 3 later / level 3 all replies, of n trials "
          f"({' | '.join(shown)}), SEV's values:")
    for fn in functions:
        if not per_function[fn][shown[0]]["trials"]:
            continue
        row = ["{level1}/{level3}/{unchanged} of {trials}".format(**per_function[fn][m])
               for m in shown]
        values = sorted({t.value for t in trials if t.function == fn and t.mode == shown[0]})
        print(f"    {fn:28} {' | '.join(row)}   SEV chose {', '.join(values)}")
    return {"max_nth": max_nth, "fresh_server_per_trial": fresh, "requests": len(requests),
            "seconds": elapsed,
            "per_mode": per_mode, "per_class": per_class, "classes": classes,
            "per_function": per_function,
            "ratio_sev_context_over": ratios,
            "trials": [dataclasses.asdict(t) for t in trials]}


def apache_classes(profile: Profile) -> dict[str, list[str]]:
    """Apache's functions by what a failed call's value can do: pointer/void, or an int that took
    one value or several values in training."""
    out: dict[str, list[str]] = {"returns a pointer or void": [],
                                 "returns an int, one value in training": [],
                                 "returns an int, several values in training": []}
    for fn, ty in APACHE_TYPES.items():
        fp = profile.functions.get(fn)
        if ty != "int":
            out["returns a pointer or void"].append(fn)
        elif fp is not None and len(fp.values) > 1:
            out["returns an int, several values in training"].append(fn)
        else:
            out["returns an int, one value in training"].append(fn)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sev", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=1200, help="requests per training run")
    parser.add_argument("--max-nth", type=int, default=6,
                        help="kv_server requests failed per function")
    parser.add_argument("--apache-rounds", type=int, default=3,
                        help="Apache training: rounds of every manual page and bad request")
    parser.add_argument("--apache-nth", type=int, default=2,
                        help="Apache requests failed per function")
    parser.add_argument("--no-apache", action="store_true")
    parser.add_argument("--no-kv", action="store_true")
    parser.add_argument("--no-maild", action="store_true")
    args = parser.parse_args(argv)

    t0 = time.monotonic()
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    best_other = "round-robin"
    if not args.no_kv:
        profile = train([1, 2, 3], args.train)
        held_out = train([4], args.train // 2)
        print(f"kv_server trained on 3 runs: {sum(fp.calls for fp in profile.functions.values())}"
              f" calls, {len(profile.functions)} functions ({time.monotonic() - t0:.0f} s)")

        print("\nreturn-value prediction from the execution window (held-out run):")
        for w in (1, 3, 5, WIDTH):
            acc, n = accuracy(profile, held_out, w)
            print(f"  width {w:2}: {acc:.1%} of {n} calls")
        print("  predictability score per function (S1 / S3 / S15):")
        for name, fp in sorted(profile.functions.items()):
            sc = [predictability(fp, s) for s in (1, 3, WIDTH)]
            print(f"    {name:14} {' / '.join(f'{x:.2f}' for x in sc)}   values {len(fp.values)}")

        if not rollback_works(profile):
            print("the memory log did not roll back an injected store_value: no correctness "
                  "measurement on a broken agent (rerun once healer/agent is consistent)")
            return 1
        print("\nmemory log rollback checked: an injected store_value left nothing stored")
        # every kv_server function returns int: vanilla EV's return-type heuristic is -1 for all
        modes = {f"SEV {st}": agent_tables(profile, strategy=st) for st in STRATEGIES}
        modes |= {"fixed 0": agent_tables(profile, fixed=0),
                  "fixed -1 (= vanilla EV by type)": agent_tables(profile, fixed=-1)}
        kv = correctness("kv_server", _start, EVAL_REQUESTS, KV_FUNCTIONS, modes, KV_CLASSES,
                         args.max_nth, fresh=False)  # the sequence starts with RESET
        others = {st: kv["per_mode"][f"SEV {st}"]["level3"] for st in STRATEGIES
                  if st != "context"}
        best_other = max(others, key=lambda st: others[st])
        results["correctness"] = kv

        print("\nthroughput, pipelined requests (same server process, same run):")
        rates = overhead(agent_tables(profile, anomaly_width=3))
        for label, r in rates.items():
            print(f"  {label:22} {r:9.0f} req/s   {r / rates['native']:.2f} x native")
        results["throughput_req_s"] = rates

    if not args.no_maild:
        t1 = time.monotonic()
        mail = train([1, 2, 3], args.train, MaildServer, MAILD_FUNCTIONS, 64,
                     maild_training)
        held_out = train([4], args.train // 2, MaildServer, MAILD_FUNCTIONS, 64, maild_training)
        print(f"\nmaild (our own legacy-style daemon) trained on 3 runs: "
              f"{sum(fp.calls for fp in mail.functions.values())} calls "
              f"({time.monotonic() - t1:.0f} s); prediction accuracy from the window: " +
              ", ".join(f"width {w}: {accuracy(mail, held_out, w)[0]:.1%}" for w in (1, WIDTH)))
        vanilla = {fn: -1 if ty == "int" else 0 for fn, ty in MAILD_TYPES.items()}
        modes = {"SEV context": agent_tables(mail, strategy="context"),
                 f"SEV {best_other}": agent_tables(mail, strategy=best_other),
                 "fixed 0": agent_tables(mail, fixed=0), "fixed -1": agent_tables(mail, fixed=-1),
                 "vanilla EV by type (int -1, ptr 0)": agent_tables(mail, fixed=vanilla)}
        results["maild_correctness"] = correctness(
            "maild (our own target)", _start_maild, MAILD_EVAL, MAILD_FUNCTIONS, modes,
            MAILD_CLASSES, args.max_nth, fresh=False)  # the session starts with XRESET

    if not args.no_apache:
        trained, results["apache_profile"] = apache_profile(args.apache_rounds)
        vanilla = {fn: -1 if ty == "int" else 0 for fn, ty in APACHE_TYPES.items()}
        modes = {"SEV context": agent_tables(trained, strategy="context"),
                 f"SEV {best_other}": agent_tables(trained, strategy=best_other),
                 "fixed 0": agent_tables(trained, fixed=0),
                 "fixed -1": agent_tables(trained, fixed=-1),
                 "vanilla EV by type (int -1, ptr 0)": agent_tables(trained, fixed=vanilla)}
        results["apache_correctness"] = correctness(
            "apache2 -X", _start_apache, APACHE_EVAL, APACHE_FUNCTIONS, modes,
            apache_classes(trained), args.apache_nth, fresh=True)
    print(f"\ntotal {time.monotonic() - t0:.0f} s")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {RESULTS}")
    return 0

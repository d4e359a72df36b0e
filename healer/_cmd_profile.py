"""``healer profile``: record a behaviour profile, score it, diff two profiles."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from healer.profile._tables import STRATEGIES
from sead.cli import CliError

if TYPE_CHECKING:
    from healer.profile import Profile

NAME = "profile"
HELP = "record a behaviour profile (calls, arguments, return values, contexts); diff two profiles"
log = structlog.get_logger("healer.profile")

DESCRIPTION = """\
Record, for every call of the hooked functions, the arguments, the return value and the execution-
window context (previous siblings, then parents: STEM paper, Figure 4), into a versioned profile
file that `healer attach --profile FILE` loads for Smart Error Virtualization and anomaly detection.
Recording stops when the target exits, after --duration seconds, or on Ctrl-C (the target keeps
running when it was attached by pid).

  healer profile 4242 --out kv.prof --window 15 --duration 60
  healer profile --out kv.prof --functions find_slot key_valid --trace -- ./kv_server 7000
  healer profile --out kv.prof --merge 4242          # add this run to an existing profile
  healer profile score kv.prof                       # predictability score per window size
  healer profile diff old.prof new.prof --threshold 0.2   # exit 1 when they differ beyond it
  healer profile set kv.prof --function-strategy find_slot=round-robin --anomaly-width 3
  healer attach 4242 --profile kv.prof                # SEV values, anomaly alerts from the profile

`set` stores how the agent uses the profile (SEV strategy: first, round-robin,
delayed-round-robin, argument-closest, context (default); anomaly detection; --fixed-value V to
heal with a fixed value instead, vanilla error virtualization) in the file itself.
--trace prints the SEV paper's trace format: `.> f(0x1, 0x2, 0x3, ...)` on entry and
`.> f(...) = ret` on return. A file name ending in .gz is compressed.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="*",
                   metavar="PID | -- CMD | diff OLD NEW | score FILE | set FILE",
                   help="a pid to attach to, a command after '--' to start, or a sub-action")
    p.add_argument("--out", type=Path, help="profile file to write (record mode)")
    p.add_argument("--functions", nargs="+", metavar="F",
                   help="functions to record (names or 0x addresses; default: every exported "
                        "function of the executable)")
    p.add_argument("--window", type=int, default=15, help="context window width (default: 15)")
    p.add_argument("--args", type=int, default=3, help="argument registers kept per call (0-6)")
    p.add_argument("--ret-width", type=int, choices=[32, 64], default=64,
                   help="32 sign-extends return values (C int functions); default 64")
    p.add_argument("--duration", type=float, help="stop recording after this many seconds")
    p.add_argument("--merge", action="store_true", help="merge into --out if it already exists")
    p.add_argument("--trace", action="store_true", help="print every call in the trace format")
    p.add_argument("--threshold", type=float, default=0.2,
                   help="diff: context distance or call-frequency change counted as significant")
    p.add_argument("--context-width", type=int, default=3,
                   help="diff: compare contexts on their first N functions (default: 3)")
    p.add_argument("--sizes", default="1,2,3,5,10,15",
                   help="score: window sizes to print (default: 1,2,3,5,10,15)")
    p.add_argument("--strategy", choices=STRATEGIES,
                   help="set: default SEV scheduling strategy (initially context)")
    p.add_argument("--function-strategy", nargs="+", metavar="F=S",
                   help="set: strategy for one function, e.g. find_slot=round-robin")
    p.add_argument("--anomaly-width", type=int, metavar="N",
                   help="set: alert on call windows of N functions never seen in training (0: off)")
    p.add_argument("--on-anomaly", choices=["log", "supervise"],
                   help="set: on an anomaly also supervise that path (default: log only)")
    p.add_argument("--fixed-value", metavar="V|sev",
                   help="set: heal with this fixed value instead of SEV (vanilla error "
                        "virtualization, e.g. to compare); 'sev' goes back to SEV")


def run(args: argparse.Namespace) -> int:
    words = list(args.target)
    if words[:1] == ["diff"]:
        return _diff(args, words[1:])
    if words[:1] == ["score"]:
        return _score(args, words[1:])
    if words[:1] == ["set"]:
        return _set(args, words[1:])
    return _record(args, words)


def _load(path: str) -> Profile:
    from healer.profile import ProfileError, load

    try:
        return load(path)
    except ProfileError as exc:
        raise CliError(str(exc)) from None


def _diff(args: argparse.Namespace, files: list[str]) -> int:
    from healer.profile import diff

    if len(files) != 2:
        raise CliError("usage: healer profile diff OLD NEW (two profile files)", status=2)
    old, new = _load(files[0]), _load(files[1])
    changes = diff(old, new, threshold=args.threshold, context_width=args.context_width)
    for c in changes:
        mark = "!" if c.significant else " "
        if c.kind != "changed":
            print(f"{mark} {c.name}: {c.kind}")
            continue
        parts = []
        if c.values_added or c.values_removed:
            parts.append(f"return values +{list(c.values_added)} -{list(c.values_removed)}")
        if c.context_distance:
            parts.append(f"contexts differ {c.context_distance:.0%}")
        if c.frequency_change:
            parts.append(f"calls per run changed {c.frequency_change:.0%}")
        print(f"{mark} {c.name}: {'; '.join(parts)}")
    significant = sum(c.significant for c in changes)
    print(f"{len(changes)} function(s) differ, {significant} beyond the threshold "
          f"({args.threshold:g})")
    return 1 if significant else 0


def _score(args: argparse.Namespace, files: list[str]) -> int:
    from healer.profile import predictability_by_size

    if len(files) != 1:
        raise CliError("usage: healer profile score FILE", status=2)
    prof = _load(files[0])
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        raise CliError(f"--sizes {args.sizes!r}: give window sizes like 1,3,15", status=2) from None
    print(f"{'function':24} {'calls':>7} {'values':>6} " + " ".join(f"S{s:<4}" for s in sizes))
    for name, fp in sorted(prof.functions.items()):
        scores = predictability_by_size(fp, max(sizes))
        print(f"{name:24} {fp.calls:7} {len(fp.values):6} "
              + " ".join(f"{scores[s - 1]:.2f} " for s in sizes))
    return 0


def _set(args: argparse.Namespace, files: list[str]) -> int:
    from healer.profile import ProfileError, check_settings, save

    if len(files) != 1:
        raise CliError("usage: healer profile set FILE [--strategy S] [--function-strategy F=S] "
                       "[--anomaly-width N] [--on-anomaly log|supervise] [--fixed-value V|sev]",
                       status=2)
    prof = _load(files[0])
    st = dict(prof.settings)
    if args.strategy is not None:
        st["strategy"] = args.strategy
    per = dict(st.get("strategies", {}))
    for item in args.function_strategy or []:
        fn, sep, strategy = item.partition("=")
        if not sep or not fn:
            raise CliError(f"--function-strategy {item!r}: write FUNCTION=STRATEGY", status=2)
        per[fn] = strategy
    st["strategies"] = per
    if args.anomaly_width is not None:
        st["anomaly_width"] = args.anomaly_width
    if args.on_anomaly is not None:
        st["anomaly_action"] = args.on_anomaly
    if args.fixed_value == "sev":
        st.pop("fixed", None)
    elif args.fixed_value is not None:
        try:
            st["fixed"] = int(args.fixed_value, 0)
        except ValueError:
            raise CliError(f"--fixed-value {args.fixed_value!r}: give an integer (e.g. 0 or -1) "
                           "or 'sev'", status=2) from None
    try:
        check_settings(st.get("strategy", "context"), per, st.get("anomaly_action", "log"))
    except ValueError as exc:
        raise CliError(str(exc), status=2) from None
    unknown = sorted(set(per) - set(prof.functions))
    if unknown:
        raise CliError(f"{', '.join(unknown)}: not in {files[0]}; name functions the profile "
                       "recorded (healer profile score FILE lists them)", status=2)
    prof.settings = st
    try:
        save(prof, files[0])
    except ProfileError as exc:
        raise CliError(str(exc)) from None
    print(f"{files[0]}: {json.dumps(st, sort_keys=True)}")
    return 0


def _record(args: argparse.Namespace, words: list[str]) -> int:
    from healer.profile import ProfileError, ProfileSession, SessionError, merge, save

    if args.out is None:
        raise CliError("record mode needs --out FILE (where the profile is written)", status=2)
    if not words:
        raise CliError("give a PID to attach to or a command after '--'", status=2)
    if not 1 <= args.window <= 64:
        raise CliError(f"--window {args.window}: use a width from 1 to 64", status=2)
    base = _load(str(args.out)) if args.merge and args.out.exists() else None
    if base is not None and (base.window, base.ret_bits) != (args.window, args.ret_width):
        raise CliError(f"{args.out} was recorded with --window {base.window} --ret-width "
                       f"{base.ret_bits}; use the same options to merge", status=2)
    session = ProfileSession(window=args.window, functions=args.functions, args=args.args,
                             ret_bits=args.ret_width,
                             on_trace=print if args.trace else None)
    spawned = False
    try:
        with _until_interrupted():  # from the start: a stop while attaching still saves
            if len(words) == 1 and words[0].isdigit():
                session.attach(int(words[0]))
            else:
                spawned = True
                session.spawn(words)
            log.info("recording", pid=session.pid, functions=len(session.functions),
                     window=args.window)
            session.wait_detached(args.duration)
        profile = session.profile()
    except SessionError as exc:
        raise CliError(str(exc)) from None
    finally:
        session.close()
        if spawned:
            session.kill()  # a command we started ends with the recording
        sys.stdout.flush()
    if base is not None:
        profile = merge(base, profile)
    try:
        save(profile, args.out)
    except ProfileError as exc:
        raise CliError(str(exc)) from None
    calls = sum(fp.calls for fp in profile.functions.values())
    print(f"profile: {len(profile.functions)} functions, {calls} calls, window {profile.window} "
          f"-> {args.out}", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _until_interrupted() -> Iterator[None]:
    """Ctrl-C / SIGTERM end the recording (the profile is still written)."""
    def stop(signum: int, frame: object) -> None:
        raise _Stop

    old = signal.signal(signal.SIGTERM, stop)
    try:
        with contextlib.suppress(KeyboardInterrupt, _Stop):
            yield
    finally:
        signal.signal(signal.SIGTERM, old)


class _Stop(Exception):
    pass

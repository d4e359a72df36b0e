"""``healer inject PID``: fault injection (the SEV paper's control plane, section 3.3)."""

from __future__ import annotations

import argparse
import json

from healer import control
from healer._cli_common import operator_errors, pid_argument
from sead.cli import CliError

NAME = "inject"
HELP = "make a function (or random supervised calls) fail, to test how the server heals"
DESCRIPTION = """\
Make the named function's next call fail (--always: every call), or each supervised call fail
with probability P. The function runs, its effects are rolled back, and its return value is
chosen like any heal (policy, else profile, else -1); an `inject` event names the function, how
the value was selected and the value. --probability 0 stops random injection.

  healer inject 4242 --function find_slot
  healer inject 4242 --function find_slot --always
  healer inject 4242 --probability 0.01
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    pid_argument(p)
    p.add_argument("--function", metavar="F", help="the function to fail")
    p.add_argument("--probability", type=float, metavar="P", help="fail random supervised calls")
    p.add_argument("--always", action="store_true", help="fail every call of --function")


def run(args: argparse.Namespace) -> int:
    if args.function is None and args.probability is None:
        raise CliError("give --function F or --probability P", 2)
    if args.probability is not None and not 0 <= args.probability <= 1:
        raise CliError(f"--probability must be within 0-1 (got {args.probability})", 2)
    result = operator_errors(control.request, args.pid, "inject", function=args.function,
                             probability=args.probability, always=args.always)
    print(json.dumps(result))
    return 0

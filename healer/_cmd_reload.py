"""``healer reload PID``: re-read policy, profile and coverage."""

from __future__ import annotations

import argparse
import json

from healer import control
from healer._cli_common import operator_errors, pid_argument
from healer.config import COVERAGE_HELP

NAME = "reload"
HELP = "re-read the repair policy, profile and coverage of a supervised process"
DESCRIPTION = """\
Re-read the files given to `healer attach` (policy, profile, coverage LIST) and swap them in while
the target runs; with --coverage, switch to a new coverage policy. A file that fails to load is
reported and the previous configuration stays in force. Sending SIGUSR1 to the target does the
same (unless the target handles SIGUSR1 itself).

  healer reload 4242
  healer reload 4242 --coverage all
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    pid_argument(p)
    p.add_argument("--coverage", metavar="SPEC", help=f"new coverage: {COVERAGE_HELP}")


def run(args: argparse.Namespace) -> int:
    result = operator_errors(control.request, args.pid, "reload", coverage=args.coverage)
    print(json.dumps(result, indent=2))
    return 0

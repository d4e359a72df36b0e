"""``healer alert PID``: an external detector asks for supervision now."""

from __future__ import annotations

import argparse
import json

from healer import control
from healer._cli_common import operator_errors, pid_argument

NAME = "alert"
HELP = "an external detector (IDS) asks the healer to supervise a function, or everything, now"
DESCRIPTION = """\
An intrusion detector that sees anomalous input aimed at PID asks for protection (STEM section
3.3): with --function F, F is supervised from its next call whatever the coverage; without it,
coverage switches to ALL. The change lasts until the next reload.

  healer alert 4242 --function parse_request
  healer alert 4242
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    pid_argument(p)
    p.add_argument("--function", metavar="F", help="the function to supervise (default: all)")


def run(args: argparse.Namespace) -> int:
    print(json.dumps(operator_errors(control.request, args.pid, "alert", function=args.function)))
    return 0

"""``healer detach PID``: remove the healer, leave the process running."""

from __future__ import annotations

import argparse

from healer import control
from healer._cli_common import operator_errors, pid_argument

NAME = "detach"
HELP = "unload the healer from a supervised process and leave the process healthy"
DESCRIPTION = """\
Tell the healer that supervises PID to unload its agent: hooks and signal handlers are removed,
open transactions finish normally, and the process keeps serving. The `healer attach` process
then exits with status 0.

  healer detach 4242
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    pid_argument(p)


def run(args: argparse.Namespace) -> int:
    operator_errors(control.request, args.pid, "detach")
    print(f"healer detaching from {args.pid}")
    return 0

"""``healer attach PID``: supervise a running process."""

from __future__ import annotations

import argparse
import functools

import trio

from healer._cli_common import CONTROL_HELP, add_supervise_arguments, operator_errors, options_from
from healer.supervisor import supervise

NAME = "attach"
HELP = "inject the healer into a running process and supervise it until Ctrl-C or it exits"
DESCRIPTION = f"""\
Attach to a running native server (after its start-up, as the STEM paper attaches to Apache) and
run the chosen functions as transactions: a fault (SIGSEGV, SIGBUS, SIGFPE, SIGILL, stack
smashing, __chk_fail, abort) in a supervised function is healed by returning from it with a value
chosen by the repair policy, else the profile, else -1, and logged as a `heal` event. Ctrl-C
detaches and leaves the process running.

  healer attach 4242
  healer attach 4242 --coverage all --policy login.pol
  healer attach $(pgrep -o apache2) --follow-children --control /run/sead/ctl.sock
  healer attach 4242 --coverage list:functions.txt     # one function name a line

{CONTROL_HELP}
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pid", type=int, metavar="PID", help="the process to supervise")
    add_supervise_arguments(p)


def run(args: argparse.Namespace) -> int:
    main = functools.partial(supervise, options_from(args), pid=args.pid,
                             follow_children=args.follow_children)
    return operator_errors(trio.run, main)

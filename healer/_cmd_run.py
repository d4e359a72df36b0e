"""``healer run -- CMD ARGS...``: start a command under supervision."""

from __future__ import annotations

import argparse
import functools

import trio

from healer._cli_common import CONTROL_HELP, add_supervise_arguments, operator_errors, options_from
from healer.supervisor import supervise
from sead.cli import CliError

NAME = "run"
HELP = "start a command under supervision from its first instruction"
DESCRIPTION = f"""\
Start CMD with the healer loaded before its first instruction (same options as `attach`). The
healer runs until the command exits or Ctrl-C (which detaches and leaves it running).

  healer run -- ./server 8080
  healer run --coverage all --policy login.pol -- ./login_server 7000
  healer run --follow-children -- /usr/sbin/apache2 -k start

{CONTROL_HELP}
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_supervise_arguments(p)
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS",
                   help="the command to start")


def run(args: argparse.Namespace) -> int:
    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not argv:
        raise CliError("no command given; write it after '--', e.g. healer run -- ./server 8080", 2)
    main = functools.partial(supervise, options_from(args), argv=argv,
                             follow_children=args.follow_children)
    return operator_errors(trio.run, main)

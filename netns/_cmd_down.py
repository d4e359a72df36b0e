"""``python -m netns down``: remove a layout."""

from __future__ import annotations

import argparse

from netns._errors import NetnsError
from netns._topology import down
from sead.cli import CliError

NAME = "down"
HELP = "remove a layout's namespaces and stop the processes left in them (idempotent)"
DESCRIPTION = """\
Remove NAME-client, NAME-gw, NAME-server and NAME-backend. Processes still inside them get SIGTERM,
then SIGKILL after two seconds. Namespaces already gone are skipped.

  python -m netns down
  python -m netns down --name lab
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="sead", help="layout name (default: sead)")


def run(args: argparse.Namespace) -> int:
    try:
        removed = down(args.name)
    except NetnsError as exc:
        raise CliError(str(exc)) from None
    print(f"removed: {', '.join(removed)}" if removed else f"nothing to remove for {args.name!r}")
    return 0

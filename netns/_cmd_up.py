"""``python -m netns up``: build (or complete) a layout."""

from __future__ import annotations

import argparse

from netns._cmd_status import describe
from netns._errors import NetnsError
from netns._topology import up
from sead.cli import CliError

NAME = "up"
HELP = "build the client/gw/server/backend namespaces (idempotent)"
DESCRIPTION = """\
Build the layout NAME: namespaces NAME-client, NAME-gw, NAME-server, NAME-backend, veth links from
the gateway to each, addresses, and no forwarding: the server reaches only 10.231.2.1 (the
gateway), the client only 10.231.1.1. Running it again completes a half-built layout.

  python -m netns up
  python -m netns up --name lab --routed    # kernel routing too (benchmark baseline only)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="sead", help="layout name, the namespaces' prefix "
                        "(default: sead)")
    parser.add_argument("--routed", action="store_true",
                        help="also route client<->server<->backend through the kernel (bypasses "
                        "the gateway: only for measuring the native baseline)")


def run(args: argparse.Namespace) -> int:
    try:
        topo = up(args.name, routed=args.routed)
    except NetnsError as exc:
        raise CliError(str(exc)) from None
    print(describe(topo.name))
    return 0

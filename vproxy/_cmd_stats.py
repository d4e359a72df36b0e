"""``vproxy stats``: a running gateway's counters, over its control socket."""

from __future__ import annotations

import argparse
import json

import trio

from sead.cli import CliError
from vproxy.testing import ScriptedController

NAME = "stats"
HELP = "print a running gateway's counters and hold-time percentiles"
DESCRIPTION = """\
Connect to a gateway's control socket as an admin (token read from PATH.token, so run it as the
socket's owner) and print its counters: connections, bytes passed/held/released/discarded/replayed,
transactions committed/aborted, replacements, bounds fired, refused controllers, and hold-time
percentiles in microseconds.

examples:
  vproxy stats --control /run/sead/ctl.sock
  vproxy stats --control /run/sead/ctl.sock --json | jq .hold_us
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--control", metavar="PATH", required=True,
                        help="the gateway's control socket (vproxy serve --control)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")


async def _fetch(path: str) -> dict[str, object]:
    ctl = await ScriptedController.connect(path, role="admin")
    async with ctl:
        return await ctl.stats()


def run(args: argparse.Namespace) -> int:
    try:
        stats = trio.run(_fetch, args.control)
    except FileNotFoundError:
        raise CliError(f"{args.control} (or its .token) does not exist: is `vproxy serve "
                       f"--control {args.control}` running?") from None
    except PermissionError:
        raise CliError(f"no permission to read {args.control}.token or connect: run as the "
                       "socket's owner (root or --control-user)") from None
    except (OSError, AssertionError, trio.TooSlowError) as exc:
        raise CliError(f"gateway at {args.control} did not answer STATS: {exc}") from None
    if args.json:
        print(json.dumps(stats))
    else:
        for key, value in stats.items():
            print(f"{key:22} {value}")
    return 0

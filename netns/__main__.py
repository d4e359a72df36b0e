"""``python -m netns up|down|status`` (subcommands live in ``netns/_cmd_*.py``)."""

import sys

from sead.cli import run_cli

DESCRIPTION = """\
The network namespaces that put a protected server behind the gateway: client, gw (where vproxy
runs), server and backend. The server can reach nothing but the gateway's address on its own link.

  python -m netns up                   # build the layout "sead" (idempotent)
  ip netns exec sead-server apache2 -X -f /path/httpd.conf
  python -m netns status               # what exists, addresses, links
  python -m netns down                 # remove it and stop every process left inside
"""


def main(argv: list[str] | None = None) -> int:
    return run_cli("python -m netns", DESCRIPTION, "netns", argv)


if __name__ == "__main__":
    sys.exit(main())

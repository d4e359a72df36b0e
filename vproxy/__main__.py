"""``vproxy`` command line (subcommands live in ``vproxy/_cmd_*.py``)."""

import sys

from sead.cli import run_cli

DESCRIPTION = """\
The gateway in front of (and behind) a protected server. It relays TCP, and once a healer guards the
server it holds every byte the server writes until the healer says the transaction that wrote it
committed; output of an aborted transaction never reaches the peer.

  vproxy serve --upstream 127.0.0.1:8080 --listen 0.0.0.0:80 --control /run/sead/ctl.sock
  vproxy stats --control /run/sead/ctl.sock
"""


def main(argv: list[str] | None = None) -> int:
    return run_cli("vproxy", DESCRIPTION, "vproxy", argv)


if __name__ == "__main__":
    sys.exit(main())

"""``healer`` command line (subcommands live in ``healer/_cmd_*.py``)."""

import sys

from sead.cli import run_cli

DESCRIPTION = """\
Supervise a running native server without its source: functions run as transactions; a fault
(SIGSEGV, stack smashing, abort, a failed integrity check) rolls memory back and returns from the
faulting function with a value chosen by the repair policy or the learned behaviour profile.

  healer attach PID --coverage cosak --policy repair.pol --control /run/sead/ctl.sock
  healer run --coverage all -- ./server 8080
"""


def main(argv: list[str] | None = None) -> int:
    return run_cli("healer", DESCRIPTION, "healer", argv)


if __name__ == "__main__":
    sys.exit(main())

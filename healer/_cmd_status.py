"""``healer status PID``: what the healer of PID supervises and has healed."""

from __future__ import annotations

import argparse
import json

from healer import control
from healer._cli_common import operator_errors, pid_argument

NAME = "status"
HELP = "show coverage, transactions, heals and plugin state of a supervised process"
DESCRIPTION = """\
Ask the `healer attach`/`healer run` process that supervises PID for the agent's state: coverage
mode and hooked functions (and those that could not be hooked), supervised calls, heals, refusals,
injected faults, and each plugin's status (wire, memlog, policy, profile). Prints JSON.

  healer status 4242
  healer status 4242 | jq '.agents[].txn.heals'
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    pid_argument(p)


def run(args: argparse.Namespace) -> int:
    print(json.dumps(operator_errors(control.request, args.pid, "status"), indent=2))
    return 0

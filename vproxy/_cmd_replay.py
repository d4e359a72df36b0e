"""``vproxy replay SCENARIO.yaml...``: play payment scenarios and print a report per scenario."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from functools import partial
from pathlib import Path

import trio

import netns
from sead.cli import CliError
from targets import BuildError
from vproxy import scenario as sc

NAME = "replay"
HELP = "replay payment scenarios (YAML) against payfront/ledger and judge them"
DESCRIPTION = """\
Play every conversation of a scenario file against the payment service (payfront in front, ledger
behind), several clients at once, check each reply line, then audit the ledger: expected final
balances, money conserved (same total, no transfer left half-done), every applied transfer reported
to exactly one client. Prints a short report per scenario; exits 1 if any scenario failed.

By default it builds targets/ledger.c and targets/payfront.c, starts both on 127.0.0.1 with the
scenario's accounts, and stops them afterwards. Against servers that already run (a new build, a
deployment behind a gateway), give their addresses: the ledger must hold the scenario's initial
balances.

  vproxy replay tests/scenarios/basic.yaml
  vproxy replay -v tests/scenarios/*.yaml
  vproxy replay --namespaces tests/scenarios/basic.yaml    # through vproxy on both paths (root)
  vproxy replay --namespaces --heal tests/scenarios/payfront.pol tests/scenarios/attacks.yaml
  vproxy replay --payfront-bin ./payfront-new tests/scenarios/recorded.yaml
  vproxy replay --front 127.0.0.1:7000 --ledger 127.0.0.1:7001 recorded.yaml

The format is in docs/scenarios.md; `vproxy record` writes scenarios from live traffic.
"""


def _addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:7000)")
    return host.strip("[]"), int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenarios", nargs="+", metavar="SCENARIO.yaml", help="scenario files")
    parser.add_argument("--front", type=_addr, metavar="HOST:PORT",
                        help="a running payfront (or the gateway in front of it); needs --ledger")
    parser.add_argument("--ledger", type=_addr, metavar="HOST:PORT",
                        help="the running ledger, audited directly with DUMP; needs --front")
    parser.add_argument("--payfront-bin", metavar="PATH",
                        help="use this payfront executable instead of building targets/payfront.c")
    parser.add_argument("--ledger-bin", metavar="PATH",
                        help="use this ledger executable instead of building targets/ledger.c")
    parser.add_argument("--opt", default="-O2", choices=["-O0", "-O1", "-O2", "-O3"],
                        help="gcc optimisation for the built targets (default -O2)")
    parser.add_argument("--namespaces", action="store_true",
                        help="run in fresh network namespaces with vproxy serve on payfront's "
                             "client and ledger paths (root); the report shows the gateway's "
                             "counters")
    parser.add_argument("--heal", metavar="POLICY", type=Path,
                        help="with --namespaces: attach the healer to payfront with this repair "
                             "policy (supervising check_credentials and handle_transfer)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print the transcript of every failed conversation")


def _start(args: argparse.Namespace, servers: sc.Servers, scenario: sc.Scenario) -> sc.Endpoints:
    if args.front is not None:
        (fh, fp), (lh, lp) = args.front, args.ledger
        return sc.Endpoints(sc.tcp_opener(fh, fp), sc.tcp_opener(lh, lp), f"{fh}:{fp}",
                            f"{lh}:{lp}")
    return sc.start_direct(servers, scenario, opt=args.opt, payfront_bin=args.payfront_bin,
                           ledger_bin=args.ledger_bin)


def _replay_in_namespaces(args: argparse.Namespace, scenario: sc.Scenario) -> sc.Outcome:
    with netns.topology(netns.unique_name("replay")) as topo, \
            tempfile.TemporaryDirectory(prefix="sead-replay-") as tmp, sc.Servers() as servers:
        layout = sc.start_in_namespaces(servers, scenario, topo, Path(tmp) / "ctl.sock",
                                        opt=args.opt, payfront_bin=args.payfront_bin)
        if args.heal is not None:
            sc.attach_healer(servers, layout, args.heal)
        assert layout.control is not None
        outcome = trio.run(partial(sc.run_scenario, scenario, layout.endpoints,
                                   counters=partial(sc.gateway_counters, layout.control)))
        outcome.notes += servers.notes(settle=_settle(outcome))
    return outcome


def _settle(outcome: sc.Outcome) -> float:
    # A failed conversation may mean a crashed server: give it time to report how it ended.
    return 0.5 if not all(c.ok for c in outcome.conversations) else 0.0


def replay_one(args: argparse.Namespace, scenario: sc.Scenario) -> sc.Outcome:
    """Start (or reach) the servers, play ``scenario``, stop what was started."""
    if args.namespaces:
        return _replay_in_namespaces(args, scenario)
    with sc.Servers() as servers:
        endpoints = _start(args, servers, scenario)
        outcome = trio.run(sc.run_scenario, scenario, endpoints)
        outcome.notes += servers.notes(settle=_settle(outcome))
    return outcome


def run(args: argparse.Namespace) -> int:
    if args.namespaces and args.front is not None:
        raise CliError("--namespaces starts its own servers: leave out --front/--ledger", 2)
    if args.heal is not None and not args.namespaces:
        raise CliError("--heal needs --namespaces (the healer pairs with that layout's gateway)", 2)
    if args.heal is not None and not args.heal.is_file():
        raise CliError(f"--heal {args.heal}: no such policy file (e.g. tests/scenarios/"
                       "payfront.pol)", 2)
    if (args.front is None) != (args.ledger is None):
        raise CliError("--front and --ledger go together: give both addresses, or neither to "
                       "start local servers", status=2)
    scenarios = []
    for path in args.scenarios:
        try:
            scenarios.append(sc.load(path))
        except sc.ScenarioError as exc:
            raise CliError(f"{exc} (format: docs/scenarios.md)", status=2) from None
    failed = 0
    for scenario in scenarios:
        try:
            outcome = replay_one(args, scenario)
        except (sc.ServerError, sc.UnreachableError, BuildError, netns.NetnsError) as exc:
            raise CliError(f"{scenario.path}: {exc}") from None
        with contextlib.suppress(BrokenPipeError):
            print(sc.render(outcome, verbose=args.verbose), flush=True)
        failed += not outcome.passed
    return 1 if failed else 0

"""Shared pieces of the healer subcommands: the supervision options of ``attach``/``run`` and the
translation of HealerError into the operator's one-line CliError."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from healer.config import COVERAGE_HELP, Options
from healer.errors import HealerError
from sead.cli import CliError

T = TypeVar("T")

CONTROL_HELP = """\
While it runs, the healer serves a control socket $SEAD_RUN_DIR/healer-PID.sock (default
/run/sead, mode 0600) used by `healer status|reload|detach|alert|inject PID`. Signals to the
target: SIGUSR1 reloads policy and coverage, SIGUSR2 logs the agent's debug state (unless the
target handles these signals itself, as Apache does: then use `healer reload`)."""


def add_supervise_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coverage", default="cosak", metavar="SPEC",
                   help=f"which functions run as transactions: {COVERAGE_HELP} (default: cosak, "
                        "depth 6 from an input system call)")
    p.add_argument("--policy", type=Path, metavar="FILE", help="repair policy file (healer policy)")
    p.add_argument("--profile", type=Path, metavar="FILE",
                   help="behaviour profile (healer profile) for Smart Error Virtualization")
    p.add_argument("--control", type=Path, metavar="PATH",
                   help="vproxy control socket; the pairing token is read from PATH.token")
    p.add_argument("--follow-children", action="store_true",
                   help="also supervise every child the target forks (prefork servers), "
                        "including children that exist at attach time")
    p.add_argument("--no-rollback", dest="rollback", action="store_false",
                   help="do not roll memory back on a heal (tests, measurements)")
    p.add_argument("--disable-plugin", action="append", default=[], metavar="NAME",
                   choices=["wire", "memlog", "policy", "profile"],
                   help="leave an agent plugin out (repeatable): wire, memlog, policy, profile")


def options_from(args: argparse.Namespace) -> Options:
    return Options(coverage=args.coverage, policy=args.policy, profile=args.profile,
                   control=args.control, rollback=args.rollback,
                   disabled=tuple(args.disable_plugin))


def operator_errors(fn: Callable[..., T], *a: Any, **kw: Any) -> T:
    """Call ``fn``; a HealerError becomes a CliError (one line for the operator), also when a
    nursery wrapped it in an exception group; Ctrl-C during start-up becomes status 130."""
    try:
        return fn(*a, **kw)
    except HealerError as exc:
        raise CliError(str(exc)) from None
    except BaseExceptionGroup as group:
        errors = group.subgroup(HealerError)
        if errors is not None:
            raise CliError(str(_first(errors))) from None
        if group.subgroup(KeyboardInterrupt) is not None:
            raise KeyboardInterrupt from None
        raise


def _first(group: BaseException) -> BaseException:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


def pid_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("pid", type=int, metavar="PID",
                   help="the supervised process (as given to attach)")

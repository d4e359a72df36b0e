"""The frame shared by the ``vproxy`` and ``healer`` commands.

Each subcommand is a module ``<package>._cmd_<name>`` defining ``NAME``, ``HELP``, an
``add_arguments(parser)`` function and ``run(args) -> int``; the frame discovers them, so adding a
command never edits a shared file. Errors meant for the operator are raised as ``CliError`` and
printed as one line naming the cause and the fix; exit status 2 is a usage error, 1 a failure.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

from sead.logging import configure_logging


class CliError(Exception):
    """An error for the operator: the message says what went wrong and what to do."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _commands(package: str) -> list[ModuleType]:
    pkg = importlib.import_module(package)
    names = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("_cmd_"))
    return [importlib.import_module(f"{package}.{name}") for name in names]


def build_parser(prog: str, description: str, package: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"],
                        help="log verbosity (default: info)")
    parser.add_argument("--log-json", action=argparse.BooleanOptionalAction, default=None,
                        help="JSON lines instead of console output "
                             "(default: JSON unless stderr is a tty)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in _commands(package):
        p = sub.add_parser(mod.NAME, help=mod.HELP,
                           description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def run_cli(prog: str, description: str, package: str, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, configure logging once, run the chosen subcommand and map errors to exits."""
    args = build_parser(prog, description, package).parse_args(argv)
    configure_logging(args.log_level, json=args.log_json)
    try:
        return int(args._run(args) or 0)
    except CliError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130

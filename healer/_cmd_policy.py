"""``healer policy check FILE [--binary PATH]``: parse, resolve and compile a repair policy."""

from __future__ import annotations

import argparse
import json
import sys

from healer import policy
from sead.cli import CliError

NAME = "policy"
HELP = "check a repair policy file (syntax, names against the binary's symbols)"
DESCRIPTION = """\
Check a repair policy (the language of STEM/SEAD section 4, see docs/repair-policy.md) before
giving it to `healer run/attach --policy`. Every problem is printed as FILE:LINE:COLUMN: message
naming what was expected and what was found; the exit status is 0 when the policy can be used, 1
when not.

  healer policy check policies/figure3.pol
  healer policy check policies/figure3.pol --binary ./login_server   # resolve names too
  healer policy check repair.pol --binary /usr/sbin/apache2 --print  # show the compiled form

A policy (Figure 3 of the paper; more in policies/):

  symval AUTHENTICATION_FAILURE = 0;
  ivp MeasureStack :=: ('raddress=='shadowstack[0]);
  rp FixAuth := ('rvalue==AUTHENTICATION_FAILURE), (rollback);
  tp check_credentials &MeasureStack :=: &FixAuth;
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="policy_action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="parse, resolve and compile FILE",
                               description=DESCRIPTION,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("file", metavar="FILE", help="the policy file")
    check.add_argument("--binary", metavar="PATH",
                       help="resolve functions and globals against this executable's symbol table")
    check.add_argument("--print", action="store_true", dest="print_compiled",
                       help="print the compiled form (JSON) the agent interprets")


def run(args: argparse.Namespace) -> int:
    try:
        compiled = policy.load(args.file, binary=args.binary)
    except policy.BinaryError as exc:
        raise CliError(f"{exc}") from None
    except policy.PolicyError as exc:
        print(exc, file=sys.stderr)
        count = len(exc.diagnostics)
        print(f"{args.file}: {count} error{'s' if count > 1 else ''}; the policy cannot be used",
              file=sys.stderr)
        return 1
    for warning in compiled["warnings"]:
        print(warning, file=sys.stderr)
    if args.print_compiled:
        print(json.dumps(compiled, indent=2))
    functions = ", ".join(compiled["functions"]) or "no function"
    default = "; a default tp for every other function" if compiled["default"] else ""
    against = f"checked against {args.binary}" if args.binary else "names not checked (no --binary)"
    print(f"{args.file}: ok: {functions}{default}; {against}")
    return 0

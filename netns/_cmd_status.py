"""``python -m netns status``: which layouts exist, their addresses and links."""

from __future__ import annotations

import argparse

from pyroute2 import NetNS

from netns._enter import exists, pids_in, require_root
from netns._errors import NetnsError
from netns._topology import PREFIX, ROLES, Topology, existing
from sead.cli import CliError

NAME = "status"
HELP = "list layouts: namespaces, interfaces, addresses, processes"
DESCRIPTION = """\
Show every layout whose namespaces start with PREFIX- (default sead-), including those left behind
by tests, and what is inside each namespace.

  python -m netns status
  python -m netns status --prefix lab
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefix", default=PREFIX, help=f"name prefix (default: {PREFIX})")


def describe(name: str) -> str:
    """A few lines per namespace of layout ``name``: interfaces, state, addresses, process count."""
    lines = [f"layout {name}:"]
    for role in ROLES:
        ns = Topology(name).ns(role)
        if not exists(ns):
            lines.append(f"  {ns:<28} missing")
            continue
        with NetNS(ns) as ipr:
            links = {link["index"]: (link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_OPERSTATE"))
                     for link in ipr.get_links()}
            addrs: dict[int, list[str]] = {}
            for a in ipr.get_addr(family=2):
                addrs.setdefault(a["index"], []).append(
                    f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
        ifs = ", ".join(f"{n} {state.lower()} {' '.join(addrs.get(i, []))}".rstrip()
                        for i, (n, state) in sorted(links.items()) if n != "lo")
        lines.append(f"  {ns:<28} {ifs or 'no links'}; {len(pids_in(ns))} processes")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        require_root("inspecting network namespaces")
        layouts = existing(args.prefix)
        if not layouts:
            print(f"no layouts with prefix {args.prefix!r}")
        for name in layouts:
            print(describe(name))
    except NetnsError as exc:
        raise CliError(str(exc)) from None
    return 0

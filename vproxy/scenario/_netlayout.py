"""The payment service in network namespaces with one gateway on both of payfront's paths.

::

    client ns        gw ns: vproxy serve                         server ns         backend ns
    runner ──► 10.231.1.1:7000 ─(front route, line)─► 10.231.2.2:7000 payfront
                                                       payfront ─► 10.231.2.1:7001
               10.231.2.1:7001 ─(back route, line)──────────────────────────► 10.231.3.2:7001 ledger

payfront can reach nothing but the gateway (netns gives it no other route), so every byte it sends a
client or the ledger crosses vproxy. The runner audits the ledger from inside the backend namespace
(over loopback there, so the audit never shows up in a capture of the ledger link).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

import netns
from vproxy.scenario._format import Scenario
from vproxy.scenario._procs import ServerError, Servers, Started
from vproxy.scenario._runner import Endpoints, Opener
from vproxy.scenario._system import ledger_argv, payfront_argv
from vproxy.testing import ScriptedController

FRONT_PORT = 7000
LEDGER_PORT = 7001


@dataclass(frozen=True, slots=True)
class Layout:
    """A running namespaced system: how to reach it, and what a healer needs to attach."""

    endpoints: Endpoints
    topo: netns.Topology
    payfront: Started
    control: Path | None  # the gateway's control socket (None: no gateway)


_COUNTERS = ("committed", "aborted", "bytes_held", "bytes_released", "bytes_discarded",
             "replacements", "bounds_fired")


async def gateway_counters(control: Path) -> dict[str, int]:
    """The gateway's counters over its control socket (admin role, token from ``.token``).

    Error handling: OSError/TimeoutError if the gateway does not answer."""
    ctl = await ScriptedController.connect(str(control), role="admin")
    async with ctl:
        data = await ctl.stats()
    return {k: int(data.get(k, 0)) for k in _COUNTERS}  # type: ignore[call-overload]


def healer_argv(pid: int, control: Path, policy: Path, coverage: Path) -> list[str]:
    """``healer attach`` with the repair ``policy``, supervising the functions listed in the file
    ``coverage`` (one name a line)."""
    return [sys.executable, "-m", "healer", "attach", str(pid), "--control", str(control),
            "--policy", str(policy), "--coverage", f"list:{coverage}"]


def attach_healer(servers: Servers, layout: Layout, policy: Path,
                  functions: Sequence[str] = ("check_credentials", "handle_transfer"),
                  extra: Sequence[str] = (), timeout: float = 60.0) -> Started:
    """Attach the healer to the layout's payfront; returns once it logs ``healer ready``.

    The healer runs on the host: Frida reaches payfront by pid, and the agent inside payfront
    reaches the gateway's control socket by its path (Unix sockets with a path are not bound to a
    network namespace). The coverage list is written next to the control socket.

    Args:
        extra: more ``healer attach`` flags (e.g. ``--disable-plugin memlog``).

    Error handling: ServerError if it exits or does not report attached within ``timeout``.
    """
    assert layout.control is not None, "the healer pairs with the gateway's control socket"
    coverage = layout.control.with_name("payfront.functions")
    coverage.write_text("".join(f"{name}\n" for name in functions))
    argv = [*healer_argv(layout.payfront.proc.pid, layout.control, policy, coverage), *extra]
    return servers.start("healer", argv, timeout=timeout, ready=b"healer ready",
                         merge_stderr=True)


def ns_opener(ns: str, host: str, port: int) -> Opener:
    """Opens a TCP connection from inside namespace ``ns``."""
    async def open_() -> trio.abc.Stream:
        sock = trio.socket.from_stdlib_socket(netns.socket_in(ns))
        try:
            await sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)
    return open_


def gateway_argv(topo: netns.Topology, control: Path, on_abort: str = "drop") -> list[str]:
    """``vproxy serve`` with a front route (clients -> payfront) and a back route (-> ledger)."""
    return [sys.executable, "-m", "vproxy", "--log-level", "warning", "serve",
            "--route", f"{topo.gw_client_addr}:{FRONT_PORT}={topo.server_addr}:{FRONT_PORT},line",
            "--route", f"{topo.gw_server_addr}:{LEDGER_PORT}={topo.backend_addr}:{LEDGER_PORT},"
                       "line,back",
            "--control", str(control), "--on-abort", on_abort]


def start_in_namespaces(servers: Servers, scenario: Scenario, topo: netns.Topology, control: Path,
                        *, opt: str = "-O2", payfront_bin: str | None = None) -> Layout:
    """Start ledger (backend ns), vproxy (gw ns, both routes) and payfront (server ns).

    Args:
        control: where the gateway puts its control socket (and ``.token``) for a healer.

    Error handling:
        ServerError if any of them does not start (its stderr is in the message).
    """
    servers.start("ledger", ledger_argv(scenario, LEDGER_PORT, opt=opt),
                  spawn=partial(netns.popen_in, topo.backend_ns))
    gw = servers.start("vproxy", gateway_argv(topo, control),
                       spawn=partial(netns.popen_in, topo.gw_ns), ready=None)
    try:
        netns.wait_listening(topo.server_ns, topo.gw_server_addr, LEDGER_PORT, proc=gw.proc)
        netns.wait_listening(topo.client_ns, topo.gw_client_addr, FRONT_PORT, proc=gw.proc)
    except netns.NetnsError as exc:
        raise ServerError(f"vproxy did not start: {exc}; {servers.notes()}") from None
    via_gateway = f"{topo.gw_server_addr}:{LEDGER_PORT}"
    front = servers.start("payfront", payfront_argv(scenario, via_gateway, FRONT_PORT, opt=opt,
                                                    binary=payfront_bin),
                          spawn=partial(netns.popen_in, topo.server_ns))
    endpoints = Endpoints(ns_opener(topo.client_ns, topo.gw_client_addr, FRONT_PORT),
                          ns_opener(topo.backend_ns, topo.backend_addr, LEDGER_PORT),
                          f"{topo.gw_client_addr}:{FRONT_PORT} (vproxy, ns {topo.client_ns})",
                          f"{topo.backend_addr}:{LEDGER_PORT} (ns {topo.backend_ns})")
    return Layout(endpoints, topo, front, control)

"""Bring up the system a scenario runs against: ledger + payfront built from targets/.

``start_direct`` puts both on loopback with the client talking to payfront directly (layer 1: the
servers and the scenario alone). Other layouts (gateway on both paths, healer, namespaces) build on
the same ``Servers`` and return the same ``Endpoints``.
"""

from __future__ import annotations

import trio

from targets import build
from vproxy.scenario._format import Scenario
from vproxy.scenario._procs import Servers
from vproxy.scenario._runner import Endpoints, Opener


def ledger_argv(scenario: Scenario, port: int = 0, *, opt: str = "-O2",
                binary: str | None = None) -> list[str]:
    """The ledger's command line holding the scenario's initial balances.

    ``binary`` replaces the build of targets/ledger.c (another build to test)."""
    return [binary or str(build("ledger", opt=opt)), str(port),
            *(f"{a.name}={a.balance}" for a in scenario.accounts)]


def payfront_argv(scenario: Scenario, ledger: str, port: int = 0, *, opt: str = "-O2",
                  binary: str | None = None) -> list[str]:
    """payfront's command line: its port, the ledger address it dials, the scenario's users."""
    return [binary or str(build("payfront", opt=opt)), str(port), ledger,
            *(f"{a.name}:{a.password}" for a in scenario.accounts)]


def tcp_opener(host: str, port: int) -> Opener:
    """Opens a new TCP connection to ``host:port`` each time it is awaited."""
    async def open_() -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port)
    return open_


def start_direct(servers: Servers, scenario: Scenario, *, opt: str = "-O2",
                 payfront_bin: str | None = None, ledger_bin: str | None = None) -> Endpoints:
    """Start ledger and payfront on 127.0.0.1 (free ports); the client talks to payfront directly.

    Error handling:
        ServerError if either does not start; targets.BuildError if gcc fails.
    """
    ledger = servers.start("ledger", ledger_argv(scenario, opt=opt, binary=ledger_bin))
    front = servers.start("payfront", payfront_argv(scenario, f"127.0.0.1:{ledger.port}", opt=opt,
                                                    binary=payfront_bin))
    return Endpoints(tcp_opener("127.0.0.1", front.port), tcp_opener("127.0.0.1", ledger.port),
                     f"127.0.0.1:{front.port}", f"127.0.0.1:{ledger.port}")

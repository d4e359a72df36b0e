"""Payment scenarios: client conversations against payfront/ledger, replayed and judged.

Public front::

    scenario = load("tests/scenarios/basic.yaml")          # ScenarioError names file:line
    with Servers() as servers:
        endpoints = start_direct(servers, scenario)         # or a gateway/healer layout
        outcome = trio.run(run_scenario, scenario, endpoints)
        outcome.notes += servers.notes()                    # a server that died is a failure
    print(render(outcome))

``vproxy replay`` and ``vproxy record`` are the command-line faces; docs/scenarios.md the reference.
"""

from vproxy.scenario._format import (
    Account,
    Conversation,
    Expect,
    Scenario,
    ScenarioError,
    Step,
    load,
    parse,
)
from vproxy.scenario._procs import ServerError, Servers, Started
from vproxy.scenario._recorder import Recorder
from vproxy.scenario._report import render
from vproxy.scenario._runner import (
    ConversationResult,
    Endpoints,
    LedgerState,
    Outcome,
    UnreachableError,
    read_ledger,
    run_scenario,
)
from vproxy.scenario._system import ledger_argv, payfront_argv, start_direct, tcp_opener

__all__ = [
    "Account",
    "Conversation",
    "ConversationResult",
    "Endpoints",
    "Expect",
    "LedgerState",
    "Outcome",
    "Recorder",
    "Scenario",
    "ScenarioError",
    "ServerError",
    "Servers",
    "Started",
    "Step",
    "UnreachableError",
    "ledger_argv",
    "load",
    "parse",
    "payfront_argv",
    "read_ledger",
    "render",
    "run_scenario",
    "start_direct",
    "tcp_opener",
]

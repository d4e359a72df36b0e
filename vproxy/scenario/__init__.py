"""Payment scenarios: client conversations against payfront/ledger, replayed and judged.

Public front::

    scenario = load("tests/scenarios/basic.yaml")          # ScenarioError names file:line
    with Servers() as servers:
        endpoints = start_direct(servers, scenario)         # or start_in_namespaces(...)
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
from vproxy.scenario._netlayout import (
    FRONT_PORT,
    LEDGER_PORT,
    Layout,
    attach_healer,
    gateway_argv,
    gateway_counters,
    healer_argv,
    ns_opener,
    start_in_namespaces,
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
    "FRONT_PORT",
    "LEDGER_PORT",
    "Account",
    "Conversation",
    "ConversationResult",
    "Endpoints",
    "Expect",
    "Layout",
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
    "attach_healer",
    "gateway_argv",
    "gateway_counters",
    "healer_argv",
    "ledger_argv",
    "load",
    "ns_opener",
    "parse",
    "payfront_argv",
    "read_ledger",
    "render",
    "run_scenario",
    "start_direct",
    "start_in_namespaces",
    "tcp_opener",
]

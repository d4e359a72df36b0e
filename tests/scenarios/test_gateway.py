"""Layer 2: one real ``vproxy serve`` on both of payfront's paths, in real namespaces, no healer.

Without a healer the gateway relays (nothing is guarded): a legit scenario must pass exactly as it
does directly, and the captures prove that every byte payfront exchanged crossed the gateway on
the client link and on the ledger link.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

import netns
from vproxy import scenario as sc

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.root


async def test_basic_scenario_through_the_gateway_on_both_paths(
        topo: netns.Topology, servers: sc.Servers, control: Path) -> None:
    scenario = sc.load(HERE / "basic.yaml")
    layout = sc.start_in_namespaces(servers, scenario, topo, control)
    with netns.capture(topo.client_ns) as client_link, \
            netns.capture(topo.backend_ns) as ledger_link:
        outcome = await sc.run_scenario(scenario, layout.endpoints,
                                        counters=partial(sc.gateway_counters, control))
    outcome.notes += servers.notes()
    report = sc.render(outcome)
    assert outcome.passed, report
    assert outcome.gateway is not None and outcome.gateway["aborted"] == 0
    assert "gateway         commits" in report

    to_clients = client_link.from_port(sc.FRONT_PORT)
    to_ledger = ledger_link.to_port(sc.LEDGER_PORT)
    assert b"DONE a1 balance" in to_clients and b"REFUSED a1 duplicate" in to_clients
    # The ledger link carried payfront's protocol (the runner's DUMP audits stay on loopback).
    for line in (b"PREPARE a1 alice bob 10\n", b"COMMIT a1\n", b"COMMIT b1\n", b"COMMIT c1\n"):
        assert line in to_ledger
    assert to_ledger.count(b"COMMIT ") == 3 and b"DUMP" not in to_ledger

"""Layer 3: the healer attached to payfront, vproxy on both paths, real namespaces, scapy captures.

Each planted bug is sent to a protected payfront (its own scenario file: the attack, then legit
traffic). Every attack is refused, payfront survives, money is conserved, and the captures on the
client link and on the ledger link prove what crossed each wire and what never did.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

import netns
from vproxy import scenario as sc

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.root


@dataclass
class Wires:
    outcome: sc.Outcome
    to_clients: bytes
    to_ledger: bytes
    from_ledger: bytes


async def replay_healed(name: str, topo: netns.Topology, servers: sc.Servers, control: Path,
                        *healer_flags: str, gateway_aborts: bool = True) -> Wires:
    scenario = sc.load(HERE / name)
    layout = sc.start_in_namespaces(servers, scenario, topo, control)
    sc.attach_healer(servers, layout, HERE / "payfront.pol", extra=healer_flags)
    with netns.capture(topo.client_ns) as client_link, \
            netns.capture(topo.backend_ns) as ledger_link:
        outcome = await sc.run_scenario(scenario, layout.endpoints,
                                        counters=partial(sc.gateway_counters, control))
    outcome.notes += servers.notes()
    assert outcome.passed, sc.render(outcome, verbose=True)
    assert layout.payfront.proc.poll() is None, "payfront must survive the attack"
    assert outcome.gateway is not None
    # The agent announces a transaction only once it moves socket bytes: the gateway hears of
    # an abort only when the aborted transaction did I/O.
    assert outcome.gateway["aborted"] >= 1 or not gateway_aborts
    return Wires(outcome, client_link.from_port(sc.FRONT_PORT),
                 ledger_link.to_port(sc.LEDGER_PORT), ledger_link.from_port(sc.LEDGER_PORT))


async def test_fault_before_any_output(topo: netns.Topology, servers: sc.Servers,
                                       control: Path) -> None:
    w = await replay_healed("heal-login.yaml", topo, servers, control, gateway_aborts=False)
    # The smashed check answered "not authenticated": one refusal, and only the legit login of
    # alice succeeded (the attack's LOGIN alice never produced a welcome).
    assert w.to_clients.count(b"ERR denied\n") == 1
    assert w.to_clients.count(b"OK welcome alice\n") == 1
    assert w.to_ledger.count(b"PREPARE ") == 1 and b"x1" not in w.to_ledger


async def test_fault_with_partial_reply_and_held_debit(topo: netns.Topology, servers: sc.Servers,
                                                       control: Path) -> None:
    w = await replay_healed("heal-held-debit.yaml", topo, servers, control)
    assert w.outcome.gateway is not None and w.outcome.gateway["bytes_discarded"] > 0
    # Neither the partial reply nor the debit of m1 ever left the gateway.
    assert b"RECEIPT m1" not in w.to_clients and b"m1" not in w.to_ledger
    assert b"ERR transfer-failed m1\n" in w.to_clients
    assert b"PREPARE m2 mallory alice 1\nCOMMIT m2\n" in w.to_ledger


async def test_fault_after_the_gradual_commit(topo: netns.Topology, servers: sc.Servers,
                                              control: Path) -> None:
    w = await replay_healed("heal-gradual.yaml", topo, servers, control)
    # The aborted attempt's PREPARE crossed (the gradual commit released it) and was answered ...
    assert w.to_ledger.count(b"PREPARE k1 mallory alice 3\n") == 3
    assert w.from_ledger.count(b"PREPARED k1\n") == 2
    # ... but its COMMIT and its RECEIPT never did: the one COMMIT and the two RECEIPTs are the
    # retries'. The ledger dropped the reservation when payfront reset the link (presumed abort).
    assert w.to_ledger.count(b"COMMIT k1\n") == 1
    assert w.to_clients.count(b"RECEIPT k1 mallory alice 3\n") == 2
    assert w.from_ledger.count(b"REFUSED k1 duplicate\n") == 1


async def test_attacks_beside_a_legit_client(topo: netns.Topology, servers: sc.Servers,
                                             control: Path) -> None:
    """Two clients at once: aborts on one connection never touch the other's transfers.

    Without the memory log: with it, concurrent transactions on two threads sometimes stall (held
    output never covered; about 1 run in 10 when this was written), a memlog problem reported to
    its owner. Containment on the wires is the subject here; rollback is exercised above."""
    w = await replay_healed("heal-concurrent.yaml", topo, servers, control,
                            "--disable-plugin", "memlog")
    assert w.outcome.gateway is not None and w.outcome.gateway["aborted"] >= 2
    for done in (b"DONE a1 balance 90", b"DONE a2 balance 85 gift", b"DONE a3 balance 84"):
        assert done in w.to_clients
    assert b"RECEIPT m1" not in w.to_clients and b"m1" not in w.to_ledger      # held, discarded
    assert b"RECEIPT m3" not in w.to_clients and b"COMMIT m3" not in w.to_ledger
    assert b"PREPARE m3 mallory alice 3\n" in w.to_ledger                       # gradual commit


async def test_every_attack_among_six_clients(topo: netns.Topology, servers: sc.Servers,
                                              control: Path) -> None:
    """attacks.yaml healed, memory log on: all three bugs and three legit clients at once.

    Left out while payfront sometimes stalled after the first heal (3 runs in 8); after the fixes
    to the wire plugin's shared send buffer and the memory log's lazy load() it passed 40 runs in
    40 (20 of them beside two busy loops), so it is a normal test now."""
    w = await replay_healed("attacks.yaml", topo, servers, control)
    # (replay_healed asserted the verdict: every attack refused with its expected answer, every
    # legit transfer done, money conserved, payfront alive.)
    assert w.outcome.gateway is not None and w.outcome.gateway["aborted"] >= 2
    # Bug 1: refused before any output; x1 (sent without a login) never reached the ledger.
    assert w.to_clients.count(b"ERR denied\n") == 1 and b"x1" not in w.to_ledger
    # Bug 2: neither the partial reply nor the debit of m1 left the gateway.
    assert b"RECEIPT m1" not in w.to_clients and b"m1" not in w.to_ledger
    # Bug 3: the aborted k1's PREPARE crossed (gradual commit) but its COMMIT and RECEIPT did not:
    # the one COMMIT k1 and the one RECEIPT k1 are the retry's.
    assert w.to_ledger.count(b"PREPARE k1 mallory alice 3\n") == 2
    assert w.to_ledger.count(b"COMMIT k1\n") == 1
    assert w.to_clients.count(b"RECEIPT k1 mallory alice 3\n") == 1
    for done in (b"DONE a1 ", b"DONE a2 ", b"DONE b1 ", b"DONE m2 ", b"DONE k1 "):
        assert w.to_clients.count(done) == 1

"""Layer 1: payfront and ledger as real processes on loopback, no gateway, no healer.

Proves the servers, the runner and the audit: a legit scenario passes with exact balances, a wrong
expectation fails naming its line, and each planted bug really kills an unprotected payfront (while
the two-phase ledger still conserves money: a dead front-end's prepares are presumed aborted).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vproxy import scenario as sc

HERE = Path(__file__).resolve().parent

ACCOUNTS = """\
scenario: {name}
accounts:
  alice: {{password: wonderland, balance: 100}}
  bob: {{password: builder, balance: 50}}
conversations:
"""


async def test_basic_scenario_passes_with_exact_balances(servers: sc.Servers) -> None:
    scenario = sc.load(HERE / "basic.yaml")
    outcome = await sc.run_scenario(scenario, sc.start_direct(servers, scenario))
    outcome.notes += servers.notes()
    report = sc.render(outcome)
    assert outcome.passed, report
    assert outcome.after.balances == {"alice": 97, "bob": 55, "carol": 28}
    assert outcome.after.applied - outcome.before.applied == 3
    assert "money conserved yes" in report and "PASS" in report.splitlines()[0]


async def test_wrong_expectation_fails_with_its_line(servers: sc.Servers) -> None:
    scenario = sc.parse(ACCOUNTS.format(name="wrong") + """\
  - name: pays
    steps:
      - send: LOGIN alice wonderland
        expect: OK welcome alice
      - send: XFER r1 bob 10
        expect: [RECEIPT r1 alice bob 10, DONE r1 balance 80 general]
ledger: {alice: 100}
""", "wrong.yaml")
    outcome = await sc.run_scenario(scenario, sc.start_direct(servers, scenario))
    report = sc.render(outcome)
    assert not outcome.passed
    [conv] = outcome.conversations
    assert conv.failure is not None and conv.failure.startswith("line 10:")
    assert "DONE r1 balance 90 general" in conv.failure
    assert "FAIL" in report.splitlines()[0] and "WRONG balances" in report
    assert outcome.money_conserved  # the transfer itself was fine


# Each planted bug, sent to an unprotected payfront: the process dies. The ledger's total stays the
# same and no prepare stays open, because the ledger aborts what a closed connection prepared.
@pytest.mark.parametrize(("send", "replies", "signal"), [
    ("LOGIN alice ${A*300}", [], "SIGABRT"),                        # bug 1: before any output
    ("XFER h1 bob 10 ${B*300}", ["RECEIPT h1 alice bob 10"], "SIGABRT"),  # bug 2: debit held
    ('"XFER h2 bob 10 #999999999"', ["RECEIPT h2 alice bob 10"], "SIGSEGV"),  # bug 3: after
])
async def test_planted_bugs_kill_an_unprotected_payfront(servers: sc.Servers, send: str,
                                                         replies: list[str], signal: str) -> None:
    login = "" if send.startswith("LOGIN") else (
        "      - send: LOGIN alice wonderland\n        expect: OK welcome alice\n")
    scenario = sc.parse(ACCOUNTS.format(name="bug") + f"""\
  - name: attack
    kind: hostile
    steps:
{login}      - send: {send}
        expect: [{', '.join(replies)}]
        closed: true
""", "bug.yaml")
    outcome = await sc.run_scenario(scenario, sc.start_direct(servers, scenario))
    # Its sockets close a moment before its exit status exists: wait for the status.
    servers.get("payfront").proc.wait(timeout=10)
    notes = servers.notes()
    assert any(n.startswith(f"payfront exited (signal {signal})") for n in notes), notes
    assert outcome.after.balances == outcome.before.balances
    assert outcome.money_conserved and outcome.after.pending == 0


async def test_a_reply_line_nobody_expected_fails_the_conversation(servers: sc.Servers) -> None:
    scenario = sc.parse(ACCOUNTS.format(name="stray") + """\
  - name: pays
    steps:
      - send: LOGIN alice wonderland
        expect: OK welcome alice
      - send: XFER r1 bob 10
        expect: RECEIPT r1 alice bob 10
""", "stray.yaml")
    outcome = await sc.run_scenario(scenario, sc.start_direct(servers, scenario))
    [conv] = outcome.conversations
    assert conv.failure is not None and "unexpected line after the last step" in conv.failure
    assert "DONE r1 balance 90" in conv.failure and not outcome.passed


async def test_attacks_scenario_fails_unprotected_but_money_is_conserved(
        servers: sc.Servers) -> None:
    scenario = sc.load(HERE / "attacks.yaml")
    outcome = await sc.run_scenario(scenario, sc.start_direct(servers, scenario))
    servers.get("payfront").proc.wait(timeout=10)
    outcome.notes += servers.notes()
    report = sc.render(outcome)
    assert not outcome.passed and "note            payfront exited (signal" in report
    assert any(c.kind == "hostile" and not c.ok for c in outcome.conversations)
    # Whatever the ledger committed before the crash moved whole; no prepare is left open.
    assert outcome.money_conserved, report

"""The paper's Figure 1 (bar() stack overflow), Figure 2 (check_credentials overflow) and a NULL
dereference, exploited 1000 times in a row against real servers with the healer attached: the
server never dies and the legitimate requests interleaved with the attacks get correct answers."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from targets import build
from tests.healer.conftest import VARIANT_IDS, VARIANTS

ROUNDS = 1000
TWO_VARIANTS = [("-O0", True), ("-O2", False)]
EXPLOIT = "BAR " + "A" * 100  # bar() copies half of it: 50 bytes into a 10-byte buffer


def heals_of(healer, pid: int) -> dict:
    status = json.loads(healer.cli("status", str(pid)).stdout)
    return status["agents"][str(pid)]["txn"]


@pytest.mark.parametrize(("opt", "ssp"), VARIANTS, ids=VARIANT_IDS)
def test_figure1_overflow_healed_1000_times(fig1_exes, start_server, start_healer, opt, ssp):
    server = start_server(fig1_exes[(opt, ssp)])
    healer = start_healer("attach", str(server.pid), "--disable-plugin", "memlog").ready()
    client = server.connect()
    served = 0
    for i in range(ROUNDS):
        served += 1
        assert client.ask(EXPLOIT) == f"RET -1 {served}"
        if i % 10 == 0:
            served += 1
            assert client.ask("BAR hello") == f"RET 0 {served}"
            served += 1
            assert client.ask("PING") == f"PONG {served}"
    assert server.alive()
    txn = heals_of(healer, server.pid)
    assert txn["heals"] == ROUNDS
    heal = healer.wait_for(lambda e: e.get("event") == "heal")
    assert heal["function"] == "bar"
    assert heal["kind"] in ("stack-chk", "shadow-stack", "SIGSEGV")
    assert heal["source"] == "heuristic" and heal["value"] == "-1"


def test_figure1_full_agent_rolls_back_and_heals(fig1_exes, start_server, start_healer):
    """With every plugin loaded (memory log under Stalker, wire, policy, profile)."""
    server = start_server(fig1_exes[("-O2", True)])
    healer = start_healer("attach", str(server.pid), "--coverage", "all").ready()
    client = server.connect()
    served = 0
    for _ in range(200):
        served += 2
        assert client.ask(EXPLOIT) == f"RET -1 {served - 1}"
        assert client.ask("PING") == f"PONG {served}"
    assert server.alive()
    assert heals_of(healer, server.pid)["heals"] == 200


def test_unsupervised_overflow_meets_glibcs_own_fate(fig1_exes, start_server, start_healer):
    """Nothing supervised: the replaced __stack_chk_fail hands over to glibc's own (with
    __fortify_fail's message argument), which aborts: SIGABRT, not a crash inside the agent."""
    server = start_server(fig1_exes[("-O2", True)])
    start_healer("attach", str(server.pid), "--coverage", "none").ready()
    client = server.connect()
    try:
        answer = client.ask(EXPLOIT)
    except OSError:
        answer = ""
    assert answer == ""
    assert server.proc.wait(10) == -signal.SIGABRT


@pytest.mark.parametrize(("opt", "ssp"), TWO_VARIANTS, ids=["O0-ssp", "O2-nossp"])
def test_null_dereference_healed_1000_times(fig1_exes, start_server, start_healer, opt, ssp):
    server = start_server(fig1_exes[(opt, ssp)])
    healer = start_healer("attach", str(server.pid), "--coverage", "all",
                          "--disable-plugin", "memlog").ready()
    client = server.connect()
    served = 0
    for i in range(ROUNDS):
        served += 1
        assert client.ask("NUL nosuchkey") == f"VAL -1 {served}"
        if i % 10 == 0:
            served += 1
            assert client.ask("NUL beta") == f"VAL 6 {served}"
    assert server.alive()
    heal = healer.wait_for(lambda e: e.get("event") == "heal")
    assert heal["function"] == "lookup_len" and heal["kind"] == "SIGSEGV"


@pytest.fixture(scope="session")
def login_exes() -> dict[tuple[str, bool], Path]:
    return {(o, sp): build("login_server", opt=o, stack_protector=sp)
            for o, sp in TWO_VARIANTS}


@pytest.mark.parametrize(("opt", "ssp"), TWO_VARIANTS, ids=["O0-ssp", "O2-nossp"])
def test_figure2_login_exploit_denied_1000_times(login_exes, start_server, start_healer, opt, ssp):
    """Figure 2 with Figure 3's policy: the healed check_credentials returns 0 (failure), so an
    overflowing user name is DENIED, never logged in; real users still log in."""
    policy = Path(__file__).resolve().parents[2] / "policies" / "figure3.pol"
    server = start_server(login_exes[(opt, ssp)])
    healer = start_healer("attach", str(server.pid), "--coverage", "all", "--policy", str(policy),
                          "--disable-plugin", "memlog").ready()
    client = server.connect()
    for i in range(ROUNDS):
        # 44 bytes reach the return address but stop short of login()'s frame: deeper overflows
        # need the memory log to restore the caller's frame (tests/memlog/
        # test_smashed_return_e2e.py: 64 and 300 bytes with the full agent).
        assert client.ask("LOGIN " + "x" * 44 + " pw") == "DENIED"
        if i % 10 == 0:
            assert client.ask("LOGIN alice wonderland") == "OK welcome alice"
            assert client.ask("LOGIN bob wrong") == "DENIED"
    assert server.alive()
    heal = healer.wait_for(lambda e: e.get("event") == "heal")
    assert heal["function"] == "check_credentials"
    assert heal["source"] == "policy" and heal["value"] == "0"

"""``vproxy replay`` as an operator runs it: a report, an exit status, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import netns

HERE = Path(__file__).resolve().parent


def vproxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vproxy", *args], capture_output=True, text=True,
                          timeout=60)


def test_replay_prints_the_report_and_exits_0() -> None:
    proc = vproxy("replay", str(HERE / "basic.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert "scenario basic-payments" in proc.stdout and ": PASS" in proc.stdout
    assert "money conserved yes" in proc.stdout


def test_malformed_scenario_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenario: x\naccounts:\n  alice: {password: p, balance: lots}\n"
                   "conversations: []\n")
    proc = vproxy("replay", str(bad))
    assert proc.returncode == 2
    assert f"{bad}:3:" in proc.stderr and "whole number" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreachable_servers_are_a_one_line_error() -> None:
    proc = vproxy("replay", "--front", "127.0.0.1:9", "--ledger", "127.0.0.1:9",
                  str(HERE / "basic.yaml"))
    assert proc.returncode == 1
    assert "cannot connect to the ledger at 127.0.0.1:9" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.root
def test_replay_in_namespaces_reports_the_gateway() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    proc = vproxy("replay", "--namespaces", str(HERE / "basic.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ": PASS" in proc.stdout and "gateway         commits" in proc.stdout
    assert netns.existing("replay") == {}  # its namespaces are gone

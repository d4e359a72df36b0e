"""Hot reload of the policy through the real `healer attach` and SIGUSR1: an invalid new policy is
refused with a log line naming file:line:col and the old one stays in force; a valid one swaps."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
from pathlib import Path

import pytest

from targets import build

from .conftest import LoginServer

ROOT = Path(__file__).resolve().parents[2]
FIGURE3 = ROOT / "policies" / "figure3.pol"


def _healer_runner() -> type:
    """tests/healer's runner of the real `healer` command (its JSON log lines, waits with timeouts):
    reused, not copied."""
    spec = importlib.util.spec_from_file_location("_healer_test_runner",
                                                  ROOT / "tests" / "healer" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Healer


@pytest.fixture
def attached(tmp_path):
    exe = build("login_server", opt="-O2")
    server = LoginServer(exe)
    policy = tmp_path / "login.pol"
    policy.write_text(FIGURE3.read_text())
    healer = _healer_runner()(tmp_path, "attach", str(server.pid), "--coverage", "all",
                              "--policy", str(policy))
    try:
        healer.ready()
        yield server, healer, policy
    finally:
        server.close()
        healer.close()


def _login(server: LoginServer, user: str, password: str = "x") -> str:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as c:
        c.sendall(f"LOGIN {user} {password}\n".encode())
        return c.makefile("rb").readline().decode().strip()


def test_sigusr1_refuses_an_invalid_policy_then_swaps_in_a_valid_one(attached):
    server, healer, policy = attached
    exploit = "A" * 64
    assert _login(server, exploit) == "DENIED"
    policy.write_text(FIGURE3.read_text() + "rp Broken :=: (rollback);\n")
    os.kill(server.pid, signal.SIGUSR1)
    refused = healer.wait_for(lambda e: e.get("event") == "reload refused")
    assert f"{policy}:9:11: syntax error: expected ':='" in refused["error"]
    assert _login(server, exploit) == "DENIED"  # Figure 3 still in force
    assert healer.wait_count("heal", 2)[-1]["source"] == "policy"
    policy.write_text("rp Deny := ('rvalue = 0), (rollback), (assert 'rvalue == 0);\n"
                      "tp check_credentials :=: &Deny;\n")
    os.kill(server.pid, signal.SIGUSR1)
    healer.wait_for(lambda e: e.get("event") == "reloaded")
    assert _login(server, exploit) == "DENIED"
    third = healer.wait_count("heal", 3)[-1]
    assert third["source"] == "policy" and "rp Deny" in third["why"]
    assert _login(server, "alice", "wonderland") == "OK welcome alice"

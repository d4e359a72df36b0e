"""The paper's Figure 2 end to end: the real agent (every healer/agent file) in the login server,
real TCP clients, the overflow in check_credentials exploited with long usernames.

Without a policy, naive error virtualization turns the fault into a successful login (the danger
the repair policy exists to prevent); with the unchanged Figure 3 policy every exploit attempt is
denied, the memory changes of the aborted call are gone, and valid logins still work.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import frida
import pytest

from healer._agent_source import agent_source
from healer.policy import compile_text, load
from targets import build

from .conftest import LoginServer, read_global

FIGURE3 = Path(__file__).resolve().parents[2] / "policies" / "figure3.pol"
HARDENED = FIGURE3.with_name("login-hardened.pol")
EXPLOITS = [b"A" * n for n in (32, 64, 100)]  # past the canary; 64 and 100 reach the caller frames
IO_TIMEOUT = 10.0
CHAIN = ("check_credentials", "login")


class Protected:
    """A login server with the whole agent in it, supervising ``supervised`` (by default the
    Figure 2 call chain: check_credentials nested in login)."""

    def __init__(self, policy: dict[str, Any] | None, supervised: list[str]) -> None:
        self.exe = build("login_server", opt="-O2", stack_protector=True)
        self.server = LoginServer(self.exe)
        self.events: list[dict[str, Any]] = []
        self.session = frida.attach(self.server.pid)
        self.script = self.session.create_script(agent_source())
        self.script.on("message", self._on_message)
        self.script.load()
        config: dict[str, Any] = {"coverage": {"mode": "list", "functions": supervised}}
        if policy is not None:
            config["policy"] = policy
        self.script.exports_sync.init(config)

    def _on_message(self, message: dict[str, Any], _data: bytes | None) -> None:
        payload = message.get("payload")
        if isinstance(payload, dict) and payload.get("type") == "sead:events":
            self.events.extend(payload["events"])

    def request(self, line: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=IO_TIMEOUT) as c:
            c.sendall(line + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = c.recv(4096)
                if not chunk:
                    break
                reply += chunk
            return reply

    def login(self, user: bytes, password: bytes = b"x") -> bytes:
        return self.request(b"LOGIN " + user + b" " + password)

    def state(self) -> tuple[int, int, bytes]:
        """(login_attempts, failed_logins, last_user) as /proc shows them."""
        attempts = struct.unpack("<Q", read_global(self.server.pid, self.exe, "login_attempts", 8))
        failed = struct.unpack("<i", read_global(self.server.pid, self.exe, "failed_logins", 4))
        return attempts[0], failed[0], read_global(self.server.pid, self.exe, "last_user", 32)

    def heals(self, function: str, at_least: int = 1) -> list[dict[str, Any]]:
        """The heal events of ``function``, once ``at_least`` arrived (they are sent at once but
        arrive asynchronously) or IO_TIMEOUT passed."""
        deadline = time.monotonic() + IO_TIMEOUT
        while True:
            heals = [e for e in self.events if e["type"] == "heal" and e["function"] == function]
            if len(heals) >= at_least or time.monotonic() > deadline:
                return heals
            time.sleep(0.02)

    def close(self) -> None:
        self.server.close()  # kill first: detaching from a live agent waits for its threads
        with contextlib.suppress(frida.InvalidOperationError):
            self.session.detach()


@pytest.fixture
def protected() -> Iterator:
    made: list[Protected] = []

    def make(policy: dict[str, Any] | None, supervised: tuple[str, ...] = CHAIN) -> Protected:
        p = Protected(policy, list(supervised))
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def test_danger_without_a_policy_naive_error_virtualization_grants_the_login(protected):
    """The danger (paper, Figure 2): the heuristic's -1 is 'authenticated' for login()."""
    target = protected(None)
    reply = target.login(EXPLOITS[0])
    assert reply == b"OK welcome " + EXPLOITS[0] + b"\n"  # the exploit got in
    heal = target.heals("check_credentials")[0]
    assert heal["source"] == "heuristic"


@pytest.mark.parametrize(("policy", "rp"), [(FIGURE3, "FixAuth"), (HARDENED, "FixAuth")],
                         ids=["figure3", "hardened"])
def test_the_policy_denies_every_exploit_and_valid_logins_still_work(protected, policy, rp):
    target = protected(load(policy, binary=build("login_server", opt="-O2")))
    assert target.login(b"alice", b"wonderland") == b"OK welcome alice\n"
    for exploit in EXPLOITS + EXPLOITS:
        assert target.login(exploit) == b"DENIED\n"
        assert target.login(b"alice", b"wonderland") == b"OK welcome alice\n"
    heals = target.heals("check_credentials", at_least=2 * len(EXPLOITS))
    assert len(heals) == 2 * len(EXPLOITS)
    assert all(h["source"] == "policy" and h["value"] == "0" and f"rp {rp} " in h["why"]
               for h in heals)
    assert target.request(b"PING") == b"PONG\n"


@pytest.mark.parametrize("exploit", [EXPLOITS[0], EXPLOITS[-1]], ids=["32", "100"])
def test_figure3_leaves_no_memory_change_of_the_aborted_call(protected, exploit):
    target = protected(load(FIGURE3))
    assert target.login(b"alice", b"wonderland") == b"OK welcome alice\n"
    assert target.login(b"bob", b"wrong") == b"DENIED\n"
    before = target.state()
    assert before[:2] == (2, 1) and before[2].split(b"\0")[0] == b"bob"
    assert target.login(exploit) == b"DENIED\n"
    assert target.state() == before  # login_attempts, failed_logins, last_user: untouched
    assert target.login(b"alice", b"wonderland") == b"OK welcome alice\n"
    assert target.state()[:2] == (3, 1)


@pytest.mark.parametrize("supervised", [
    pytest.param(("check_credentials",), id="root"),
    pytest.param(CHAIN, id="nested"),
])
def test_figure3_rolls_back_every_one_of_repeated_exploits(protected, supervised):
    target = protected(load(FIGURE3), supervised)
    before = target.state()
    for exploit in EXPLOITS:
        assert target.login(exploit) == b"DENIED\n"
        assert target.state() == before


LOCKOUT = """
ivp Lockout :=: (failed_logins < 2);
rp Deny := ('rvalue == 0), (rollback), (assert i32('rvalue) == 0 && failed_logins < 2);
tp check_credentials &Lockout :=: &Deny;
"""


def test_an_ivp_at_exit_aborts_the_call_and_the_repair_rolls_it_back(protected):
    target = protected(compile_text(LOCKOUT, "lockout.pol"))
    assert target.login(b"bob", b"wrong") == b"DENIED\n"
    assert target.state()[1] == 1
    # the second failure would make failed_logins 2: the IVP fails at exit, the call is undone
    assert target.login(b"bob", b"wrong") == b"DENIED\n"
    assert target.state()[1] == 1
    assert target.login(b"alice", b"wonderland") == b"OK welcome alice\n"
    heals = target.heals("check_credentials")
    assert heals[0]["kind"] == "ivp" and "Lockout" in heals[0]["detail"]


def test_reload_refuses_an_invalid_policy_and_keeps_figure3(protected):
    target = protected(load(FIGURE3))
    broken = compile_text("rp R := (no_such_global = 1), ('rvalue = 1);\n"
                          "tp check_credentials :=: &R;", "broken.pol")
    with pytest.raises(frida.core.RPCException, match="no_such_global"):
        target.script.exports_sync.reload({"policy": broken})
    assert target.script.exports_sync.status()["policy"]["source"] == str(FIGURE3)
    assert target.login(EXPLOITS[0]) == b"DENIED\n"

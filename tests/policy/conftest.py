"""Fixtures for the policy tests: the Figure 2 login server, and 30_policy.js loaded alone into it
with a stub Sead (``harness.js``), so the interpreter is tested without the agent core."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import frida
import pytest

from targets import build

HERE = Path(__file__).resolve().parent
AGENT_POLICY = HERE.parent.parent / "healer" / "agent" / "30_policy.js"
READY_TIMEOUT = 10.0


def harness_source() -> str:
    """harness.js with the real 30_policy.js in place of its marker."""
    return (HERE / "harness.js").read_text().replace("/*POLICY_JS*/", AGENT_POLICY.read_text())


class LoginServer:
    """targets/login_server.c running on a free loopback port (killed by ``close``)."""

    def __init__(self, exe: Path) -> None:
        self.exe = exe
        self.proc = subprocess.Popen([str(exe), "0"], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = _readline_with_timeout(self.proc, READY_TIMEOUT)
        assert line.startswith("READY "), line
        self.port = int(line.split()[1])
        self.pid = self.proc.pid

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def _readline_with_timeout(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"no line from pid {proc.pid} within {timeout} s")
    return proc.stdout.readline().strip()


@pytest.fixture(scope="module")
def login_exe() -> Path:
    return build("login_server", opt="-O0")


@pytest.fixture(scope="module")
def login_session(login_exe: Path) -> Iterator[tuple[LoginServer, frida.core.Session]]:
    """One login server with Frida attached, shared by a module (each test loads its own script)."""
    server = LoginServer(login_exe)
    try:
        session = frida.attach(server.pid)
        try:
            yield server, session
        finally:
            with contextlib.suppress(frida.InvalidOperationError):
                session.detach()
    finally:
        server.close()


class Harness:
    """The policy interpreter in the target; ``messages`` collects what it sent (its log lines)."""

    def __init__(self, session: frida.core.Session) -> None:
        self.messages: list[dict[str, Any]] = []
        self.script = session.create_script(harness_source())
        self.script.on("message", lambda m, _d: self.messages.append(m.get("payload", m)))
        self.script.load()
        self.api = self.script.exports_sync

    def logs(self, event: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == "log" and m.get("event") == event]

    def unload(self) -> None:
        with contextlib.suppress(frida.InvalidOperationError):
            self.script.unload()


@pytest.fixture
def harness(login_session) -> Iterator[Callable[[], Harness]]:
    """Factory: a fresh Harness in the shared login server; unloaded at teardown."""
    made: list[Harness] = []

    def make() -> Harness:
        h = Harness(login_session[1])
        made.append(h)
        return h

    yield make
    for h in made:
        h.unload()


def read_global(pid: int, exe: Path, name: str, size: int) -> bytes:
    """Bytes of global ``name`` in process ``pid``, read through /proc (no Frida: an independent
    observer of what the agent left in memory)."""
    from healer.policy._symbols import read_symbols

    offset = read_symbols(exe)[name].address
    base = None
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and Path(fields[5]) == exe and fields[2] == "00000000":
                base = int(fields[0].split("-")[0], 16)
                break
    assert base is not None, f"{exe} is not mapped in pid {pid}"
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(base + offset)
        return mem.read(size)

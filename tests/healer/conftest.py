"""Fixtures for the healer core tests: real gcc-built servers, the real `healer` command attached to
them with Frida, line clients over loopback. Every wait has a timeout; every process is killed at
teardown, also when the test fails."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from targets import build

READY_TIMEOUT = 20.0
IO_TIMEOUT = 10.0
ROOT = Path(__file__).resolve().parents[2]

VARIANTS = [("-O0", True), ("-O0", False), ("-O2", True), ("-O2", False)]
VARIANT_IDS = ["O0-ssp", "O0-nossp", "O2-ssp", "O2-nossp"]


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"no output from {proc.args} within {timeout} s")
    return proc.stdout.readline()


class Server:
    """A line server from targets/ on a free loopback port."""

    def __init__(self, exe: Path, *args: str) -> None:
        # its own process group: teardown kills forked workers and their children too
        self.proc = subprocess.Popen([str(exe), "0", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        line = _readline(self.proc, READY_TIMEOUT)
        assert line.startswith("READY "), line
        self.port = int(line.split()[1])
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def connect(self) -> Client:
        return Client(self.port)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


class Client:
    """One persistent connection: ``ask(line)`` sends a request line and returns the reply line."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.file = self.sock.makefile("rwb")

    def ask(self, line: str) -> str:
        self.file.write(line.encode() + b"\n")
        self.file.flush()
        return self.file.readline().decode().strip()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Healer:
    """`python -m healer --log-json ARGS` as a subprocess; its JSON log lines are collected."""

    def __init__(self, run_dir: Path, *args: str) -> None:
        env = dict(os.environ, SEAD_RUN_DIR=str(run_dir))
        self.run_dir = run_dir
        self.proc = subprocess.Popen([sys.executable, "-m", "healer", "--log-json", *args],
                                     cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.raw.append(line)
                with contextlib.suppress(ValueError):
                    self.lines.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = READY_TIMEOUT
                  ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.lines:
                    if pred(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"healer log has no such event; log:\n{''.join(self.raw)}")
                self._cond.wait(min(left, 0.2))

    def wait_count(self, name: str, n: int, timeout: float = READY_TIMEOUT) -> list[dict[str, Any]]:
        """The first ``n`` events called ``name``, waiting for them to be logged."""
        seen: list[dict[str, Any]] = []

        def enough(e: dict[str, Any]) -> bool:
            seen[:] = self.events(name)
            return len(seen) >= n

        self.wait_for(enough, timeout)
        return seen[:n]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in list(self.lines) if e.get("event") == name]

    def ready(self) -> Healer:
        self.wait_for(lambda e: e.get("event") == "healer ready")
        return self

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, SEAD_RUN_DIR=str(self.run_dir))
        return subprocess.run([sys.executable, "-m", "healer", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)

    def wait(self, timeout: float = 20) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="session")
def fig1_exes() -> dict[tuple[str, bool], Path]:
    return {(o, sp): build("fig1_server", opt=o, stack_protector=sp) for o, sp in VARIANTS}


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(exe: Path, *args: str) -> Server:
        s = Server(exe, *args)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def start_healer(tmp_path: Path) -> Iterator[Callable[..., Healer]]:
    healers: list[Healer] = []

    def start(*args: str) -> Healer:
        h = Healer(tmp_path, *args)
        healers.append(h)
        return h

    yield start
    for h in healers:
        h.close()

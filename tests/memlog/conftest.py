"""Fixtures for the memory-log tests: the memlog target, attached or spawned, with Frida in it.

``harness.js`` + ``harness_main.js`` are a test-only stand-in for the agent core that drives
``20_memlog.js`` directly (rollback on a normal return, no fault needed), so the log is tested on
its own; ``test_heal_e2e.py`` uses the real agent through healer's API.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import frida
import pytest

from targets import build

HERE = Path(__file__).resolve().parent
AGENT = HERE.parent.parent / "healer" / "agent"
LINE_TIMEOUT = 20.0


def harness_source(*modules: str) -> str:
    """The stand-in core around the real agent modules named (default: the memory log), with
    every healer/agent/*.c, assembled like the agent (tests/wire uses it too)."""
    csource = {f.name: f.read_text() for f in sorted(AGENT.glob("*.c"))}
    body = "".join((AGENT / m).read_text() for m in modules or ("20_memlog.js",))
    return (f"const CSOURCE = {json.dumps(csource)};\n" + (HERE / "harness.js").read_text()
            + body + (HERE / "harness_main.js").read_text())


class Target:
    """memlog_target driven over stdin/stdout; ``mode`` is ``attach`` (started, then attached)
    or ``spawn`` (created suspended by Frida, instrumented, then resumed)."""

    def __init__(self, exe: Path, mode: str) -> None:
        self.device = frida.get_local_device()
        self.lines: queue.Queue[str] = queue.Queue()
        self.proc: subprocess.Popen[str] | None = None
        self.mode = mode
        if mode == "attach":
            self.proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True)
            self.pid = self.proc.pid
            threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()
            assert self._readline() == "ready"
        else:
            self._partial = ""
            self.device.on("output", self._on_output)
            self.pid = self.device.spawn([str(exe)], stdio="pipe")
        self.session = self.device.attach(self.pid)

    def _on_output(self, pid: int, fd: int, data: bytes) -> None:
        if pid != self.pid or fd != 1:
            return
        self._partial += data.decode()
        *done, self._partial = self._partial.split("\n")
        for line in done:
            self.lines.put(line)

    def _pump(self, stream) -> None:
        for line in stream:
            self.lines.put(line.strip())

    def _readline(self) -> str:
        return self.lines.get(timeout=LINE_TIMEOUT)

    def load(self, source: str, on_message=None) -> frida.Script:
        script = self.session.create_script(source)
        script.on("message", on_message or (lambda m, d: None))
        script.load()
        return script

    def resume(self) -> None:
        """Spawned: let it run (after the script is loaded) and wait for it to be ready."""
        if self.mode == "spawn":
            self.device.resume(self.pid)
            assert self._readline() == "ready"

    def command(self, text: str) -> str:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
        else:
            self.device.input(self.pid, (text + "\n").encode())
        return self._readline()

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return self.proc is None or self.proc.poll() is None

    def close(self) -> None:
        # Kill first: unloading a script waits for Stalker-followed threads, and ours are blocked
        # in read() on stdin.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(frida.InvalidOperationError):
            self.session.detach()
        if self.proc is not None:
            self.proc.wait(timeout=10)


@pytest.fixture
def memlog_target() -> Iterator:
    """Factory: ``memlog_target(opt, mode, name="memlog_target")`` -> a running Target built from
    targets/NAME.c; all killed at teardown."""
    made: list[Target] = []

    def make(opt: str, mode: str, name: str = "memlog_target") -> Target:
        t = Target(build(name, opt=opt), mode)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()

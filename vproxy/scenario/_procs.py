"""Start the scenario's servers (ledger, payfront) as child processes and always stop them.

A server prints ``READY <port>`` once it listens; ``Servers.start`` waits for that line (bounded)
and turns an early exit into a ServerError carrying the program's stderr. ``Servers`` is a context
manager: leaving it kills every process it started, even when the body raised.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO

Spawner = Callable[..., "subprocess.Popen[bytes]"]


class ServerError(Exception):
    """A server did not start, or died; the message says which, how, and its last stderr."""


@dataclass
class Started:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    stderr: IO[bytes]
    drainer: threading.Thread | None = None

    def exit_note(self) -> str | None:
        """``None`` while it runs, else how it ended (``payfront exited (SIGSEGV)``)."""
        code = self.proc.poll()
        if code is None:
            return None
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
        return f"{self.name} exited ({how})"


def _ready_line(fd: int, word: bytes, timeout: float, log: int) -> bytes | None:
    """The first stdout line containing ``word`` (``READY <port>`` for READY), or None; what is
    read is copied to ``log``."""
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            words = line.split()
            if word == b"READY" and len(words) == 2 and words[0] == word and words[1].isdigit():
                return line
            if word != b"READY" and word in line:
                return line
        readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 4096) if readable else b""
        if not chunk:
            return None
        os.write(log, chunk)
        buf += chunk
    return None


def _drain(src: int, log: int) -> None:
    # Keeps reading stdout after the ready line into the log; ends when the program does.
    with contextlib.suppress(OSError):
        while chunk := os.read(src, 65536):
            os.write(log, chunk)


def _output_tail(f: IO[bytes]) -> str:
    f.seek(0)
    text = f.read()[-600:].decode(errors="replace").strip()
    return text or "(no output)"


class Servers:
    """The processes of one run; use as ``with Servers() as s: s.start(...)``."""

    def __init__(self) -> None:
        self.started: list[Started] = []

    def start(self, name: str, argv: Sequence[str], *, spawn: Spawner = subprocess.Popen,
              timeout: float = 10.0, ready: bytes | None = b"READY",
              merge_stderr: bool = False) -> Started:
        """Run ``argv`` and wait until it prints its ready line.

        Args:
            name: for messages ("ledger", "payfront", "vproxy", "healer").
            argv: the command.
            spawn: ``subprocess.Popen`` or a compatible starter (``netns.popen_in`` bound to a
                namespace).
            timeout: seconds to wait for the ready line.
            ready: ``b"READY"`` waits for ``READY <port>`` (the port is kept); another word waits
                for a stdout line containing it; None does not wait (the caller checks readiness).
                Later stdout is drained into the stderr log, so a chatty program never blocks.
            merge_stderr: look for ``ready`` in stderr too (a program that logs it there).

        Error handling:
            ServerError if it cannot be executed, exits, or prints no ready line in time.
        """
        err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__, it outlives start()
        try:
            proc = spawn(list(argv), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         stderr=subprocess.STDOUT if merge_stderr else err)
        except OSError as exc:
            err.close()
            raise ServerError(f"cannot run {name} ({argv[0]}): {exc}") from None
        started = Started(name, proc, 0, err)
        self.started.append(started)
        assert proc.stdout is not None
        out = proc.stdout.fileno()
        line = _ready_line(out, ready, timeout, err.fileno()) if ready is not None else b""
        if ready is not None and line is None:
            proc.kill()
            proc.wait(timeout=5)
            note = started.exit_note() or \
                f"{name} printed no {ready.decode()} line in {timeout:g} s"
            raise ServerError(f"{name} did not start: {note}; its output: {_output_tail(err)}")
        if ready == b"READY" and line is not None:
            started.port = int(line.split()[1])
        started.drainer = threading.Thread(target=_drain, args=(out, err.fileno()), daemon=True)
        started.drainer.start()
        return started

    def get(self, name: str) -> Started:
        """The started process called ``name`` (KeyError if none)."""
        for s in self.started:
            if s.name == name:
                return s
        raise KeyError(name)

    def notes(self, settle: float = 0.0) -> list[str]:
        """How each process that is no longer running ended, with its stderr.

        Args:
            settle: seconds to give a dying process to finish exiting first (a crashed server's
                sockets close a moment before its exit status exists); spent only while some
                process is still running, so pass it only when a failure suggests a crash.
        """
        deadline = time.monotonic() + settle
        for s in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                s.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        out = []
        for s in self.started:
            note = s.exit_note()
            if note is not None:
                out.append(f"{note}; its output: {_output_tail(s.stderr)}")
        return out

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        for s in reversed(self.started):
            if s.proc.poll() is None:
                s.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                s.proc.wait(timeout=5)
            if s.drainer is not None:
                s.drainer.join(timeout=2)
            for f in (s.proc.stdout, s.stderr):
                if f is not None:
                    f.close()

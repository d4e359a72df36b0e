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

    def exit_note(self) -> str | None:
        """``None`` while it runs, else how it ended (``payfront exited (SIGSEGV)``)."""
        code = self.proc.poll()
        if code is None:
            return None
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
        return f"{self.name} exited ({how})"


def _stderr_tail(f: IO[bytes]) -> str:
    f.seek(0)
    text = f.read()[-600:].decode(errors="replace").strip()
    return text or "(nothing on stderr)"


class Servers:
    """The processes of one run; use as ``with Servers() as s: s.start(...)``."""

    def __init__(self) -> None:
        self.started: list[Started] = []

    def start(self, name: str, argv: Sequence[str], *, spawn: Spawner = subprocess.Popen,
              timeout: float = 10.0, wait_ready: bool = True) -> Started:
        """Run ``argv`` and wait for its ``READY <port>`` line.

        Args:
            name: for messages ("ledger", "payfront", "vproxy").
            argv: the command.
            spawn: ``subprocess.Popen`` or a compatible starter (``netns.popen_in`` bound to a
                namespace).
            timeout: seconds to wait for READY.
            wait_ready: False for a program that prints no READY (port stays 0; the caller waits
                for it to listen).

        Error handling:
            ServerError if it cannot be executed, exits, or prints no READY in time.
        """
        err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__, it outlives start()
        try:
            proc = spawn(list(argv), stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        except OSError as exc:
            err.close()
            raise ServerError(f"cannot run {name} ({argv[0]}): {exc}") from None
        started = Started(name, proc, 0, err)
        self.started.append(started)
        if not wait_ready:
            return started
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if not ready:
                break
            chunk = os.read(proc.stdout.fileno(), 256)
            if not chunk:
                break
            line += chunk
        words = line.split()
        if len(words) != 2 or words[0] != b"READY" or not words[1].isdigit():
            proc.kill()
            proc.wait(timeout=5)
            note = started.exit_note() or f"{name} printed no READY line in {timeout:g} s"
            raise ServerError(f"{name} did not start: {note}; stderr: {_stderr_tail(err)}")
        started.port = int(words[1])
        return started

    def notes(self) -> list[str]:
        """How each process that is no longer running ended, with its stderr."""
        out = []
        for s in self.started:
            note = s.exit_note()
            if note is not None:
                out.append(f"{note}; stderr: {_stderr_tail(s.stderr)}")
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
            for f in (s.proc.stdout, s.stderr):
                if f is not None:
                    f.close()

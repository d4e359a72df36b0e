"""Helpers to run the protected stack's own commands, shared by the demo, the wget benchmark and
the Apache tests: is a command there yet, ``healer attach`` for a with-block, one HTTP GET from
inside a namespace. (The layout, Apache and vproxy themselves: ``netns`` and ``targets.apache``.)
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import netns

REPO = Path(__file__).resolve().parents[1]
READY = b"healer ready"  # the healer's log line once every agent is live and paired


def have(package: str, command: str) -> bool:
    """Whether ``python -m PACKAGE COMMAND`` exists in this checkout (its part has landed)."""
    return subprocess.run([sys.executable, "-m", package, command, "--help"], cwd=REPO,
                          capture_output=True, timeout=60).returncode == 0


def http_get(ns: str, host: str, port: int, path: str, timeout: float = 10.0) -> bytes:
    """One HTTP/1.0 GET from inside namespace ``ns``; the whole reply, or what came before EOF."""
    sock = netns.socket_in(ns)
    sock.settimeout(timeout)
    data = bytearray()
    with sock:
        sock.connect((host, port))
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: demo\r\n\r\n".encode())
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data.extend(chunk)
    return bytes(data)


class HealerError(RuntimeError):
    """``healer attach`` exited or did not get ready; the message quotes its log."""


@dataclass
class Healer:
    """A running ``healer attach``: its process, its log file, seconds it took to get ready."""

    proc: subprocess.Popen[bytes]
    log: Path
    ready_seconds: float

    def status(self, pid: int) -> str:
        """``healer status PID`` output (JSON text), or the error it printed."""
        out = subprocess.run([sys.executable, "-m", "healer", "status", str(pid)], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        return out.stdout if out.returncode == 0 else out.stderr


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-1500:]
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def healer_attached(pid: int, control: Path | None, log: Path, *flags: str,
                    timeout: float = 120.0) -> Iterator[Healer]:
    """``healer attach PID [--control PATH] FLAGS`` for the block, from when it logs it is ready.

    Its output (JSON log lines) is copied to ``log`` by a helper thread all along, so a full
    pipe never stalls the healer. Afterwards SIGINT detaches it (the target keeps running).

    Error handling:
        HealerError if it exits or is not ready within ``timeout``; it is stopped first.
    """
    argv = [sys.executable, "-m", "healer", "--log-json", "attach", str(pid), *flags]
    if control is not None:
        argv += ["--control", str(control)]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    ready = threading.Event()

    def copy() -> None:
        assert proc.stdout is not None
        with open(log, "ab") as out:
            for line in proc.stdout:
                out.write(line)
                out.flush()
                if READY in line:
                    ready.set()
        ready.set()  # EOF: the healer exited

    copier = threading.Thread(target=copy, name=f"healer-log:{pid}", daemon=True)
    copier.start()
    try:
        if not ready.wait(timeout) or proc.poll() is not None:
            what = (f"exited with {proc.returncode}" if proc.poll() is not None
                    else f"was not ready within {timeout} s")
            raise HealerError(f"healer attach {pid} {what}: {_tail(log)}")
        yield Healer(proc, log, time.perf_counter() - start)
    finally:
        if proc.poll() is None:
            proc.send_signal(2)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        copier.join(10)

"""Run a little code, or a program, inside a named network namespace.

A network namespace belongs to a thread, not to a process: ``setns`` on a short-lived helper thread
lets that thread open sockets in the namespace without moving the caller (a trio thread or the
pytest process). A socket keeps the namespace it was created in for its whole life.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pyroute2 import netns as _pyroute2_netns

from netns._errors import NetnsError, NotRootError

T = TypeVar("T")
_NETNS_DIR = "/var/run/netns"


def exists(name: str) -> bool:
    """Whether ``ip netns`` knows a namespace called ``name``."""
    return os.path.exists(os.path.join(_NETNS_DIR, name))


def require_root(what: str) -> None:
    """Raise NotRootError naming ``what`` unless this process runs as root."""
    if os.geteuid() != 0:
        raise NotRootError(what)


def call_in(name: str, fn: Callable[[], T]) -> T:
    """Call ``fn()`` on a helper thread that has entered namespace ``name``; return its result.

    Error handling:
        A missing namespace raises NetnsError; an exception from ``fn`` is re-raised here.
    """
    if not exists(name):
        raise NetnsError(f"network namespace {name!r} does not exist; create it first "
                         "(python -m netns up, or netns.topology())")
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            _pyroute2_netns.setns(name, flags=0)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=work, name=f"netns:{name}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def socket_in(name: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
              proto: int = 0) -> socket.socket:
    """A new socket that lives in namespace ``name``.

    Wrap it with ``trio.socket.from_stdlib_socket`` to use it from trio."""
    return call_in(name, lambda: socket.socket(family, type, proto))


def wait_listening(name: str | None, host: str, port: int, *, timeout: float = 10.0,
                   proc: subprocess.Popen[Any] | None = None) -> None:
    """Return once ``host:port`` accepts TCP connections from namespace ``name`` (None: this one).

    Error handling:
        NetnsError when ``timeout`` passes first, or at once when ``proc`` (the server being
        waited for) exits.
    """
    deadline = time.monotonic() + timeout
    while True:
        sock = socket_in(name) if name else socket.socket()
        sock.settimeout(0.5)
        try:
            sock.connect((host, port))
            return
        except OSError as exc:
            last = exc
        finally:
            sock.close()
        if proc is not None and proc.poll() is not None:
            raise NetnsError(f"the server for {host}:{port} exited with {proc.returncode} "
                             "before it listened")
        if time.monotonic() > deadline:
            raise NetnsError(f"nothing accepted on {host}:{port} in {name or 'this namespace'} "
                             f"within {timeout} s ({last})")
        time.sleep(0.05)


def argv_in(name: str, argv: Sequence[str]) -> list[str]:
    """The command line that runs ``argv`` inside namespace ``name`` (``ip netns exec``)."""
    return ["ip", "netns", "exec", name, *argv]


def popen_in(name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start ``argv`` inside namespace ``name``; keyword arguments go to ``subprocess.Popen``.

    Error handling:
        A missing namespace raises NetnsError; a missing program raises NetnsError naming it.
    """
    if not exists(name):
        raise NetnsError(f"network namespace {name!r} does not exist; create it first")
    try:
        return subprocess.Popen(argv_in(name, argv), **kwargs)
    except FileNotFoundError as exc:
        raise NetnsError(f"cannot run {exc.filename!r}: install iproute2 (the 'ip' command)"
                         ) from None


def run_in(name: str, argv: Sequence[str], *, timeout: float = 30.0,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside namespace ``name`` to completion and capture its output as text.

    Error handling:
        With ``check``, a non-zero exit raises NetnsError carrying the program's stderr; a program
        that outlives ``timeout`` seconds is killed and raises NetnsError.
    """
    if not exists(name):
        raise NetnsError(f"network namespace {name!r} does not exist; create it first")
    try:
        proc = subprocess.run(argv_in(name, argv), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise NetnsError(f"{' '.join(argv)} in {name} did not finish within {timeout} s") from None
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} in {name} exited {proc.returncode}: "
                         f"{proc.stderr.strip()}")
    return proc


def pids_in(name: str) -> list[int]:
    """Processes whose network namespace is ``name`` (empty if the namespace is gone)."""
    path = os.path.join(_NETNS_DIR, name)
    try:
        target = os.stat(path)
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:  # the process exited while we looked
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(entry))
    return found

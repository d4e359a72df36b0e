"""The demo's steps, each built on the parts that exist: layout, Apache, gateway, healer, heal.

The heal is shown on Apache when the healer can heal it; otherwise on the project's gcc-built login
server (the paper's Figure 2, ``targets/login_server.c``) behind the same gateway, and the demo says
so. Every process is started inside a context the caller's ExitStack owns.
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import netns
from demo import _login
from demo._show import Narrator, quote
from targets import apache

REPO = Path(__file__).resolve().parents[1]
STEPS = ("layout", "apache", "gateway", "request", "attach", "attack", "still serving")
APACHE_WORKERS = 2


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


@contextlib.contextmanager
def healer_attached(pid: int, control: Path, log: IO[Any], *extra: str,
                    timeout: float = 60.0) -> Iterator[subprocess.Popen[bytes]]:
    """``healer attach PID --control PATH ...`` for the block, once it reports it is attached."""
    argv = [sys.executable, "-m", "healer", "attach", str(pid), "--control", str(control), *extra]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=log,
                            start_new_session=True)
    try:
        _wait_attached(proc, timeout)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(2)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _wait_attached(proc: subprocess.Popen[bytes], timeout: float) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    for line in proc.stdout:  # ends at EOF when the healer exits
        if b"attached" in line:
            return
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"healer attach did not report 'attached' (exit {proc.poll()})")


def run(show: Narrator, stack: contextlib.ExitStack, work: Path) -> bool:
    """Run every step; True when the heal happened and the client got a clean answer."""
    show.step("Build the network layout",
              "Namespaces for the client, the gateway, the protected server and a backend. The "
              "gateway forwards nothing: the server's only peer is the gateway.")
    topo = stack.enter_context(netns.topology(netns.unique_name("seaddemo")))
    show.detail(f"client {topo.client_addr} -> gateway {topo.gw_client_addr} | "
                f"{topo.gw_server_addr} -> server {topo.server_addr}")
    probe = netns.socket_in(topo.server_ns)
    probe.settimeout(2)
    try:
        probe.connect((topo.client_addr, 80))
        show.failed("the server reached the client directly: the layout does not isolate it")
        return False
    except OSError as exc:
        reason = errno.errorcode.get(exc.errno or 0, str(exc))
        show.ok(f"the server cannot reach the client directly ({reason})")
    finally:
        probe.close()

    show.step("Start Apache in the server namespace",
              f"Debian's apache2 from a generated config (nothing in /etc is touched), prefork "
              f"with {APACHE_WORKERS} workers, serving the online manual on "
              f"{topo.server_addr}:8080.")
    httpd = stack.enter_context(apache.running(host=topo.server_addr, port=8080,
                                               ns=topo.server_ns, workers=APACHE_WORKERS))
    show.ok(f"Apache parent pid {httpd.pid}, workers {httpd.worker_pids()}")

    show.step("Start the gateway (vproxy) in the gateway namespace",
              f"Clients connect to {topo.gw_client_addr}:80; vproxy relays to Apache and, once a "
              "healer is paired over the control socket, holds Apache's output until it commits.")
    if not have("vproxy", "serve"):
        show.skipped("`vproxy serve` has not landed in this checkout yet")
        return False
    control = work / "ctl.sock"
    vlog = stack.enter_context(open(work / "vproxy.log", "wb"))  # noqa: SIM115
    stack.enter_context(netns.gateway(topo, listen=(topo.gw_client_addr, 80),
                                      upstream=(topo.server_addr, 8080), control=control,
                                      extra=["--protocol", "http", "--control-user", "www-data"],
                                      log=vlog))
    show.ok(f"vproxy listening on {topo.gw_client_addr}:80, control socket {control}")

    show.step("A normal request through the gateway",
              "The client fetches /manual/; scapy on the client's link records what crossed it.")
    with netns.capture(topo.client_ns) as cap:
        reply = http_get(topo.client_ns, topo.gw_client_addr, 80, "/manual/")
    show.detail(f"client got: {quote(reply, 60)}")
    if not reply.startswith(b"HTTP/1.1 200") or cap.from_port(80) != reply:
        show.failed("no 200 through the gateway, or the link carried other bytes")
        return False
    show.ok("200 OK; the bytes on the client's link are exactly what the client read")
    return _heal(show, stack, work, topo, httpd, control, vlog)


def _heal(show: Narrator, stack: contextlib.ExitStack, work: Path, topo: netns.Topology,
          httpd: apache.Apache, control: Path, vlog: IO[bytes]) -> bool:
    if not have("healer", "attach"):
        show.step("Attach the healer", "healer attach injects the Frida agent.")
        show.skipped("`healer attach` has not landed in this checkout yet")
        return False
    hlog = stack.enter_context(open(work / "healer.log", "wb"))  # noqa: SIM115
    return _login.heal(show, stack, work, topo, healer_attached, hlog)

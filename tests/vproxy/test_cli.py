"""The ``vproxy`` command: a real ``vproxy serve`` process, ``vproxy stats``, operator errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

VPROXY = [sys.executable, "-m", "vproxy"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def upstream_port() -> Iterator[int]:
    """A listening socket nobody accepts from: the kernel completes handshakes, so relays start."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    yield srv.getsockname()[1]
    srv.close()


@pytest.fixture
def serve_proc(ctl_dir: str,
               upstream_port: int) -> Iterator[tuple[subprocess.Popen[bytes], int, str]]:
    port = _free_port()
    control = f"{ctl_dir}/ctl.sock"
    proc = subprocess.Popen([*VPROXY, "--log-json", "serve", "--listen", f"127.0.0.1:{port}",
                             "--upstream", f"127.0.0.1:{upstream_port}", "--control", control],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(control + ".token"):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "vproxy serve did not start in 20 s"
            time.sleep(0.05)
        yield proc, port, control
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_serve_relays_and_stats_reports(serve_proc, upstream_port):
    proc, port, control = serve_proc
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"hi")
        deadline = time.monotonic() + 10
        while True:  # until the relay forwarded the 2 bytes (bounded)
            out = subprocess.run([*VPROXY, "stats", "--control", control, "--json"],
                                 capture_output=True, timeout=30, check=True)
            stats = json.loads(out.stdout)
            if stats["bytes_passed"] == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert stats["connections"] == 1 and stats["bytes_passed"] == 2
    assert proc.poll() is None


@pytest.mark.parametrize(("argv", "message"), [
    (["serve"], "nothing to relay"),
    (["serve", "--upstream", "nohost:80"], "host must be an IP address"),
    (["serve", "--upstream", "127.0.0.1:80", "--route", "127.0.0.1:1=127.0.0.1:2,ftp"],
     "unknown option 'ftp'"),
    (["stats", "--control", "/nonexistent/ctl.sock"], "is `vproxy serve --control"),
    (["serve", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--control",
      "/nonexistent/dir/ctl.sock"], "check that the directory exists"),
    (["serve", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--control",
      "/tmp/vp-cli-test.sock", "--control-user", "no-such-user-x"], "is not a user"),
])
def test_operator_errors_are_one_line(argv, message):
    out = subprocess.run([*VPROXY, *argv], capture_output=True, timeout=30)
    assert out.returncode in (1, 2)
    err = out.stderr.decode()
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_serve_port_in_use_is_one_line(ctl_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = subprocess.run([*VPROXY, "--log-json", "serve", "--listen", f"127.0.0.1:{port}",
                              "--upstream", "127.0.0.1:9"], capture_output=True, timeout=30)
    err = out.stderr.decode().strip().splitlines()[-1]
    assert out.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in out.stderr.decode()


def test_sigterm_shuts_down_cleanly_and_removes_the_control_socket(serve_proc):
    proc, _, control = serve_proc
    proc.terminate()
    assert proc.wait(timeout=20) == 0
    assert not os.path.exists(control) and not os.path.exists(control + ".token")

"""``make demo``: heals and exits 0; leaves nothing behind, also when interrupted (Ctrl-C)."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import netns

REPO = Path(__file__).resolve().parents[2]


def _read_until(proc: subprocess.Popen[str], pattern: str, timeout: float) -> re.Match[str]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if not ready:
            continue
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"demo never printed {pattern!r}; output:\n{''.join(seen)}")


def test_ctrl_c_in_the_middle_removes_namespaces_and_processes(needs_apache: None) -> None:
    proc = subprocess.Popen([sys.executable, "-u", "-m", "demo"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        pid = int(_read_until(proc, r"Apache parent pid (\d+)", 60).group(1))
        assert netns.existing(f"seaddemo-{proc.pid}"), "the demo's layout should exist now"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
        assert not os.path.exists(f"/proc/{pid}"), "Apache outlived the demo"
        assert not netns.existing(f"seaddemo-{proc.pid}")
    finally:
        proc.kill()
        proc.wait(10)
        netns.down(f"seaddemo-{proc.pid}-1")


def test_demo_heals_apache_and_the_login_server_and_leaves_nothing(needs_apache: None) -> None:
    proc = subprocess.Popen([sys.executable, "-u", "-m", "demo"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=150)
    finally:
        proc.kill()
        proc.wait(10)
        netns.down(f"seaddemo-{proc.pid}-1")
    assert proc.returncode == 0, out
    assert "what reached the client: HTTP/1.1 503" in out
    assert "what reached the client: DENIED" in out
    assert "FAILED" not in out
    assert not netns.existing(f"seaddemo-{proc.pid}")

"""Bad input gets one clear line and a failure status, never a Python traceback; a target that
exits mid-run ends the healer cleanly."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.healer.conftest import ROOT


def _healer(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SEAD_RUN_DIR=str(tmp_path))
    return subprocess.run([sys.executable, "-m", "healer", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def _no_pid() -> int:
    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def test_no_such_pid(tmp_path):
    pid = _no_pid()
    done = _healer(tmp_path, "attach", str(pid))
    assert done.returncode == 1
    assert f"no process with pid {pid}" in done.stderr and "Traceback" not in done.stderr


def test_not_permitted(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        env = dict(os.environ, SEAD_RUN_DIR=str(tmp_path))
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               sys.executable, "-m", "healer", "attach", str(sleeper.pid)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    finally:
        sleeper.kill()
        sleeper.wait(5)
    assert done.returncode == 1
    assert "not permitted" in done.stderr and "Traceback" not in done.stderr


def test_unknown_function_in_list(fig1_exes, start_server, tmp_path):
    listing = tmp_path / "functions.txt"
    listing.write_text("bar\nno_such_function\n")
    server = start_server(fig1_exes[("-O2", True)])
    done = _healer(tmp_path, "attach", str(server.pid), "--coverage", f"list:{listing}")
    assert done.returncode == 1
    assert "no_such_function" in done.stderr and "Traceback" not in done.stderr
    assert server.connect().ask("PING") == "PONG 1"  # left as it was


def test_bad_options(tmp_path):
    for args, text in [(["attach", "1", "--coverage", "sometimes"], "unknown coverage"),
                       (["attach", "1", "--coverage", "list:/nonexistent"], "cannot read"),
                       (["attach", "1", "--policy", "/nonexistent.pol"], "cannot read"),
                       (["attach", "1", "--control", "/nonexistent.sock"], "pairing token"),
                       (["status", str(_no_pid())], "no healer controls"),
                       (["run"], "no command")]:
        done = _healer(tmp_path, *args)
        assert done.returncode != 0, args
        assert text in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)


def test_target_exits_mid_run(fig1_exes, start_server, start_healer):
    server = start_server(fig1_exes[("-O0", True)])
    healer = start_healer("attach", str(server.pid)).ready()
    server.close()
    assert healer.wait() == 0
    done = healer.wait_for(lambda e: e.get("event") == "healer done")
    assert "gone" in done["reason"]
    assert not any("Traceback" in line for line in healer.raw)

"""`healer profile` end to end: a real kv_server, the CLI as a subprocess, Frida attached."""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from healer.profile import load, save
from targets import build

FUNCS = ["--functions", "parse_command", "key_valid", "find_slot", "send_reply"]


class _Cli:
    """`healer profile ...` with both output streams read line by line on threads."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "healer", "--log-json", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        for stream, q in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, q), daemon=True).start()

    @staticmethod
    def _pump(stream, q) -> None:
        for line in stream:
            q.put(line.rstrip("\n"))

    def wait_for(self, q: queue.Queue[str], seen: list[str], word: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = q.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and q.empty():
                    break
                continue
            seen.append(line)
            if word in line:
                return line
        raise AssertionError(f"{word!r} not printed; stdout {self.stdout} stderr {self.stderr}")

    def stop(self) -> int:
        """SIGTERM ends the recording (the profile is written); returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(timeout=30)
        time.sleep(0.1)  # let the reader threads drain what the process wrote before exiting
        for q, seen in ((self.out, self.stdout), (self.err, self.stderr)):
            while not q.empty():
                seen.append(q.get())
        return status


@pytest.fixture
def cli() -> Iterator[list[_Cli]]:
    started: list[_Cli] = []
    try:
        yield started
    finally:
        for c in started:
            if c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait(timeout=10)


def _talk(port: int, lines: list[str]) -> list[str]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall("".join(x + "\n" for x in lines).encode())
        c.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := c.recv(4096):
            data += chunk
    return data.decode().splitlines()


def test_profile_by_pid_prints_the_trace_and_writes_a_profile(kv, cli, tmp_path):
    out = tmp_path / "kv.prof.gz"
    c = _Cli("profile", str(kv.pid), "--out", str(out), "--ret-width", "32", "--trace", *FUNCS)
    cli.append(c)
    c.wait_for(c.err, c.stderr, "recording")
    assert _talk(kv.port, ["SET a 1", "GET a", "GET b!"]) == ["STORED", "VALUE 1", "ERROR bad key"]
    time.sleep(0.3)  # the agent flushes recorded calls every 100 ms: let the last batch go
    assert c.stop() == 0
    assert ".> key_valid(...) = 0" in c.stdout  # the malformed key
    assert ".> find_slot(...) = -1" in c.stdout and ".> find_slot(...) = 0" in c.stdout
    assert any(line.startswith(".> parse_command(0x") for line in c.stdout)
    prof = load(out)
    assert set(prof.functions["key_valid"].values) == {1, 0}
    assert prof.functions["parse_command"].calls == 3
    assert kv.proc.poll() is None  # attached by pid: the server keeps running after detach
    assert _talk(kv.port, ["GET a"]) == ["VALUE 1"]


def test_profile_of_a_started_command_ends_it_and_merges(cli, tmp_path):
    exe = build("kv_server")
    out = tmp_path / "kv.prof"
    for run in range(2):
        c = _Cli("profile", "--out", str(out), "--merge", "--ret-width", "32", *FUNCS,
                 "--", str(exe), "0")
        cli.append(c)
        port = int(c.wait_for(c.out, c.stdout, "READY").split()[1])
        c.wait_for(c.err, c.stderr, "recording")
        assert _talk(port, ["SET k 1", "GET k"]) == ["STORED", "VALUE 1"]
        time.sleep(0.3)
        assert c.stop() == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert load(out).runs == run + 1
    assert load(out).functions["find_slot"].calls == 4


def test_diff_exit_status_and_score(kv, tmp_path, record):
    normal = record(kv, ["RESET", "SET a 1", "GET a", "GET b", "DEL a", "COUNT"] * 5)
    malformed = record(kv, ["RESET", "SET a 1", "GET a!", "GET b", "FOO", "COUNT"] * 5)
    save(normal, tmp_path / "old.prof")
    save(malformed, tmp_path / "new.prof")
    heal = [sys.executable, "-m", "healer"]
    same = subprocess.run([*heal, "profile", "diff", str(tmp_path / "old.prof"),
                           str(tmp_path / "old.prof")], capture_output=True, text=True, timeout=60)
    assert same.returncode == 0 and "0 function(s) differ" in same.stdout
    differ = subprocess.run([*heal, "profile", "diff", str(tmp_path / "old.prof"),
                             str(tmp_path / "new.prof")],
                            capture_output=True, text=True, timeout=60)
    assert differ.returncode == 1
    assert "! key_valid: return values +[0]" in differ.stdout
    assert "! parse_command: return values +[-1] -[3]" in differ.stdout
    score = subprocess.run([*heal, "profile", "score", str(tmp_path / "new.prof")],
                           capture_output=True, text=True, timeout=60)
    assert score.returncode == 0
    assert any(line.split()[0] == "key_valid" for line in score.stdout.splitlines()[1:])


@pytest.mark.parametrize("args, words", [
    (["profile", "diff", "/nonexistent/a", "/nonexistent/b"], "cannot read profile"),
    (["profile", "999999999", "--out", "/tmp/x.prof"], "no process with pid 999999999"),
    (["profile", "--out", "/tmp/x.prof", "--", "/nonexistent/server"], "cannot start"),
    (["profile", "1"], "needs --out"),
])
def test_operator_errors_are_one_line_not_a_traceback(args, words):
    p = subprocess.run([sys.executable, "-m", "healer", *args], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode != 0
    assert words in p.stderr and "Traceback" not in p.stderr


def test_help_teaches_with_examples():
    p = subprocess.run([sys.executable, "-m", "healer", "profile", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert "healer profile diff old.prof new.prof" in p.stdout and "--window" in p.stdout
    assert Path(build("kv_server")).exists()

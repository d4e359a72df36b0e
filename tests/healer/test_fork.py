"""Forked children under `healer run --follow-children`: the children of a process that was itself
forked under the agent (prefork workers) are instrumented before their first request, also with
the memory log on, and the agent a child inherits from its parent leaves nothing that kills it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from healer.session import children_of
from targets import build

EXPLOIT = "BAR " + "A" * 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_tree(pid: int) -> None:
    for p in [*children_of(pid), pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


@pytest.fixture
def prefork(start_healer) -> Iterator:
    """`healer run --follow-children` (memory log on) of fork_server with two workers forked
    after the agent was loaded; yields (healer, port, root pid, worker pids)."""
    port = _free_port()
    healer = start_healer("run", "--follow-children", "--coverage", "all", "--",
                          str(build("fork_server", opt="-O2", stack_protector=True)), str(port),
                          "2").ready()
    root = healer.wait_for(lambda e: e.get("event") == "healer ready")["pid"]
    try:
        ready = healer.wait_count("agent:ready", 3)  # the root and both workers
        yield healer, port, root, sorted({e["pid"] for e in ready} - {root})
    finally:
        _kill_tree(root)  # started by the healer: detaching leaves it running


def _ask(port: int, healer, lines: list[str]) -> list[str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        f = sock.makefile("rwb")
        out = []
        for line in lines:
            f.write(line.encode() + b"\n")
            f.flush()
            try:
                out.append(f.readline().decode().strip())
            except OSError as exc:
                raise AssertionError(f"child lost ({exc}); log:\n{''.join(healer.raw)}") from exc
        return out


def test_children_of_forked_workers_heal_their_first_request(prefork):
    healer, port, root, workers = prefork
    for _ in range(4):  # each connection: a child forked by a worker forked under the agent
        assert _ask(port, healer, [EXPLOIT, "PING"]) == ["RET -1", "PONG"]
    heals = healer.wait_count("heal", 4)
    assert all(e["function"] == "bar" for e in heals)
    assert not {e["pid"] for e in heals} & {root, *workers}  # healed in the connection children
    assert not healer.events("fault")
    # worker() calls fork itself: listed, never a transaction (docs/agent.md, "fork")
    done = healer.cli("status", str(root))
    assert done.returncode == 0, done.stderr
    agents = json.loads(done.stdout)["agents"]
    for pid in workers:
        unhookable = {u["name"]: u["reason"] for u in agents[str(pid)]["coverage"]["unhookable"]}
        assert "fork" in unhookable["worker"]


def test_forked_worker_survives_the_paper_signals(prefork):
    healer, port, _root, workers = prefork
    worker = workers[0]
    os.kill(worker, signal.SIGUSR2)  # the handler the root's agent installed was unloaded here
    debug = healer.wait_for(lambda e: e.get("event") == "debug" and e.get("pid") == worker)
    assert debug["status"]["signals"]["installed"] == ["SIGUSR1", "SIGUSR2"]
    for _ in range(20):  # bounded: the worker is gone at once if the signal killed it
        assert os.path.exists(f"/proc/{worker}") and _state(worker) != "Z"
        time.sleep(0.01)
    assert _ask(port, healer, ["PING"]) == ["PONG"]


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]

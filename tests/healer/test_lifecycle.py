"""Attach to a running server, heal, detach (by command and by Ctrl-C), spawn under `healer run`,
reload coverage, alert and inject through the control socket, follow a forking server."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

from targets import build


def _status(healer, pid: int) -> dict:
    done = healer.cli("status", str(pid))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["agents"][str(pid)]


@pytest.mark.parametrize("plugins", [("--disable-plugin", "memlog"), ()], ids=["core", "full"])
def test_attach_heal_detach_server_keeps_serving(fig1_exes, start_server, start_healer, plugins):
    """The client's serve() call was entered while hooked: after the detach it returns through its
    exit stub (65_stubs.js), whose records outlive the agent, and the server goes on."""
    server = start_server(fig1_exes[("-O2", True)])
    healer = start_healer("attach", str(server.pid), "--coverage", "all", *plugins).ready()
    client = server.connect()
    assert client.ask("BAR " + "A" * 100) == "RET -1 1"
    done = healer.cli("detach", str(server.pid))
    assert done.returncode == 0, done.stderr
    assert healer.wait() == 0
    assert healer.events("agent detached")
    for n in range(2, 50):
        assert client.ask("PING") == f"PONG {n}"
    client.close()  # the server serves one client at a time
    fresh = server.connect()
    assert fresh.ask("BAR hi") == "RET 0 50"
    assert server.alive()


@pytest.mark.parametrize("plugins", [("--disable-plugin", "memlog"), ()], ids=["core", "full"])
def test_healer_killed_with_a_call_open_the_server_keeps_serving(fig1_exes, start_server,
                                                                  start_healer, plugins):
    """No prepareDetach: Frida unloads the agent when its host dies, txn.c goes with it, and the
    client's serve() call, entered while hooked, later returns through its exit stub, which must
    not call into the freed code (65_stubs.js retires at the unload)."""
    server = start_server(fig1_exes[("-O2", True)])
    healer = start_healer("attach", str(server.pid), "--coverage", "all", *plugins).ready()
    client = server.connect()
    assert client.ask("BAR " + "A" * 100) == "RET -1 1"
    healer.proc.kill()
    healer.proc.wait(10)
    # Frida unloads only while the thread is outside the read() it blocks in (a hook of the
    # wire's): requests give it the windows. The agent is gone with its threads (fig1 has one).
    served = 1
    deadline = time.monotonic() + 20
    while len(os.listdir(f"/proc/{server.pid}/task")) > 1 and time.monotonic() < deadline:
        served += 1
        assert client.ask("PING") == f"PONG {served}"
        time.sleep(0.05)
    assert os.listdir(f"/proc/{server.pid}/task") == [str(server.pid)], "the agent never unloaded"
    assert client.ask("PING") == f"PONG {served + 1}"
    client.close()  # serve() returns through its exit stub
    fresh = server.connect()
    assert fresh.ask("PING") == f"PONG {served + 2}"
    assert server.alive()


def test_after_detach_the_paper_signals_are_the_targets_again(fig1_exes, start_server,
                                                                start_healer):
    server = start_server(fig1_exes[("-O0", True)])
    healer = start_healer("attach", str(server.pid), "--disable-plugin", "memlog").ready()
    done = healer.cli("detach", str(server.pid))
    assert done.returncode == 0, done.stderr
    assert healer.wait() == 0
    assert server.connect().ask("PING") == "PONG 1"  # unloaded: the agent's CModules are freed
    os.kill(server.pid, signal.SIGUSR2)
    # SIGUSR2's default action, not a SIGSEGV in the freed handler of the agent
    assert server.proc.wait(10) == -signal.SIGUSR2


def test_ctrl_c_detaches_cleanly(fig1_exes, start_server, start_healer):
    server = start_server(fig1_exes[("-O0", True)])
    healer = start_healer("attach", str(server.pid)).ready()
    healer.proc.send_signal(signal.SIGINT)
    assert healer.wait() == 0
    assert healer.events("agent detached")
    assert server.connect().ask("PING") == "PONG 1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect(port: int, healer) -> socket.socket:
    for _ in range(100):
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except ConnectionRefusedError:
            assert healer.proc.poll() is None, "".join(healer.raw)
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def test_run_spawns_under_supervision(fig1_exes, start_healer):
    port = _free_port()
    healer = start_healer("run", "--coverage", "all", "--disable-plugin", "memlog", "--",
                          str(fig1_exes[("-O2", False)]), str(port)).ready()
    spawned = healer.wait_for(lambda e: e.get("event") == "agent loaded")["pid"]
    try:
        sock = _connect(port, healer)
        f = sock.makefile("rwb")
        for n in range(1, 21):
            f.write(b"NUL missing\n")
            f.flush()
            assert f.readline() == f"VAL -1 {n}\n".encode()
        heal = healer.wait_for(lambda e: e.get("event") == "heal")
        assert heal["function"] == "lookup_len"
        sock.close()
        healer.proc.send_signal(signal.SIGINT)
        assert healer.wait() == 0
    finally:
        os.kill(spawned, signal.SIGKILL)  # started by the healer: detaching leaves it running


def test_reload_alert_and_inject(fig1_exes, start_server, start_healer):
    server = start_server(fig1_exes[("-O2", True)])
    healer = start_healer("attach", str(server.pid), "--coverage", "none",
                          "--disable-plugin", "memlog").ready()
    assert _status(healer, server.pid)["coverage"]["hooked"] == 0
    # an IDS asks for bar() to be supervised: the next exploit is healed
    done = healer.cli("alert", str(server.pid), "--function", "bar")
    assert done.returncode == 0, done.stderr
    client = server.connect()
    assert client.ask("BAR " + "A" * 100) == "RET -1 1"
    # fault injection: lookup_len's next call fails, with the value chosen like any heal
    done = healer.cli("inject", str(server.pid), "--function", "lookup_len")
    assert done.returncode == 0, done.stderr
    assert client.ask("NUL alpha") == "VAL -1 2"
    assert client.ask("NUL alpha") == "VAL 3 3"
    inject = healer.wait_for(lambda e: e.get("event") == "inject")
    assert inject["function"] == "lookup_len"
    assert (inject["selected"], inject["value"]) == ("heuristic", "-1")
    # reload with another coverage
    done = healer.cli("reload", str(server.pid), "--coverage", "all")
    assert done.returncode == 0, done.stderr
    status = _status(healer, server.pid)
    assert status["coverage"]["mode"] == "all"
    assert status["coverage"]["hooked"] == status["coverage"]["discovered"]
    assert client.ask("DIV 0") == "DIV -1 4"


def test_list_coverage_hooks_only_the_listed_functions(fig1_exes, start_server, start_healer,
                                                         tmp_path):
    listing = tmp_path / "functions.txt"
    listing.write_text("# Figure 1\nbar\n")
    server = start_server(fig1_exes[("-O0", False)])
    healer = start_healer("attach", str(server.pid), "--coverage", f"list:{listing}",
                          "--disable-plugin", "memlog").ready()
    cov = _status(healer, server.pid)["coverage"]
    assert cov["mode"] == "list" and cov["hooked"] == 1
    assert server.connect().ask("BAR " + "A" * 100) == "RET -1 1"


def test_forking_server_child_forked_after_attach_is_healed(start_server, start_healer):
    server = start_server(build("fork_server", opt="-O2", stack_protector=True), "2")
    healer = start_healer("attach", str(server.pid), "--follow-children", "--coverage", "all",
                          "--disable-plugin", "memlog").ready()
    healer.wait_count("agent loaded", 3)  # the parent and the two workers that exist already
    for _ in range(3):  # each connection is served by a child forked after the attach
        client = server.connect()
        try:  # the exploit is the child's first request: it must be instrumented before it runs
            assert client.ask("BAR " + "A" * 100) == "RET -1"
            assert client.ask("PING") == "PONG"
        except OSError as exc:
            raise AssertionError(f"child lost ({exc}); healer log:\n{''.join(healer.raw)}") from exc
        client.close()
    heals = healer.wait_count("heal", 3)
    assert all(e["function"] == "bar" for e in heals)
    assert server.pid not in {e["pid"] for e in heals}  # healed in the children
    assert server.alive()


def test_random_fault_injection(fig1_exes, start_server, start_healer, tmp_path):
    listing = tmp_path / "functions.txt"
    listing.write_text("lookup_len\n")
    server = start_server(fig1_exes[("-O2", True)])
    healer = start_healer("attach", str(server.pid), "--coverage", f"list:{listing}",
                          "--disable-plugin", "memlog").ready()
    assert _status(healer, server.pid)["coverage"]["imports"] > 0  # listed, not hooked
    client = server.connect()
    assert healer.cli("inject", str(server.pid), "--probability", "1").returncode == 0
    for n in range(1, 21):
        assert client.ask("NUL alpha") == f"VAL -1 {n}"
    assert healer.cli("inject", str(server.pid), "--probability", "0").returncode == 0
    assert client.ask("NUL alpha") == "VAL 3 21"
    injects = healer.wait_count("inject", 20)
    assert {e["mode"] for e in injects} == {"random"}

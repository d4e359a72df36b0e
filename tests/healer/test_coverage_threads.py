"""COSAK depth and nested transactions (the innermost supervised frame is the one repaired), one
transaction stack per thread, and the paper's signals (SIGUSR1 reload, SIGUSR2 debug dump)."""

from __future__ import annotations

import os
import signal
import threading

EXPLOIT = "BAR " + "A" * 100


def test_cosak_depth_decides_which_frame_is_repaired(fig1_exes, start_server, start_healer):
    # serve() reads; handle_line() is 1 call away from that read, bar() 2 calls away.
    exe = fig1_exes[("-O2", True)]
    shallow = start_server(exe)
    healer = start_healer("attach", str(shallow.pid), "--coverage", "cosak:1",
                          "--disable-plugin", "memlog").ready()
    client = shallow.connect()
    assert client.ask("PING") == "PONG 1"
    assert client.ask(EXPLOIT) == ""  # handle_line() healed with -1: serve() closes the client
    assert healer.wait_for(lambda e: e.get("event") == "heal")["function"] == "handle_line"
    assert shallow.connect().ask("PING") == "PONG 2"

    deep = start_server(exe)
    healer = start_healer("attach", str(deep.pid), "--coverage", "cosak:2",
                          "--disable-plugin", "memlog").ready()
    client = deep.connect()
    assert client.ask("PING") == "PONG 1"
    assert client.ask(EXPLOIT) == "RET -1 2"  # bar() itself, the innermost supervised frame
    assert healer.wait_for(lambda e: e.get("event") == "heal")["function"] == "bar"


def test_threads_have_their_own_transactions(fig1_exes, start_server, start_healer):
    server = start_server(fig1_exes[("-O2", False)], "threads")
    healer = start_healer("attach", str(server.pid), "--coverage", "all",
                          "--disable-plugin", "memlog").ready()
    errors: list[str] = []

    def attack() -> None:
        client = server.connect()
        for _ in range(300):
            for line, want in ((EXPLOIT, "RET -1 "), ("BAR hi", "RET 0 "), ("NUL beta", "VAL 6 ")):
                got = client.ask(line)
                if not got.startswith(want):
                    errors.append(f"{line[:10]!r} -> {got!r}")
                    return
        client.close()

    workers = [threading.Thread(target=attack) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not any(w.is_alive() for w in workers)
    assert errors == []
    assert server.alive()
    heals = healer.wait_count("heal", 900)
    assert len({e["thread"] for e in heals}) == 3


def test_sigusr1_reloads_and_sigusr2_dumps_state(fig1_exes, start_server, start_healer):
    server = start_server(fig1_exes[("-O0", True)])
    healer = start_healer("attach", str(server.pid), "--disable-plugin", "memlog").ready()
    os.kill(server.pid, signal.SIGUSR2)
    debug = healer.wait_for(lambda e: e.get("event") == "debug")
    assert debug["status"]["coverage"]["mode"] == "cosak"
    os.kill(server.pid, signal.SIGUSR1)
    healer.wait_for(lambda e: e.get("event") == "reloaded")
    assert server.connect().ask("PING") == "PONG 1"

"""The product end to end, as an operator runs it: `healer run` (spawned) or `healer attach`
(attached) with `--control` pairs the agent inside partial_reply_server with the gateway
(vproxy.serve). A real fault after a partial reply: the partial reply never reaches the client,
the replacement does, the next request on the connection is answered, the server lives on.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import trio

import vproxy
from targets import build
from vproxy import Address, GatewayConfig, Route

from .test_gateway_e2e import WAIT, guarded, recv_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def listening(port: int) -> None:
    """Until the server accepts (the caller bounds the wait)."""
    while True:
        probe = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with probe:
            try:
                await probe.connect(("127.0.0.1", port))
                return
            except OSError:
                await trio.sleep(0.02)


class Healer:
    """`healer run|attach` as a subprocess; its JSON log lines are read from stdout."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, start_new_session=True)
        self.pids: set[int] = set()

    def wait_for(self, event: str) -> dict:
        assert self.proc.stdout is not None
        seen = []
        for line in self.proc.stdout:  # bounded by the caller's trio timeout and by EOF
            seen.append(line)
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if "pid" in rec:
                    self.pids.add(int(rec["pid"]))
                if rec.get("event") == event:
                    return rec
        raise AssertionError(f"healer exited before {event!r}: {''.join(seen)}")

    def close(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=WAIT)


@pytest.mark.parametrize("mode", ["run", "attach", "run-fork"])
async def test_healer_cli_pairs_with_the_gateway_and_a_fault_never_leaks(tmp_path, mode):
    """``run-fork``: the server forks a child per connection (`--follow-children`); the child's
    agent pairs over its own control connection and heals there."""
    port = free_port()
    exe = str(build("partial_reply_server", opt="-O2"))
    coverage = tmp_path / "coverage.txt"
    coverage.write_text("handle_request\nhandle_exchange\n")
    env = {**os.environ, "SEAD_RUN_DIR": str(tmp_path)}
    server = None
    healer = None
    async with trio.open_nursery() as nursery:
        config = GatewayConfig(routes=(Route(Address("127.0.0.1", 0),
                                             Address("127.0.0.1", port), "line"),),
                               control=str(tmp_path / "ctl.sock"))
        serving = await nursery.start(vproxy.serve, config)
        common = ["--coverage", f"list:{coverage}", "--control", serving.control]
        try:
            if mode == "run":
                healer = Healer([sys.executable, "-m", "healer", "run", *common, "--", exe,
                                 str(port)], env)
            elif mode == "run-fork":
                healer = Healer([sys.executable, "-m", "healer", "run", "--follow-children",
                                 *common, "--", exe, str(port), "fork"], env)
            else:
                server = subprocess.Popen([exe, str(port)], stdout=subprocess.PIPE, text=True)
                assert server.stdout is not None and server.stdout.readline().startswith("listen")
                healer = Healer([sys.executable, "-m", "healer", "attach", str(server.pid),
                                 *common], env)
            with trio.fail_after(WAIT * 3):
                loaded = await trio.to_thread.run_sync(healer.wait_for, "agent loaded")
                await guarded(serving)
                await listening(port)  # `healer run` resumes the server after loading the agent
            target = loaded["pid"]
            client = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listen = serving.listening[0]
            with client, trio.fail_after(WAIT):
                await client.connect((listen.host, listen.port))
                await client.send(b"GET alice\n")
                assert await recv_until(client, b"\n") == b"REPLY alice\n"
                await client.send(b"GET crash\n")
                replacement = await recv_until(client, b"\n")
                assert b"REPLY" not in replacement and replacement.startswith(b"ERR")
                await client.send(b"GET bob\n")
                assert await recv_until(client, b"\n") == b"REPLY bob\n"
            os.kill(target, 0)  # the server is alive
            if mode == "run-fork":
                assert healer.wait_for("child forked")["parent"] == target
        finally:
            if healer is not None:
                healer.close()
            if server is not None:
                server.kill()
                server.wait(timeout=WAIT)
            nursery.cancel_scope.cancel()

"""A clean detach leaves the server healthy through the gateway: `healer detach PID` (or Ctrl-C of
`healer attach`) makes the agent send UNGUARD before it goes, so the gateway stops holding and the
next request is relayed at once (counted as passed, never held). Without UNGUARD the gateway takes
the closed control connection for a crash and stays guarded (fail closed): the next reply would
wait in a hold until the hold bound closed the connection.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import trio

import vproxy
from targets import build
from vproxy import Address, GatewayConfig, Route

from .test_gateway_e2e import WAIT, guarded, recv_until
from .test_healer_cli_e2e import Healer, free_port


async def ask(serving, name: bytes) -> bytes:
    """One request on a fresh connection through the gateway; the reply line."""
    client = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listen = serving.listening[0]
    with client, trio.fail_after(WAIT):
        await client.connect((listen.host, listen.port))
        await client.send(b"GET " + name + b"\n")
        return await recv_until(client, b"\n")


@pytest.mark.parametrize("how", ["detach", "sigint"])
async def test_after_a_clean_detach_the_gateway_stops_holding(tmp_path, how):
    port = free_port()
    exe = str(build("partial_reply_server", opt="-O2"))
    coverage = tmp_path / "coverage.txt"
    coverage.write_text("handle_request\nhandle_exchange\n")
    env = {**os.environ, "SEAD_RUN_DIR": str(tmp_path)}
    server = subprocess.Popen([exe, str(port)], stdout=subprocess.PIPE, text=True)
    healer = None
    try:
        assert server.stdout is not None and server.stdout.readline().startswith("listen")
        async with trio.open_nursery() as nursery:
            config = GatewayConfig(routes=(Route(Address("127.0.0.1", 0),
                                                 Address("127.0.0.1", port), "line"),),
                                   control=str(tmp_path / "ctl.sock"))
            serving = await nursery.start(vproxy.serve, config)
            healer = Healer([sys.executable, "-m", "healer", "attach", str(server.pid),
                             "--coverage", f"list:{coverage}", "--control", serving.control], env)
            with trio.fail_after(WAIT * 3):
                await trio.to_thread.run_sync(healer.wait_for, "agent loaded")
                await guarded(serving)
            stats = serving.gateway.stats
            assert await ask(serving, b"alice") == b"REPLY alice\n"
            assert stats.committed >= 1 and stats.bytes_released >= len(b"REPLY alice\n")

            if how == "detach":
                done = await trio.to_thread.run_sync(lambda: subprocess.run(
                    [sys.executable, "-m", "healer", "detach", str(server.pid)], env=env,
                    capture_output=True, text=True, timeout=WAIT * 3))
                assert done.returncode == 0, done.stderr
            else:
                healer.proc.send_signal(2)
            assert await trio.to_thread.run_sync(lambda: healer.proc.wait(WAIT * 3)) == 0
            with trio.fail_after(WAIT):
                while serving.gateway.guarded:
                    await trio.sleep(0.01)

            held, passed = stats.bytes_held, stats.bytes_passed
            assert await ask(serving, b"bob") == b"REPLY bob\n"
            assert stats.bytes_held == held  # relayed, not held until a bound
            assert stats.bytes_passed >= passed + len(b"REPLY bob\n")
            assert stats.bounds_fired == 0
            assert server.poll() is None  # the server lives on
            nursery.cancel_scope.cancel()
    finally:
        if healer is not None:
            healer.close()
        server.kill()
        server.wait(timeout=WAIT)

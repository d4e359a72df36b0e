"""Commit-to-release latency through the gateway: from the moment a supervised function of the
target has written its reply and returns (the agent then writes COMMIT to vproxy's control socket
from inside the target) to the moment the reply's bytes reach the client.

partial_reply_server's handle_request stamps CLOCK_MONOTONIC after its last write; the client
stamps the same clock when the reply arrives and asks ``LAST`` (outside any transaction) for the
server's stamp. Configurations, measured side by side in one run, alternating rounds:

- ``direct``: the client talks to the server, no gateway, no agent;
- ``relay``: through ``vproxy serve`` with no healer (plain relay);
- ``guarded``: through ``vproxy serve`` with the healer agent in the server (handle_request
  supervised, memory log on): every reply is held until its COMMIT arrives.

Prints median and p99 in microseconds and the guarded/relay ratio; writes
``bench/results/commit_latency.json``.

    python -m bench commit_latency
    python -m bench.commit_latency --requests 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import frida

from bench.memlog import RESULTS
from healer._agent_source import agent_source
from targets import build

WAIT = 10.0
MODES = ("direct", "relay", "guarded")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(what: str, ready) -> None:
    deadline = time.monotonic() + WAIT
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.02)


def _connectable(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _readline(f) -> bytes:
    line = f.readline()
    if not line.endswith(b"\n"):
        raise ConnectionError("the connection closed mid-reply")
    return bytes(line)


def _samples(port: int, requests: int) -> list[float]:
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")
        for i in range(requests):
            s.sendall(f"GET r{i}\n".encode())
            _readline(f)
            arrived = time.monotonic_ns()
            s.sendall(b"LAST\n")
            stamp = int(_readline(f).split()[1])
            out.append((arrived - stamp) / 1000.0)
    return out


def _round(mode: str, requests: int, tmp: Path) -> list[float]:
    server = subprocess.Popen([str(build("partial_reply_server", opt="-O2")), "0"],
                              stdout=subprocess.PIPE, text=True)
    gateway = None
    session = None
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[1])
        if mode == "direct":
            return _samples(port, requests)
        listen = _free_port()
        ctl = tmp / f"ctl-{mode}.sock"
        argv = [sys.executable, "-m", "vproxy", "serve", "--upstream", f"127.0.0.1:{port}",
                "--listen", f"127.0.0.1:{listen}", "--protocol", "line"]
        if mode == "guarded":
            argv += ["--control", str(ctl)]
        gateway = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for("vproxy to listen", lambda: _connectable(listen))
        if mode == "guarded":
            _wait_for("the control token", lambda: Path(str(ctl) + ".token").exists())
            session = frida.attach(server.pid)
            script = session.create_script(agent_source())
            script.load()
            token = Path(str(ctl) + ".token").read_text().strip()
            coverage = {"mode": "list", "functions": ["handle_request"]}
            script.exports_sync.init({"control": {"path": str(ctl), "token": token},
                                      "coverage": coverage})
            if not script.exports_sync.status()["wire"]["connected"]:
                raise RuntimeError("the agent could not pair with vproxy")
        return _samples(listen, requests)
    finally:
        for proc in (gateway, server):
            if proc is not None:
                proc.kill()
                proc.wait(timeout=WAIT)
        if session is not None:
            session.detach()


def _p99(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(len(xs) * 0.99) - 1)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench commit_latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    samples: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for m in MODES:
                samples[m] += _round(m, args.requests, Path(tmp))
    result = {m: {"median_us": statistics.median(v), "p99_us": _p99(v), "n": len(v)}
              for m, v in samples.items()}
    ratio = result["guarded"]["median_us"] / result["relay"]["median_us"]
    for m in MODES:
        print(f"{m:8s} median {result[m]['median_us']:8.1f} us   p99 {result[m]['p99_us']:8.1f} us"
              f"   (n={result[m]['n']})")
    print(f"guarded/relay median ratio: {ratio:.2f}x; commit path adds "
          f"{result['guarded']['median_us'] - result['relay']['median_us']:.1f} us at the median")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "commit_latency.json").write_text(
        json.dumps({"requests": args.requests, "rounds": args.rounds, "pid": os.getpid(),
                    "result": result, "guarded_vs_relay": ratio}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

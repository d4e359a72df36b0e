"""Gateway throughput: small keep-alive HTTP requests through vproxy vs direct vs haproxy.

wrk (1 thread, 8 connections, keep-alive) fetches a ~1 KiB file from Apache (``-X``) on loopback:

- ``direct``: straight to Apache;
- ``haproxy``: haproxy in TCP mode, one thread (the reference relay);
- ``vproxy-pass``: ``vproxy serve --protocol http`` with no healer (pass-through);
- ``vproxy-guarded``: the same with ``--control`` and a scripted controller that GUARDs and, for
  every response, sends ``BEGIN``/``IO in``/``IO out``/``COMMIT`` with the real offsets (Apache's
  responses to wrk have a fixed length, measured first). Every response is held until its commit
  is applied: this measures the guarded hold/release path and the control parsing, without Frida;
- ``vproxy-guarded-raw``: the same with ``--protocol raw``: no HTTP framing of the held streams
  (an abort then closes instead of answering 503), to show what the framing costs.

Configurations alternate (A B C D A B C D ...) so drift on the shared machine hits all alike. For
each: requests/s, p50/p99 latency (wrk), and the proxy's CPU per request (utime+stime of its
process over the run / requests). Ratios are printed against haproxy and direct; the medians go
to ``bench/results/proxy.json``.

    python -m bench proxy
    python -m bench.proxy --rounds 5 --seconds 5
    python -m bench.proxy --rounds 3 --out /tmp/proxy-bench   # leave bench/results alone
    python -m bench.proxy --rounds 1 --configs vproxy-guarded --profile   # where the time goes

Where the time went (py-spy, utime/stime of the proxy; 2 shared cores, so CPU per request is the
figure to trust, wall ratios move by +-0.1 from run to run):

- kernel time per request is the same for haproxy and vproxy (~15-21 us: loopback send/recv);
- the task-per-direction trio relay spent ~14 us of Python per request (haproxy ~1.4 us), nearly
  all in trio's per-wake-up path, twice per request; trio's socket wrapper adds two checkpoints
  per call (plain sockets + wait_readable instead); a receive tried before waiting only returned
  EAGAIN in request/response traffic (wait first unless the last receive filled the buffer);
- unguarded links now share one private level-triggered epoll served by one task
  (``vproxy/_fastrelay.py``): ~8 us of Python per request, CPU per request ~1.0-1.3x haproxy;
  with backpressure handled there too, the wget crawl of the manual (bench/wget_manual.py) went
  from 122 to 74 us of proxy CPU per request (haproxy 47-60), +14.5% vs native (haproxy +17%);
- two gateway processes on one port (SO_REUSEPORT) gave no more requests/s on 2 shared cores
  and ~25% more CPU per request; splice() was not tried: the kernel share is already haproxy's;
- guarded: HTTP framing of both held streams (protocols/http, llhttp through ctypes, a callback
  per header) cost ~40 us per request, the control lines ~10 us (4 lines: BEGIN, IO in, IO out,
  COMMIT); ``vproxy-guarded-raw`` shows the rest. Framing runs only with ``--on-abort replace``;
- releasing on the control event itself (no hop to the writer task) cut event-to-release from
  ~77 to ~50 us at p50;
- guarded, second pass (py-spy on the gateway under wrk; one alternating run against the previous
  code, CPU us/request: haproxy 22.4, pass-through 27.4 -> 26.0, guarded 95.9 -> 51.7, guarded
  without framing 58.0 -> 39.1; req/s vs haproxy: guarded 0.23 -> 0.49, raw 0.49 -> 0.66,
  pass-through 0.78 -> 0.77):
  - HTTP boundaries by a head scan of plain keep-alive messages (``vproxy/_httpframe.py``), llhttp
    only for what the scan does not accept: ~40 -> ~6 us per request/response pair;
  - held links stay on the shared epoll (``vproxy/_fastrelay.py``): a held chunk is fed to the hold
    and what is already committed goes out in the same step; no task wake-ups per request;
  - the control reader splits every complete line of a read at once (1.48 -> 1.22 us a line);
    a commit or IO line for bytes not yet arrived no longer pumps the hold;
  - where the rest goes: in py-spy samples of the guarded gateway about half is the two send()
    system calls (as for haproxy), ~18% the control session (4 lines per request: reading,
    parsing into message objects, applying; ~3 us a line), ~6% HTTP boundaries, the rest the epoll
    loop and the hold's bookkeeping. Python per request is still ~4x haproxy's total.
- third pass, on the wget crawl of bench/wget_manual.py (one sequential client, ~24 KB responses;
  profiled with py-spy --gil, perf and strace -c on the gateway; proxy CPU us/request from
  alternating 3-round runs, previous code -> this code, same committed agent; haproxy ~46-49):
  - the writer task spun while anything was held: hold arrival times were ``time.monotonic()``
    but trio's deadlines are in trio's clock (``time.monotonic()`` plus a random offset of
    10^4-2*10^5 s), so every hold-ms deadline was long past and the writer looped (cancel scope,
    flush) until the commit came. Hold times now use ``trio.current_time()``, and the idle
    writer's deadline is moved (``CancelScope.deadline``) instead of waking it per held chunk;
    guarded with coverage none 200 -> 144-150, one transaction a request 336 -> 192-196, COSAK
    980 -> 340 (its 36 control lines a request now dominate the gateway's share);
  - control connections are served by the relay's epoll loop (no trio socket wrapper, no task
    switch per batch of lines); BEGIN/IO/COMMIT/GRADUAL/RELEASE parsed from their bytes (1.37
    -> 1.02 us a line), handlers dispatched without per-line checks (~1.7 us a line applied);
  - where the rest goes (perf, guarded, coverage none, ~150 us a request): ~45% kernel, of which
    context switches (``finish_task_switch``) are a third: ~2.2 trio wake-ups a request, as many
    as pass-through (the RELEASE line usually arrives with the response it releases); Python
    ~85 us: trio's loop per wake-up (~5 us), HTTP head scans (~9 us a request/response pair),
    the hold's copy (~2 us per 24 KB), control lines; hold time p50 ~46 us (the agent's line
    comes after Apache's write returns);
  - pass-through ~66-80 us against haproxy's ~46-49 (wall time within the noise of haproxy's):
    its kernel share alone (~45 us: the wake-ups, an epoll inside trio's epoll, two send/recv)
    is about haproxy's whole cost; a re-poll before yielding to trio saved nothing measurable.
- fourth pass, a relay thread outside trio (``vproxy/_threadrelay.py``): the same relay loop in
  its own OS thread, blocked in ``epoll.poll``; only links that hold nothing while the gateway is
  not guarded. Trio takes a link out synchronously (a mutex around the thread's work on one poll
  result) before anything of it is held (GUARD, a transaction naming it, an abort, a replay); it
  continues on the trio-side relay with exact offsets. Guarded links and control connections
  stay in trio (not tried in the thread: every control event, hold deadline and writer wake-up
  would cross the bridge, and the guarded cost is elsewhere: control lines, head scans).
  - wget crawl, proxy CPU us/request (3-round alternating runs, new and previous code run
    alternately as whole runs, haproxy in each): previous 84, 74 (haproxy 49, 49) -> thread 56,
    52, 56 (haproxy 46, 42, 46): 1.51-1.71x -> 1.22-1.24x haproxy. Wall vs haproxy-tcp: previous
    1.02, 0.96, thread 1.04, 1.04, 1.05 (within the +-0.1 noise of this shared machine); one
    more pair of 5-round runs: previous 74 us (1.51x haproxy), wall 1.02x; thread 63 us (1.21x),
    wall 1.02x: on the crawl the relay's wall share was already haproxy's, its CPU was not;
  - strace -c of the gateway over a crawl (2857 requests), per request: previous 4.25
    epoll_wait + 2.19 epoll_ctl (10.8 system calls), thread 2.16 epoll_wait + 0.10 epoll_ctl +
    0.12 futex (6.8 system calls: + ~2.1 sendto, ~2.1 recvfrom); haproxy 2 + 0; context
    switches (perf stat, two crawls) ~2.05 a request for previous, thread and haproxy alike;
  - wrk, previous code added as a configuration of the same alternating run (a loaded machine:
    haproxy ~36 us): pass-through CPU 46.6 -> 34.6 and 49.1 -> 36.9 us/request (haproxy 35.0,
    36.7), req/s vs haproxy 0.88 -> 1.00 and 0.90 -> 1.01; guarded unchanged (80.7 -> 83.0);
  - py-spy of the thread over a crawl: apart from waiting in ``epoll.poll``, ~13% of samples in
    ``send`` (the kernel's copy), the loop's Python under 2%: what is left against haproxy is
    kernel work (thread wake-ups, the copies), not Python.
- fifth pass, guarded links in the thread too (``vproxy/_turns.py``: trio and the relay thread take
  turns on one lock, trio letting go of it only while it waits for I/O, so the thread may serve
  held links and control lines directly; what only trio may do is queued to it): on the wget
  crawl with coverage none (docs/memlog-and-wire.md) the gateway's CPU per request 150-172 ->
  108-136 us; here (2 rounds, previous and this code run one after the other): guarded 88.2 ->
  70.1 us/request, guarded-raw 71.7 -> 55.3, pass-through 38.4 -> 40.3 (haproxy 37.9, 37.1);
  req/s vs haproxy guarded 0.58 -> 0.61; event to release p50 33 us both, p99 170 -> 96 us.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from bench._proc import stop
from protocols.control import Begin, Commit, Conn, Endpoint, Guard, Io, Message
from targets import apache
from vproxy.testing import ScriptedController

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
PATH = "/manual/style/lang.dtd"  # 907 bytes: the ~1 KiB file
PORTS = {"apache": 18180, "haproxy": 18181, "vproxy-pass": 18182, "vproxy-guarded": 18183,
         "vproxy-guarded-raw": 18184}
CONFIGS = ("direct", "haproxy", "vproxy-pass", "vproxy-guarded", "vproxy-guarded-raw")
WINDOW = 400  # responses announced ahead per connection by the guarded controller


def _cpu(pid: int | None) -> float:
    """User+system CPU seconds of ``pid`` so far (0 when there is no such process)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


@contextlib.contextmanager
def _process(argv: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=REPO, start_new_session=True)
    try:
        _wait_port(port, proc)
        yield proc
    finally:
        stop(proc)


@contextlib.contextmanager
def _haproxy(workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(f"""global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen web
    bind 127.0.0.1:{PORTS["haproxy"]}
    server apache 127.0.0.1:{PORTS["apache"]}
""")
    with _process(["haproxy", "-db", "-f", str(cfg)], PORTS["haproxy"]) as proc:
        yield proc


def _vproxy_argv(port: int, control: str | None, protocol: str = "http") -> list[str]:
    argv = [sys.executable, "-m", "vproxy", "--log-level", "warning", "serve",
            "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{PORTS['apache']}",
            "--protocol", protocol]
    return argv + (["--control", control] if control else [])


def _wrk(port: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s", "--latency",
                          f"http://127.0.0.1:{port}{PATH}"],
                         capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    unit = {"us": 1.0, "ms": 1000.0, "s": 1e6}

    def latency(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * unit[m.group(2)] if m else float("nan")

    requests = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if not requests or not rate:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    return {"requests": int(requests.group(1)), "rps": float(rate.group(1)),
            "p50_us": latency("50"), "p99_us": latency("99"), "errors": 1.0 if errors else 0.0}


def _response_lengths() -> tuple[int, int]:
    """Length of wrk's request and of Apache's keep-alive response to it (both fixed)."""
    request = (f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{PORTS['apache']}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", PORTS["apache"]), 5) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += s.recv(65536)
    # wrk's Host header names the port it connects to: same number of digits for every port
    return len(request), len(head) + 4 + length


class _Controller:
    """Plays the healer for the guarded configuration, in a thread with its own trio loop.

    It finds the gateway's connections to Apache as Apache sees them (``ss -ti``), sends ``CONN``
    for each, and keeps at least ``WINDOW // 2`` committed transactions announced ahead of each
    connection's progress (Apache's acked bytes / response length).
    """

    def __init__(self, control: str, req_len: int, resp_len: int) -> None:
        self.control = control
        self.req_len, self.resp_len = req_len, resp_len
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: trio.run(self._main), daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> _Controller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _apache_sockets(self) -> dict[tuple[str, int, str, int], int]:
        """Apache's established sockets (as Apache sees them) -> bytes it wrote that were acked
        (the gateway received them): the exact progress of each connection."""
        out = subprocess.run(["ss", "-tinH", "state", "established",
                              f"( sport = :{PORTS['apache']} )"],
                             capture_output=True, text=True, timeout=10).stdout
        found: dict[tuple[str, int, str, int], int] = {}
        key = None
        for line in out.splitlines():
            if not line.startswith(("\t", " ")):
                local, peer = line.split()[-2:]
                lh, lp = local.rsplit(":", 1)
                ph, pp = peer.rsplit(":", 1)
                key = (lh, int(lp), ph, int(pp))
                found[key] = 0
            elif key is not None:
                acked = re.search(r"bytes_acked:(\d+)", line)
                found[key] = int(acked.group(1)) if acked else 0
        return found

    async def _main(self) -> None:
        try:
            async with await ScriptedController.connect(self.control) as ctl:
                await ctl.send(Guard())
                await ctl.sync()
                await self._loop(ctl)
        except BaseException as exc:  # reported by the bench, never lost
            self.error = exc

    async def _loop(self, ctl: ScriptedController) -> None:
        cids: dict[tuple[str, int, str, int], int] = {}
        announced: dict[int, int] = {}  # cid -> responses announced
        tx = 0
        while not self._stop.is_set():
            lines: list[Message] = []
            for key, acked in self._apache_sockets().items():
                if key not in cids:
                    cids[key] = len(cids) + 1
                    lines.append(Conn(cids[key], Endpoint(*key[:2]), Endpoint(*key[2:])))
                    announced[cids[key]] = 0
                cid, done = cids[key], acked // self.resp_len
                n = announced[cid]
                if n - done < WINDOW // 2:
                    for k in range(n, n + WINDOW):
                        tx += 1
                        lines += [Begin(tx, None),
                                  Io(tx, cid, "in", k * self.req_len, (k + 1) * self.req_len),
                                  Io(tx, cid, "out", k * self.resp_len, (k + 1) * self.resp_len),
                                  Commit(tx)]
                    announced[cid] = n + WINDOW
            for i in range(0, len(lines), 400):
                await ctl.send(*lines[i:i + 400])
            await trio.sleep(0.02)


@contextlib.contextmanager
def _target(name: str, workdir: Path, lengths: tuple[int, int]) -> Iterator[tuple[int, int | None]]:
    """Start what configuration ``name`` needs; yields (port wrk uses, pid whose CPU counts)."""
    if name == "direct":
        yield PORTS["apache"], None
    elif name == "haproxy":
        with _haproxy(workdir) as proc:
            yield PORTS["haproxy"], proc.pid
    elif name == "vproxy-pass":
        with _process(_vproxy_argv(PORTS[name], None), PORTS[name]) as proc:
            yield PORTS[name], proc.pid
    else:
        control = str(workdir / "ctl.sock")
        protocol = "raw" if name.endswith("-raw") else "http"
        with _process(_vproxy_argv(PORTS[name], control, protocol), PORTS[name]) as proc:
            while not os.path.exists(control + ".token"):
                time.sleep(0.02)
            with _Controller(control, *lengths) as ctl:
                yield PORTS[name], proc.pid
            if ctl.error is not None:
                raise RuntimeError(f"guarded controller failed: {ctl.error!r}")


def event_latency(samples: int = 2000) -> dict[str, float]:
    """Event-to-release latency: the server's 64 bytes are held (their IO event already applied);
    the time from writing ``COMMIT`` on the control socket until the client has the bytes.
    Blocking sockets in this process; the gateway is a ``vproxy serve`` process."""
    workdir = Path(tempfile.mkdtemp(prefix="sead-bench-latency-"))
    control = str(workdir / "ctl.sock")
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(1)
    port = PORTS["vproxy-guarded"]
    argv = _vproxy_argv(port, control)
    argv[argv.index("--upstream") + 1] = f"127.0.0.1:{upstream.getsockname()[1]}"
    # no port probe here: its connection would be the first one the upstream accepts
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(control + ".token"):  # written after the listeners bound
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vproxy serve did not start: {argv}")
            time.sleep(0.02)
        ctl = socket.socket(socket.AF_UNIX)
        ctl.connect(control)
        ctl.settimeout(10)
        token = Path(control + ".token").read_text().strip()
        ctl.sendall(f"HELLO 1 healer {os.getpid()} {token}\nGUARD\nPING 0\n".encode())
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        server, _ = upstream.accept()
        server.settimeout(10)
        lo, pe = server.getsockname(), server.getpeername()
        ctl.sendall(f"CONN 1 {lo[0]}:{lo[1]} {pe[0]}:{pe[1]}\n".encode())
        times = []
        for k in range(samples):
            ctl.sendall(f"BEGIN {k + 1} -\nIO {k + 1} 1 out {k * 64} {k * 64 + 64}\n".encode())
            server.sendall(b"x" * 64)
            time.sleep(0.0002)  # the bytes reach the gateway and are held
            t0 = time.perf_counter()
            ctl.sendall(f"COMMIT {k + 1}\n".encode())
            got = 0
            while got < 64:
                got += len(client.recv(64 - got))
            times.append((time.perf_counter() - t0) * 1e6)
        for s in (client, server, ctl):
            s.close()
    finally:
        proc.kill()
        proc.wait(10)
        upstream.close()
        shutil.rmtree(workdir, ignore_errors=True)
    times.sort()
    return {"p50_us": times[len(times) // 2], "p99_us": times[int(len(times) * 0.99)]}


@contextlib.contextmanager
def _profiled(name: str, pid: int | None, seconds: int, out_dir: Path | None
              ) -> Iterator[None]:
    """With ``out_dir``: py-spy samples the gateway process while the body runs; its hottest
    lines (own time, idle waits left out) are printed and the raw samples kept in ``out_dir``."""
    venv_bin = str(Path(sys.executable).parent)
    spy_bin = shutil.which("py-spy") or shutil.which("py-spy", path=venv_bin)
    if out_dir is None or pid is None or not name.startswith("vproxy") or spy_bin is None:
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"proxy-profile-{name}.txt"
    spy = subprocess.Popen([spy_bin, "record", "-p", str(pid), "-d", str(seconds), "-r", "250",
                            "-f", "raw", "-o", str(out)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        try:
            spy.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(5)
    _print_profile(out)


def _print_profile(path: Path, top: int = 12) -> None:
    own: dict[str, int] = {}
    total = 0
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            leaf = stack.rsplit(";", 1)[-1]
            if "get_events" in leaf or not count.isdigit():  # trio idle in epoll_wait
                continue
            total += int(count)
            own[leaf] = own.get(leaf, 0) + int(count)
    for leaf, samples in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"      {100 * samples / max(1, total):5.1f}%  {leaf}")


def run(rounds: int, seconds: int, configs: list[str],
        profile: Path | None = None) -> dict[str, list[dict[str, float]]]:
    """Alternating rounds of ``configs``; ``profile``: where py-spy's samples go (first round)."""
    results: dict[str, list[dict[str, float]]] = {c: [] for c in configs}
    workdir = Path(tempfile.mkdtemp(prefix="sead-bench-proxy-"))
    try:
        with apache.running(port=PORTS["apache"], workers=0, keepalive_requests=1_000_000):
            lengths = _response_lengths()
            for r in range(rounds):
                for name in configs:
                    with _target(name, workdir, lengths) as (port, pid):
                        _wrk(port, 1)  # warm-up: connections, caches
                        cpu0 = _cpu(pid)
                        with _profiled(name, pid, seconds, profile if r == 0 else None):
                            res = _wrk(port, seconds)
                        res["cpu_us_per_req"] = (_cpu(pid) - cpu0) * 1e6 / max(1, res["requests"])
                    results[name].append(res)
                    print(f"  round {r + 1} {name:19} {res['rps']:9.0f} req/s  p50 "
                          f"{res['p50_us']:7.0f} us  p99 {res['p99_us']:7.0f} us  proxy CPU "
                          f"{res['cpu_us_per_req']:5.1f} us/req", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def summarize(results: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    med = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
           for name, runs in results.items() if runs}
    for stats in med.values():
        for ref in ("direct", "haproxy"):
            if ref in med:
                stats[f"rps_vs_{ref}"] = stats["rps"] / med[ref]["rps"]
    return med


def print_table(med: dict[str, dict[str, float]]) -> None:
    print(f"\n{'config':20}{'req/s':>9}{'vs direct':>11}{'vs haproxy':>12}{'p50 us':>9}"
          f"{'p99 us':>9}{'CPU us/req':>12}")
    for name, s in med.items():
        cpu = f"{s['cpu_us_per_req']:.1f}" if name != "direct" else "-"
        print(f"{name:20}{s['rps']:9.0f}{s.get('rps_vs_direct', 1):11.2f}"
              f"{s.get('rps_vs_haproxy', float('nan')):12.2f}{s['p50_us']:9.0f}"
              f"{s['p99_us']:9.0f}{cpu:>12}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--profile", action="store_true",
                        help="sample each gateway with py-spy during its first round and print "
                             "its hottest lines (raw samples: OUT/proxy-profile-*.txt)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="results directory (default bench/results): proxy.json goes there")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated subset of {', '.join(CONFIGS)}")
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(sorted(unknown))}")
    for tool in ("wrk", "haproxy", "ss"):
        if shutil.which(tool) is None:
            print(f"not available: {tool} is not installed", file=sys.stderr)
            return 1
    print(f"wrk -t1 -c8 keep-alive GET {PATH}, {args.rounds} rounds x {args.seconds} s, "
          f"alternating {', '.join(configs)}")
    med: dict[str, Any] = summarize(run(args.rounds, args.seconds, configs,
                                        args.out if args.profile else None))
    print_table(med)
    latency = event_latency()
    print(f"\nevent to release (COMMIT written -> client has the bytes): p50 "
          f"{latency['p50_us']:.0f} us, p99 {latency['p99_us']:.0f} us (target: well under 100 us)")
    med["event_to_release"] = latency
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "proxy.json").write_text(json.dumps(med, indent=2) + "\n")
    print(f"wrote {args.out / 'proxy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

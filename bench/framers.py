"""Framer throughput: which HTTP engine serves the gateway better, and what the others cost.

Engines measured side by side in one run, alternating (A B C A B C ...) so drift on the shared
machine hits all alike; the median of the rounds is reported:

- ``llhttp``: protocols.http.RequestFramer/ResponseFramer (llhttp through ctypes, exact offsets);
- ``h11``: protocols.http.H11RequestFramer/H11ResponseFramer (pure Python, exact offsets);
- ``httptools``: httptools' own parser with empty callbacks: the parse alone, with no offsets and
  no HEAD support, as a floor for what any llhttp-based framer can cost.

Workloads are what the gateway feeds a framer: wget-style keep-alive GETs and Apache-style 1 KiB
responses one message per receive, a pipelined burst, and large bodies (Content-Length, chunked)
in 64 KiB receives. Line and length-prefixed framers are measured on small messages too.

Prints messages/s, MB/s and each engine's time relative to llhttp; writes
``bench/results/framers.json``.

    python -m bench framers
    python -m bench.framers --rounds 7
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httptools

from protocols import http, lenpfx, line
from protocols._framing import NEED_DATA

RESULTS = Path(__file__).resolve().parent / "results"

REQUEST = (b"GET /manual/en/mod/core.html HTTP/1.1\r\nUser-Agent: Wget/1.21.3\r\nAccept: */*\r\n"
           b"Accept-Encoding: identity\r\nHost: 10.0.0.2:8080\r\nConnection: Keep-Alive\r\n\r\n")
RESPONSE_HEAD = (b"HTTP/1.1 200 OK\r\nDate: Sun, 22 Nov 2026 16:00:00 GMT\r\n"
                 b"Server: Apache/2.4.62 (Debian)\r\n"
                 b"Last-Modified: Tue, 01 Jan 2026 00:00:00 GMT\r\n"
                 b"ETag: \"2a3b-5f0c\"\r\nAccept-Ranges: bytes\r\nContent-Length: %d\r\n"
                 b"Keep-Alive: timeout=5, max=100\r\nConnection: Keep-Alive\r\n"
                 b"Content-Type: text/html\r\n\r\n")
RECV = 65536


@dataclass
class Workload:
    name: str
    direction: str  # "request" or "response"
    chunks: list[bytes]
    messages: int

    @property
    def size(self) -> int:
        return sum(map(len, self.chunks))


def _in_receives(stream: bytes) -> list[bytes]:
    return [stream[i:i + RECV] for i in range(0, len(stream), RECV)]


def _chunked(body: bytes, piece: int) -> bytes:
    parts = [body[i:i + piece] for i in range(0, len(body), piece)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def workloads(scale: int) -> list[Workload]:
    small = 1000 * scale
    body = b"x" * 1024
    response = RESPONSE_HEAD % len(body) + body
    big = b"y" * (8 << 20) * scale
    chunked_head = RESPONSE_HEAD.replace(b"Content-Length: %d", b"Transfer-Encoding: chunked")
    return [
        Workload("keep-alive GETs, one per receive", "request", [REQUEST] * small, small),
        Workload("1 KiB responses, one per receive", "response", [response] * small, small),
        Workload("pipelined GETs, 64 KiB receives", "request", _in_receives(REQUEST * small),
                 small),
        Workload(f"{8 * scale} MiB Content-Length body", "response",
                 _in_receives(RESPONSE_HEAD % len(big) + big), 1),
        Workload(f"{8 * scale} MiB chunked body (16 KiB chunks)", "response",
                 _in_receives(chunked_head + _chunked(big, 16384)), 1),
    ]


def _drive(framer: Any, chunks: list[bytes], expect: int) -> int:
    for _ in range(expect):
        framer.expect("GET")
    ends = 0
    for chunk in chunks:
        framer.receive_data(chunk)
        while (event := framer.next_event()) is not NEED_DATA:
            ends += type(event).__name__ == "MessageEnd"
    return ends


def _framer_run(request_cls: type, response_cls: type) -> Callable[[Workload], int]:
    def run(w: Workload) -> int:
        if w.direction == "request":
            return _drive(request_cls(), w.chunks, 0)
        return _drive(response_cls(max_buffer=RECV * 2), w.chunks, w.messages)
    return run


class _Count:
    def __init__(self) -> None:
        self.ends = 0

    def on_message_complete(self) -> None:
        self.ends += 1


def _httptools_run(w: Workload) -> int:
    counter = _Count()
    parser_cls = httptools.HttpRequestParser if w.direction == "request" else \
        httptools.HttpResponseParser
    parser = parser_cls(counter)
    for chunk in w.chunks:
        parser.feed_data(chunk)
    return counter.ends


ENGINES: dict[str, Callable[[Workload], int]] = {
    "llhttp": _framer_run(http.RequestFramer, http.ResponseFramer),
    "h11": _framer_run(http.H11RequestFramer, http.H11ResponseFramer),
    "httptools": _httptools_run,
}


def _time(fn: Callable[[], int], expected: int) -> float:
    start = time.perf_counter()
    got = fn()
    elapsed = time.perf_counter() - start
    if got != expected:
        raise RuntimeError(f"framed {got} messages, expected {expected}")
    return elapsed


def _other_framers(scale: int) -> list[tuple[str, Callable[[], int], int, int]]:
    lines = [b"GET key:%06d\r\n" % i for i in range(1000 * scale)]
    frames = [lenpfx.error_frame(b"z" * 1024)] * (1000 * scale)
    return [
        ("line: 16-byte lines, one per receive",
         lambda: _drive(line.LineFramer(), lines, 0), len(lines), sum(map(len, lines))),
        ("lenpfx: 1 KiB frames, one per receive",
         lambda: _drive(lenpfx.LengthPrefixFramer(), frames, 0), len(frames),
         sum(map(len, frames))),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.framers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--scale", type=int, default=2, help="workload size multiplier")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"rounds": args.rounds, "workloads": {}}
    print(f"{'workload':44} {'engine':10} {'msg/s':>10} {'MB/s':>8} {'us/msg':>8} {'vs llhttp':>9}")
    for w in workloads(args.scale):
        times: dict[str, list[float]] = {name: [] for name in ENGINES}
        for _ in range(args.rounds):
            for name, run in ENGINES.items():
                times[name].append(_time(functools.partial(run, w), w.messages))
        medians = {name: statistics.median(t) for name, t in times.items()}
        row: dict[str, Any] = {}
        for name, seconds in medians.items():
            ratio = seconds / medians["llhttp"]
            row[name] = {"seconds": seconds, "messages_per_s": w.messages / seconds,
                         "mb_per_s": w.size / seconds / 1e6, "time_vs_llhttp": ratio}
            print(f"{w.name:44} {name:10} {w.messages / seconds:10.0f} "
                  f"{w.size / seconds / 1e6:8.1f} {seconds / w.messages * 1e6:8.2f} {ratio:8.2f}x")
        results["workloads"][w.name] = row
    for name, fn, count, size in _other_framers(args.scale):
        seconds = statistics.median(_time(fn, count) for _ in range(args.rounds))
        results["workloads"][name] = {"seconds": seconds, "messages_per_s": count / seconds,
                                      "mb_per_s": size / seconds / 1e6}
        print(f"{name:44} {'':10} {count / seconds:10.0f} {size / seconds / 1e6:8.1f} "
              f"{seconds / count * 1e6:8.2f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "framers.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {RESULTS / 'framers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

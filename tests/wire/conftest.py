"""Fixtures for the commit protocol written from inside the target: partial_reply_server with the
agent's wire module in it, talking to a plain Unix listener (parsed with ControlReader) or to the
real gateway.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import frida
import pytest

from healer._agent_source import agent_source
from protocols import control as c
from targets import build

HERE = Path(__file__).resolve().parent
AGENT = HERE.parent.parent / "healer" / "agent"
HARNESS = HERE.parent / "memlog"
WAIT = 10.0


def harness_source() -> str:
    """tests/memlog's stand-in core around the real 10_wire.js and 20_memlog.js."""
    csource = {f.name: f.read_text() for f in sorted(AGENT.glob("*.c"))}
    return (f"const CSOURCE = {json.dumps(csource)};\n" + (HARNESS / "harness.js").read_text()
            + (AGENT / "10_wire.js").read_text() + (AGENT / "20_memlog.js").read_text()
            + (HARNESS / "harness_main.js").read_text())


class Listener:
    """A Unix stream listener standing in for the gateway's control socket: answers HELLO with OK
    and records every message (one reader thread; ``messages`` is a queue)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.sock.settimeout(WAIT)
        self.messages: queue.Queue[c.Message | c.Malformed] = queue.Queue()
        self.chunks = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
                threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        reader = c.ControlReader()
        with contextlib.suppress(OSError):
            while data := conn.recv(65536):
                self.chunks += 1
                reader.receive_data(data)
                while (ev := reader.next_event()) is not c.NEED_DATA:
                    if isinstance(ev, c.Hello):
                        conn.sendall(b"OK paired\n")
                    self.messages.put(ev)  # type: ignore[arg-type]

    def until(self, predicate, limit: int = 500) -> list:
        """Messages up to and including the first one matching ``predicate``."""
        got = []
        for _ in range(limit):
            msg = self.messages.get(timeout=WAIT)
            got.append(msg)
            if predicate(msg):
                return got
        raise AssertionError(f"no matching message in {got}")

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.sock.close()


class Server:
    """A target (partial_reply_server unless named) on a free port, with the stand-in core + wire
    + memlog (``instrument``) or the real agent (``instrument_agent``) attached."""

    def __init__(self, opt: str = "-O2", target: str = "partial_reply_server") -> None:
        self.proc = subprocess.Popen([str(build(target, opt=opt)), "0"],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        # "listening PORT" (partial_reply_server) or "READY PORT" (login_server)
        self.port = int(self.proc.stdout.readline().split()[1])
        self.session = frida.attach(self.proc.pid)
        self.events: list[dict] = []
        self.script: frida.Script | None = None

    def _on_message(self, message: Any, _data: bytes | None) -> None:
        self.events.append(message.get("payload", message))

    def instrument(self, config: dict, functions=("handle_request", "handle_exchange"),
                   abort: str = "negative") -> None:
        self.script = self.session.create_script(harness_source())
        self.script.on("message", self._on_message)
        self.script.load()
        self.script.exports_sync.init(config, list(functions), abort)

    def instrument_agent(self, config: dict) -> None:
        """The real agent (healer/agent, every module) instead of the stand-in core."""
        self.script = self.session.create_script(agent_source())
        self.script.on("message", self._on_message)
        self.script.load()
        self.script.exports_sync.init(config)

    def status(self) -> dict:
        assert self.script is not None
        return self.script.exports_sync.status()

    def inject(self, spec: dict) -> None:
        """The real agent's fault injection (``{function, always}``: fails at the epilogue)."""
        assert self.script is not None
        self.script.exports_sync.inject(spec)

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
        return s

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(frida.InvalidOperationError):
            self.session.detach()
        self.proc.wait(timeout=10)


def read_line(sock: socket.socket) -> bytes:
    """One line from the client socket (bounded by the socket's timeout)."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        buf += chunk
    return buf


@pytest.fixture
def listener(tmp_path) -> Iterator[Listener]:
    lst = Listener(tmp_path / "control.sock")
    yield lst
    lst.close()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()

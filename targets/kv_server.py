"""Running targets/kv_server.c and talking to it: for profile tests, the SEV benchmark and demos.

``KvServer.start()`` compiles and starts the server on an ephemeral loopback port; ``exchange``
sends request lines and returns the reply lines. ``training_requests`` makes a mix of normal and
malformed requests (the "failure dynamics" SEV learns from); ``EVAL_REQUESTS`` is a fixed sequence,
different from any training run, used to check heals against the uninjected replies.
"""

from __future__ import annotations

import random
import socket
import subprocess
from collections.abc import Callable, Sequence

from targets import build

FUNCTIONS = ("handle_line", "parse_command", "count_tokens", "key_valid", "value_len", "find_slot",
             "alloc_slot", "store_value", "remove_slot", "count_used", "send_reply")
"""The server's exported functions (hook, profile, inject)."""

EVAL_REQUESTS = (
    "RESET", "SET alpha 1", "SET beta two", "GET alpha", "GET gamma", "SET bad-key 3",
    "GET beta", "SET delta", "DEL alpha", "GET alpha", "SET gamma 33", "FETCH gamma", "COUNT",
    "SET epsilon " + "x" * 40, "GET gamma", "DEL nothere", "SET beta 2", "GET beta", "GET",
    "DEL beta", "COUNT", "GET x/y", "SET zeta 6", "GET zeta",
)


def training_requests(n: int, seed: int) -> list[str]:
    """``n`` requests (after a RESET): about two thirds normal, one third malformed."""
    rnd = random.Random(seed)
    keys = [f"k{i}" for i in range(24)]  # more than the 16 slots: the table fills up sometimes
    out = ["RESET"]
    for _ in range(n):
        r = rnd.random()
        key = rnd.choice(keys)
        if r < 0.25:
            out.append(f"SET {key} {rnd.randrange(10 ** rnd.randrange(1, 8))}")
        elif r < 0.45:
            out.append(f"GET {key}")
        elif r < 0.55:
            out.append(f"DEL {key}")
        elif r < 0.62:
            out.append("COUNT")
        elif r < 0.70:
            out.append(rnd.choice([f"GET {key}!", f"SET {key}-x 1", f"DEL {'k' * 20}"]))
        elif r < 0.78:
            out.append(f"SET {key} {'y' * rnd.randrange(32, 50)}")
        elif r < 0.86:
            out.append(rnd.choice(["GET", f"SET {key}", f"DEL {key} extra", "SET a b c"]))
        elif r < 0.93:
            out.append(rnd.choice(["FETCH x", "PUT a 1", "get k1", "HELLO"]))
        else:
            out.append("RESET")
    return out


class KvServer:
    """A started kv_server process; ``stop()`` kills it (also safe after it died). A subclass
    with another ``NAME`` runs another line-protocol target the same way (targets/maild.py)."""

    NAME = "kv_server"

    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port

    @classmethod
    def start(cls, opt: str = "-O2") -> KvServer:
        """Build (cached) and start the target on an ephemeral loopback port."""
        exe = build(cls.NAME, opt=opt)
        proc = subprocess.Popen([str(exe), "0"], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            port = int(line.split()[1])
        except (ValueError, IndexError):
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{cls.NAME} did not start (printed {line!r})") from None
        return cls(proc, port)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exchange(self, requests: Sequence[str], timeout: float = 3.0,
                 pause: tuple[int, Callable[[], None]] | None = None) -> list[str] | None:
        """Send every request on one connection, then read all replies until the server closes.

        Args:
            pause: ``(k, fn)``: send the first ``k`` requests, wait for their ``k`` replies (one a
                request), call ``fn()`` (e.g. arm a fault injection for request ``k``), then send
                the rest.

        Returns None when the connection fails or the server does not answer or close it within
        ``timeout`` (it died or hangs).
        """
        lines = [r + "\n" for r in requests]
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as c:
                data = b""
                if pause is not None:
                    k, fn = pause
                    c.sendall("".join(lines[:k]).encode())
                    while data.count(b"\n") < k:
                        chunk = c.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    fn()
                    lines = lines[k:]
                c.sendall("".join(lines).encode())
                c.shutdown(socket.SHUT_WR)
                while chunk := c.recv(65536):
                    data += chunk
        except OSError:
            return None
        return data.decode(errors="replace").splitlines()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

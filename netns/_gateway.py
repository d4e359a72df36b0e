"""vproxy inside a layout's gateway namespace, started as its own command (``vproxy serve``).

netns never imports the gateway: it runs the documented command line inside ``<name>-gw`` and
waits until it accepts connections, so tests, the demo and the benchmarks start it the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from netns._enter import argv_in, wait_listening
from netns._errors import NetnsError
from netns._topology import Topology


@dataclass
class Gateway:
    """A running ``vproxy serve``: its process, where it listens and its control socket."""

    proc: subprocess.Popen[Any]
    listen: tuple[str, int]
    control: Path | None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT (trio's clean shutdown), then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


def vproxy_argv(listen: str, upstream: str, *, control: Path | None = None,
                extra: Sequence[str] = ()) -> list[str]:
    """The ``vproxy serve`` command line for one front route (plus ``extra`` flags)."""
    argv = [sys.executable, "-m", "vproxy", "serve", "--listen", listen, "--upstream", upstream]
    if control is not None:
        argv += ["--control", str(control)]
    return [*argv, *extra]


def start_gateway(topo: Topology, *, listen: tuple[str, int], upstream: tuple[str, int],
                  control: Path | None = None, extra: Sequence[str] = (),
                  log: IO[Any] | int | None = None, timeout: float = 15.0) -> Gateway:
    """Run ``vproxy serve`` in the gateway namespace of ``topo`` and wait until it accepts.

    Args:
        listen: where clients connect (normally ``(topo.gw_client_addr, port)``).
        upstream: the protected server (normally ``(topo.server_addr, port)``).
        control: the control socket path (a healer pairs through it), or None.
        extra: more ``vproxy serve`` flags (hold bounds, ``--route`` for a back path, ...).
        log: where vproxy's stderr (its JSON log lines) goes; stdout goes to the same place.

    Error handling:
        NetnsError if vproxy exits early or does not listen within ``timeout``; it is stopped.
    """
    argv = vproxy_argv(f"{listen[0]}:{listen[1]}", f"{upstream[0]}:{upstream[1]}",
                       control=control, extra=extra)
    proc = subprocess.Popen(argv_in(topo.gw_ns, argv), stdout=log, stderr=log,
                            start_new_session=True, cwd=Path(__file__).resolve().parents[1])
    gw = Gateway(proc, listen, control)
    try:
        wait_listening(topo.client_ns, *listen, timeout=timeout, proc=proc)
        if control is not None:
            _wait_for_path(control, proc, timeout)
    except NetnsError as exc:
        gw.stop()
        raise NetnsError(f"vproxy did not start ({' '.join(argv[1:])}): {exc}") from None
    return gw


def _wait_for_path(path: Path, proc: subprocess.Popen[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise NetnsError(f"control socket {path} did not appear")
        time.sleep(0.02)


@contextlib.contextmanager
def gateway(topo: Topology, **kwargs: Any) -> Iterator[Gateway]:
    """``start_gateway(topo, **kwargs)`` for the with-block; stopped afterwards, also on failure."""
    gw = start_gateway(topo, **kwargs)
    try:
        yield gw
    finally:
        gw.stop()

"""The full healer agent in one process, driven synchronously (SEV evaluation, bench/sev.py).

The evaluation must measure the heal an operator gets: ``rpc.exports.inject({function})`` of the
real agent (healer/agent/50_txn.js), where the failed call runs as a supervised transaction, its
memory writes are rolled back by the memory log and its return value is chosen like any repair
(profile plugin, or its ``fixed`` setting for vanilla error virtualization). ``healer inject`` ends
in the same RPC; this class calls it directly because a trial loop needs no supervisor process.

Frida's errors are translated here, where they enter, into ``SessionError``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any

import frida

from healer._agent_source import agent_source
from healer.config import Options, build_config
from healer.profile._session import SessionError
from healer.session import UNLOAD_WAIT


class AgentSession:
    """The agent attached to ``pid``: the named functions supervised, memory log on.

    Args:
        pid: the target process.
        functions: coverage LIST (each call of them is a transaction; the profile windows are
            built over the ones the profile knows).
        profile: ``agent_tables(...)`` (``config.profile``), optionally with ``fixed``.

    Error handling:
        No such process, attach refused or the agent refusing the config raise SessionError.
    """

    def __init__(self, pid: int, functions: Sequence[str], profile: dict[str, Any]) -> None:
        self.pid = pid
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.detached = threading.Event()
        self._lock = threading.Lock()
        config = build_config(Options(coverage="none"), None)
        config["coverage"] = {"mode": "list", "functions": list(functions)}
        config["profile"] = profile
        try:
            self._session = frida.get_local_device().attach(pid)
        except frida.ProcessNotFoundError:
            raise SessionError(f"no process with pid {pid}; check it with 'ps -p {pid}'") from None
        except (frida.PermissionDeniedError, frida.TransportError,
                frida.InvalidOperationError) as exc:
            raise SessionError(f"cannot attach to pid {pid}: {exc}") from None
        self._session.on("detached", lambda *_: self.detached.set())
        try:
            self._script = self._session.create_script(agent_source(), name="sead")
            self._script.on("message", self._on_message)
            self._script.load()
            self.info: dict[str, Any] = self._rpc("init", config)
        except BaseException:
            self.close()
            raise

    def inject(self, function: str) -> None:
        """Fail the next call of ``function`` (``healer inject PID --function F``)."""
        self._rpc("inject", {"function": function})

    def set_profile(self, profile: dict[str, Any]) -> None:
        """Swap ``config.profile`` (``rpc.exports.reload``): another strategy or fixed value."""
        self._rpc("reload", {"profile": profile})

    def status(self) -> dict[str, Any]:
        """The agent's status; a round trip, so every event sent before it has arrived."""
        result: dict[str, Any] = self._rpc("status")
        return result

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("type") == kind]

    def close(self) -> None:
        """Unhook and detach; the target keeps running.

        As ``healer detach``: the agent unhooks itself first; Frida frees it only once no thread
        is inside a hooked call (a thread the memory log still follows may hold it until its next
        request), so the detach is waited for at most UNLOAD_WAIT seconds, in a daemon thread.
        """
        if self.detached.is_set():
            return
        with contextlib.suppress(SessionError):
            self._rpc("prepare_detach")

        def detach() -> None:
            with contextlib.suppress(frida.InvalidOperationError, frida.TransportError):
                self._session.detach()

        worker = threading.Thread(target=detach, name="sead-detach", daemon=True)
        worker.start()
        worker.join(UNLOAD_WAIT)

    def _rpc(self, name: str, *args: Any) -> Any:
        if self.detached.is_set():
            raise SessionError(f"process {self.pid} is gone (exited or crashed)")
        try:
            return getattr(self._script.exports_sync, name)(*args)
        except frida.core.RPCException as exc:
            raise SessionError(f"the agent refused {name}: {str(exc).splitlines()[0]}") from None
        except (frida.InvalidOperationError, frida.TransportError) as exc:
            raise SessionError(f"process {self.pid} is gone ({exc})") from None

    def _on_message(self, message: Any, _data: Any) -> None:
        if message.get("type") == "error":
            with self._lock:
                self.errors.append(str(message.get("stack") or message.get("description")))
            return
        payload = message.get("payload") or {}
        if payload.get("type") == "sead:events":
            with self._lock:
                self.events.extend(payload.get("events", []))

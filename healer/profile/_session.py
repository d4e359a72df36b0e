"""Running the profile plugin in a target process with Frida (profile mode, anomaly detection).

Frida's errors are translated here, where they enter, into ``SessionError`` with a message for the
operator. Messages from the target arrive on Frida's thread; a lock guards what they update.
"""

from __future__ import annotations

import contextlib
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any

import frida
import structlog

from healer.profile._context import ProfileBuilder
from healer.profile._model import Profile
from healer.profile._standalone import script_source
from healer.profile._trace import call_line, return_line
from healer.session import release_injector

log = structlog.get_logger("healer.profile")


class SessionError(Exception):
    """The target cannot be profiled; the message names the cause and the fix."""


class ProfileSession:
    """The profile plugin loaded into one process.

    Args:
        window: context width recorded (``--window``).
        functions: names (or ``0x`` addresses) to hook; None hooks every exported function of the
            main executable whose name does not start with ``_``.
        record: record calls into ``self.builder`` (profile mode).
        args: argument registers kept per call.
        ret_bits: 32 sign-extends return values (C ``int`` functions), 64 keeps them whole.
        tables: ``agent_tables(...)`` of a trained profile (anomaly detection).
        on_trace: called with each trace line (``.> f(...)``) when given.
    """

    def __init__(self, *, window: int = 15, functions: Sequence[str] | None = None,
                 record: bool = True, args: int = 3, ret_bits: int = 64,
                 tables: dict[str, Any] | None = None,
                 on_trace: Callable[[str], None] | None = None) -> None:
        self.builder = ProfileBuilder(window, ret_bits)
        self.anomalies: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.skipped: list[str] = []
        self.functions: list[str] = []
        self.detached = threading.Event()
        self._lock = threading.Lock()
        self._functions = list(functions) if functions is not None else None
        self._on_trace = on_trace
        self._ret_bits = ret_bits
        self._args = args
        self.lost = 0
        self._config: dict[str, Any] = {
            "profile": {"record": record, "window": window, "args": args, "retBits": ret_bits,
                        **(tables or {})},
        }
        # A device manager of its own, released at close() (healer.session.release_injector): a
        # process that exits right after a detach can otherwise kill the target.
        self._manager = frida.core.DeviceManager()
        self._device = self._manager.get_device_by_type("local", 0)
        self._session: Any = None
        self._script: Any = None
        self.pid = 0

    # ---- starting ----

    def attach(self, pid: int) -> None:
        """Attach to a running process and start the plugin."""
        try:
            self._session = self._device.attach(pid)
        except frida.ProcessNotFoundError:
            raise SessionError(f"no process with pid {pid}; check it with 'ps -p {pid}'") from None
        except frida.PermissionDeniedError as exc:
            raise SessionError(f"not allowed to attach to pid {pid} ({exc}); run as root or "
                               "allow ptrace (kernel.yama.ptrace_scope=0)") from None
        except (frida.TransportError, frida.InvalidOperationError) as exc:
            raise SessionError(f"cannot attach to pid {pid}: {exc}") from None
        self.pid = pid
        self._start()

    def spawn(self, argv: Sequence[str]) -> int:
        """Start ``argv`` suspended, load the plugin, resume it; returns the pid."""
        try:
            pid = self._device.spawn(list(argv))
        except (frida.ExecutableNotFoundError, frida.NotSupportedError) as exc:
            raise SessionError(f"cannot start {argv[0]!r}: {exc}; give a path to an executable "
                               "after '--'") from None
        self.pid = pid
        try:
            self._session = self._device.attach(pid)
            self._start()
        except BaseException:
            self.kill()
            raise
        self._device.resume(pid)
        return pid

    def _start(self) -> None:
        self._session.on("detached", lambda *_: self.detached.set())
        self._script = self._session.create_script(script_source())
        self._script.on("message", self._on_message)
        self._script.load()
        api = self._script.exports_sync
        functions = self._functions
        if functions is None:
            functions = [n for n in api.exports() if not n.startswith("_")]
        self._config["functions"] = functions
        self.functions = list(functions)
        try:
            info = api.init(self._config)
        except frida.core.RPCException as exc:
            raise SessionError(f"the profile plugin failed to start: {exc}") from None
        self.skipped = list(info["skipped"])
        if self.skipped and len(self.skipped) == len(functions):
            why = "; ".join(self.skipped)
            raise SessionError(f"none of the functions could be hooked ({why}); "
                               "name functions the executable exports (built with -rdynamic) or "
                               "give 0x addresses")
        for s in self.skipped:
            log.warning("function not hooked", detail=s)

    # ---- running ----

    def status(self) -> dict[str, Any]:
        """The plugin's counters; also flushes the recorded calls to the host."""
        result: dict[str, Any] = self._rpc("status")
        return result

    def profile(self) -> Profile:
        """The profile recorded so far."""
        if not self.detached.is_set():
            with contextlib.suppress(SessionError):
                self.status()
        with self._lock:
            return Profile.from_json(self.builder.profile.to_json())

    def wait_detached(self, timeout: float | None) -> bool:
        return self.detached.wait(timeout)

    def close(self) -> None:
        """Detach (the target keeps running), then wait for Frida's injector to clean up."""
        if self._session is not None and not self.detached.is_set():
            with contextlib.suppress(frida.InvalidOperationError):
                self._session.detach()
        release_injector(self._manager)

    def _rpc(self, name: str, *args: Any) -> Any:
        if self.detached.is_set():
            raise SessionError(f"process {self.pid} is gone (exited or crashed)")
        try:
            return getattr(self._script.exports_sync, name)(*args)
        except (frida.InvalidOperationError, frida.TransportError) as exc:
            raise SessionError(f"process {self.pid} is gone ({exc})") from None

    def _on_message(self, message: dict[str, Any], data: Any) -> None:
        if message.get("type") == "error":
            self.errors.append(str(message.get("description")))
            log.error("agent error", detail=message.get("stack") or message.get("description"))
            return
        payload = message.get("payload") or {}
        kind = payload.get("type")
        with self._lock:
            if kind == "profile:calls":
                self._record(payload["events"])
            elif kind == "profile:raw":
                self._record_raw(payload["names"], data)
                if payload["lost"] > self.lost:
                    log.warning("recording ring overran: calls lost", lost=payload["lost"])
                    self.lost = payload["lost"]
            elif kind == "anomaly":
                self.anomalies.append(payload)
                log.warning("profile anomaly", function=payload["function"],
                            window=payload["window"], reason=payload["reason"],
                            action=payload["action"])

    def _record_raw(self, names: list[str], data: bytes) -> None:
        events: list[list[Any]] = []
        for _seq, fn, tid, a0, a1, a2 in struct.iter_unpack("<6Q", data):
            name = names[fn >> 1]
            if fn & 1:
                events.append(["r", tid, name, str(a0)])
            else:
                events.append(["c", tid, name, [str(a0), str(a1), str(a2)][: self._args]])
        self._record(events)

    def _record(self, events: list[list[Any]]) -> None:
        # the agent sends raw register values (hex or decimal): sign-extend them here, off the
        # target's hot path
        for ev in events:
            tid, name = int(ev[1]), str(ev[2])
            if ev[0] == "c":
                args = tuple(_signed(int(a, 0), 64) for a in ev[3])
                self.builder.call(tid, name, args)
                if self._on_trace:
                    self._on_trace(call_line(name, args))
            else:
                value = _signed(int(ev[3], 0), self._ret_bits)
                self.builder.ret(tid, name, value)
                if self._on_trace:
                    self._on_trace(return_line(name, value))

    def kill(self) -> None:
        """Kill the target (for a process this session started)."""
        if self.pid:
            with contextlib.suppress(frida.ProcessNotFoundError, frida.InvalidOperationError):
                frida.kill(self.pid)


def _signed(x: int, bits: int) -> int:
    x &= (1 << bits) - 1
    return x - (1 << bits) if x >> (bits - 1) else x

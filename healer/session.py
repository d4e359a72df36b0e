"""The healer agent loaded into a process (and its children) with Frida, driven from trio.

Frida calls us back on its own threads (script messages, detach, child-added). Each callback goes
through one bridge, ``TrioToken.run_sync_soon``, into an unbounded memory channel that the
supervisor reads: no Frida thread ever touches trio state. Frida's blocking calls (attach, load,
RPC) run in worker threads. Frida's exceptions are translated here, where they enter, into
``HealerError``/``TargetExited`` with a message for the operator.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import frida
import structlog
import trio

from healer._agent_source import agent_source
from healer.errors import HealerError, TargetExited

log = structlog.get_logger("healer")
T = TypeVar("T")
UNLOAD_WAIT = 2.0  # seconds; see Healer.detach and open_healer


@dataclass(frozen=True, slots=True)
class AgentEvents:
    """A batch of agent events (``Sead.emit``) from one process."""

    pid: int
    events: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class ProcessGone:
    """Frida lost a process: it exited, crashed, or was detached."""

    pid: int
    reason: str


@dataclass(frozen=True, slots=True)
class ChildAdded:
    """A supervised process forked; the child is paused until it is instrumented."""

    pid: int
    parent: int


@dataclass(frozen=True, slots=True)
class ScriptError:
    """An uncaught error inside the agent."""

    pid: int
    description: str


Event = AgentEvents | ProcessGone | ChildAdded | ScriptError


@dataclass(slots=True)
class _Process:
    pid: int
    session: Any
    script: Any
    info: dict[str, Any] = field(default_factory=dict)


def _translate(pid: int, exc: BaseException) -> HealerError:
    if isinstance(exc, frida.ProcessNotFoundError):
        return HealerError(f"no process with pid {pid}; check it with 'ps -p {pid}'")
    if isinstance(exc, frida.PermissionDeniedError):
        return HealerError(f"not permitted to attach to pid {pid} ({exc}); run as root or as the "
                           "process owner, and check /proc/sys/kernel/yama/ptrace_scope")
    if isinstance(exc, frida.core.RPCException):
        return HealerError(f"the agent in pid {pid} refused: {str(exc).splitlines()[0]}")
    if isinstance(exc, (frida.InvalidOperationError, frida.TransportError,
                        frida.ProcessNotRespondingError)):
        return TargetExited(f"process {pid} is gone or not responding ({exc})")
    if isinstance(exc, (frida.ExecutableNotFoundError, frida.NotSupportedError)):
        return HealerError(f"cannot start the command: {exc}; give the path of an executable")
    return HealerError(f"frida failed on pid {pid}: {exc}")


async def _frida(pid: int, fn: Callable[[], T]) -> T:
    """Run a blocking Frida call in a worker thread, translating its errors."""
    try:
        return await trio.to_thread.run_sync(fn)
    except frida.core.RPCException as exc:
        raise _translate(pid, exc) from None
    except (frida.InvalidOperationError, frida.TransportError, frida.ProcessNotFoundError,
            frida.PermissionDeniedError, frida.ProcessNotRespondingError,
            frida.ExecutableNotFoundError, frida.NotSupportedError) as exc:
        raise _translate(pid, exc) from None


def children_of(pid: int) -> list[int]:
    """Every descendant of ``pid`` that exists now (prefork workers at attach time)."""
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 4096:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                kids = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for k in map(int, kids):
                if k not in out:
                    out.append(k)
                    todo.append(k)
    return out


def executable_of(pid: int) -> Path | None:
    """The target's executable (to check policy names against its symbols), if readable."""
    try:
        return Path(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return None


class Healer:
    """The agent in one process tree. Create with ``open_healer``.

    ``events`` yields ``Event`` objects; ``call`` runs an ``rpc.exports`` method in every
    instrumented process (or one); ``add_child`` instruments a forked child.
    """

    def __init__(self, device: Any, root_pid: int, config: dict[str, Any], follow_children: bool,
                 send: trio.MemorySendChannel[Event], receive: trio.MemoryReceiveChannel[Event]):
        self.device = device
        self.root_pid = root_pid
        self.config = config
        self.follow_children = follow_children
        self.processes: dict[int, _Process] = {}
        self.unload_pending = False  # set by detach: an agent was still loaded when it gave up
        self.events = receive
        self._send = send
        self._token = trio.lowlevel.current_trio_token()

    # The one bridge from Frida's threads into trio.
    def _post(self, event: Event) -> None:
        with suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._send.send_nowait, event)

    def _on_message(self, pid: int, message: dict[str, Any], _data: Any) -> None:
        if message.get("type") == "send":
            payload = message.get("payload") or {}
            if payload.get("type") == "sead:events":
                self._post(AgentEvents(pid, payload.get("events", [])))
        elif message.get("type") == "error":
            text = f"{message.get('description')}\n{message.get('stack', '')}"
            self._post(ScriptError(pid, text))

    async def instrument(self, pid: int) -> dict[str, Any]:
        """Attach to ``pid``, load the agent and run ``init(config)``; returns its summary."""
        session = await _frida(pid, lambda: self.device.attach(pid))
        session.on("detached", lambda reason, crash: self._post(ProcessGone(pid, str(reason))))
        try:
            if self.follow_children:
                await _frida(pid, session.enable_child_gating)
            script = await _frida(pid, lambda: session.create_script(agent_source(), name="sead"))
            script.on("message", lambda m, d: self._on_message(pid, m, d))
            await _frida(pid, script.load)
            # Forked children inherit the parent's hooks: "hooks" in healer/agent/70_coverage.js.
            config = dict(self.config, hooks="interceptor" if self.follow_children else "stubs")
            info = await _frida(pid, lambda: script.exports_sync.init(config))
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_quiet(session.detach))
            raise
        self.processes[pid] = _Process(pid, session, script, info)
        log.info("agent loaded", pid=pid, hooked=info.get("hooked"),
                 discovered=info.get("discovered"), plugins=info.get("plugins"),
                 unhookable=len(info.get("unhookable", [])))
        return info

    async def add_child(self, pid: int) -> None:
        """Instrument a child that child gating paused, then let it run (even if that failed)."""
        try:
            await self.instrument(pid)
        except HealerError as exc:
            log.error("child not instrumented", pid=pid, error=str(exc))
        finally:
            await trio.to_thread.run_sync(_quiet(lambda: self.device.resume(pid)))

    def forget(self, pid: int) -> None:
        self.processes.pop(pid, None)

    async def call(self, method: str, *args: Any, pid: int | None = None) -> dict[int, Any]:
        """``rpc.exports.<method>(*args)`` in one process or all; {pid: result}."""
        targets = [self.processes[pid]] if pid is not None and pid in self.processes else list(
            self.processes.values())
        if not targets:
            raise TargetExited(f"process {self.root_pid} is gone: no instrumented process left")
        out: dict[int, Any] = {}
        for p in targets:
            fn = getattr(p.script.exports_sync, method)
            out[p.pid] = await _frida(p.pid, functools.partial(fn, *args))
        return out

    async def detach(self) -> None:
        """Unload the agent everywhere: hooks are removed and the processes keep running.

        The agent unhooks itself first (new calls run natively at once). Frida frees it only when
        no thread is inside a hooked call any more, which can take until the next request; the
        detach does not wait for that longer than UNLOAD_WAIT.
        """
        for p in list(self.processes.values()):
            await trio.to_thread.run_sync(_quiet(p.script.exports_sync.prepare_detach))
            with trio.move_on_after(UNLOAD_WAIT) as waited:
                await trio.to_thread.run_sync(_quiet(p.session.detach), abandon_on_cancel=True)
            log.info("agent detached", pid=p.pid, unload_pending=waited.cancelled_caught)
            self.unload_pending |= waited.cancelled_caught
        self.processes.clear()


def _quiet(fn: Callable[[], Any]) -> Callable[[], None]:
    """A Frida clean-up call whose failure (the process is already gone) is not an error."""
    def run() -> None:
        with suppress(frida.InvalidOperationError, frida.TransportError,
                      frida.ProcessNotFoundError, frida.core.RPCException):
            fn()
    return run


@asynccontextmanager
async def open_healer(config: dict[str, Any], *, pid: int | None = None,
                      argv: Sequence[str] | None = None,
                      follow_children: bool = False) -> AsyncIterator[Healer]:
    """Attach to ``pid`` or spawn ``argv`` with the agent loaded; detach on exit.

    Args:
        config: the agent config (healer.config.build_config).
        pid: a running process (attach); exactly one of pid/argv.
        argv: a command to start under supervision from its first instruction.
        follow_children: instrument every child it forks (child gating), and the children that
            exist at attach time.

    Error handling:
        HealerError (no such pid, not permitted, agent refused the config), TargetExited.
    """
    if argv is None and pid is None:
        raise ValueError("open_healer needs pid or argv")
    # A device manager of our own, closed on the way out (_close_injector): the process-wide one
    # is never closed, and cannot be reopened once it is.
    manager = frida.core.DeviceManager()
    healer: Healer | None = None
    try:
        device = await _frida(0, lambda: manager.get_device_by_type("local", 0))
        async with _instrumented(device, config, pid, argv, follow_children) as healer:
            yield healer
    finally:
        if healer is None or not healer.unload_pending:
            with trio.CancelScope(shield=True):
                await _close_injector(manager)


@asynccontextmanager
async def _instrumented(device: Any, config: dict[str, Any], pid: int | None,
                        argv: Sequence[str] | None, follow_children: bool
                        ) -> AsyncIterator[Healer]:
    """open_healer on a given Frida device: the agent is loaded, and unloaded on exit."""
    send, receive = trio.open_memory_channel[Event](math.inf)
    spawned = False
    if argv is not None:
        target = await _frida(0, lambda: device.spawn(list(argv)))
        spawned = True
    else:
        assert pid is not None
        target = pid
    healer = Healer(device, target, config, follow_children, send, receive)
    if follow_children:
        device.on("child-added",
                  lambda child: healer._post(ChildAdded(child.pid, child.parent_pid)))
    try:
        try:
            await healer.instrument(target)
        except BaseException:
            if spawned:
                await trio.to_thread.run_sync(_quiet(lambda: device.kill(target)))
            raise
        if spawned:
            await _frida(target, lambda: device.resume(target))
        elif follow_children:
            for child in children_of(target):
                try:
                    await healer.instrument(child)
                except HealerError as exc:
                    log.error("existing child not instrumented", pid=child, error=str(exc))
        yield healer
    finally:
        with trio.CancelScope(shield=True):
            await healer.detach()

async def _close_injector(manager: Any) -> None:
    """release_injector from trio (a worker thread; the wait is bounded there)."""
    await trio.to_thread.run_sync(release_injector, manager)


def release_injector(manager: Any) -> bool:
    """Wait until Frida's injector has cleaned up after every unloaded agent, then release it.

    After an agent unloads, the injector (a thread of this process, the target's ptrace tracer)
    frees the loader it left in the target by a remote call: it points a target thread at
    munmap() with 0x320 as the return address, waits for the fault there and restores the
    thread's registers. A healer that exits in between leaves that thread at 0x320 and the
    target dies of SIGSEGV (~1 clean detach in 70). ``DeviceManager.close()`` returns only when
    no agent is still injected. Not called when Healer.detach already gave up on an unload (a
    thread inside a hooked or followed call): it would wait as long, and that injector starts no
    remote call until the agent unloads (in a process that exits, it never does: the loader's
    pages stay). UNLOAD_WAIT bounds it all the same.

    Args:
        manager: a ``frida.core.DeviceManager`` of the caller's own (the process-wide one is never
            closed: it cannot be reopened).

    Returns:
        True when the injector finished within UNLOAD_WAIT (a warning is logged otherwise).
    """
    closing = threading.Thread(target=_quiet(manager.close), name="frida-injector-close",
                               daemon=True)
    closing.start()
    closing.join(UNLOAD_WAIT)
    if closing.is_alive():
        log.warning("injector still waiting for an agent to unload", waited=UNLOAD_WAIT)
        return False
    return True

"""The ``healer attach``/``healer run`` process: owns the Frida session, serves the control socket,
logs the agent's events, instruments forked children, reloads on request (``healer reload``, or
SIGUSR1 sent to the target), and detaches cleanly on Ctrl-C/SIGTERM or ``healer detach``.
"""

from __future__ import annotations

import dataclasses
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
import trio

from healer import control
from healer.config import Options, build_config
from healer.errors import HealerError
from healer.session import (
    AgentEvents,
    ChildAdded,
    Healer,
    ProcessGone,
    ScriptError,
    executable_of,
    open_healer,
)

log = structlog.get_logger("healer")

# Agent events worth an operator's attention; the rest are logged at debug level.
_LOUD = {"heal": "warning", "refuse": "error", "fault": "error", "inject": "warning",
         "anomaly": "warning", "alert": "warning", "reload": "info", "agent:ready": "info",
         "debug": "info"}


@dataclasses.dataclass(slots=True)
class _State:
    options: Options
    binary: Path | None
    healer: Healer | None = None
    exit_reason: str = ""
    heals: int = 0


async def supervise(options: Options, *, pid: int | None = None, argv: Sequence[str] | None = None,
                    follow_children: bool = False) -> int:
    """Run the healer until the target exits, a detach is asked for, or SIGINT/SIGTERM.

    Returns:
        0 after a clean detach or when the target exited.

    Error handling:
        HealerError for anything the operator must fix (bad files, no such pid, not permitted).
    """
    binary = executable_of(pid) if pid is not None else _which(argv[0] if argv else "")
    state = _State(options, binary)
    config = await trio.to_thread.run_sync(build_config, options, binary)
    async with open_healer(config, pid=pid, argv=argv, follow_children=follow_children) as healer:
        state.healer = healer
        async with trio.open_nursery() as nursery:
            await nursery.start(_signals, nursery.cancel_scope)
            path = await nursery.start(control.serve, healer.root_pid,
                                       lambda req: _handle(state, req, nursery.cancel_scope))
            log.info("healer ready", pid=healer.root_pid, control=str(path),
                     coverage=config["coverage"]["mode"])
            await _events(state, healer, nursery)
            nursery.cancel_scope.cancel()
    log.info("healer done", pid=state.healer.root_pid, reason=state.exit_reason or "detached",
             heals=state.heals)
    return 0


def _which(cmd: str) -> Path | None:
    found = shutil.which(cmd)
    return Path(found) if found else None


async def _signals(scope: trio.CancelScope, *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.info("detaching", signal=signal.Signals(signum).name)
            scope.cancel()
            return


async def _events(state: _State, healer: Healer, nursery: trio.Nursery) -> None:
    async for ev in healer.events:
        if isinstance(ev, AgentEvents):
            for e in ev.events:
                await _agent_event(state, ev.pid, e)
        elif isinstance(ev, ChildAdded):
            log.info("child forked", pid=ev.pid, parent=ev.parent)
            nursery.start_soon(healer.add_child, ev.pid)
        elif isinstance(ev, ProcessGone):
            healer.forget(ev.pid)
            if ev.pid == healer.root_pid:
                state.exit_reason = f"target {ev.pid} gone ({ev.reason})"
                return
            log.info("child gone", pid=ev.pid, reason=ev.reason)
        elif isinstance(ev, ScriptError):
            log.error("agent error", pid=ev.pid, error=ev.description)


async def _agent_event(state: _State, pid: int, e: dict[str, Any]) -> None:
    kind = str(e.pop("type", "?"))
    e.pop("pid", None)  # the process is named by `pid` below (children have their own)
    if kind == "heal":
        state.heals += 1
    if kind == "reload-request":
        try:
            await _reload(state, None)
        except HealerError as exc:
            log.error("reload refused", pid=pid, signal="SIGUSR1", error=str(exc))
        return
    if kind == "log":
        level = str(e.pop("level", "info"))
        event = str(e.pop("event", "agent log"))
        getattr(log, level if level in ("debug", "info", "warning", "error") else "info")(
            event, pid=pid, **e)
        return
    getattr(log, _LOUD.get(kind, "debug"))(kind, pid=pid, **e)


async def _reload(state: _State, coverage: str | None) -> Any:
    options = state.options if coverage is None else dataclasses.replace(state.options,
                                                                          coverage=coverage)
    config = await trio.to_thread.run_sync(build_config, options, state.binary)
    assert state.healer is not None
    result = await state.healer.call("reload", config)
    state.options = options
    state.healer.config = config
    log.info("reloaded", coverage=config["coverage"]["mode"])
    return result


async def _handle(state: _State, req: dict[str, Any], scope: trio.CancelScope) -> Any:
    healer = state.healer
    assert healer is not None
    op = req["op"]
    if op == "status":
        return {"healer": {"pid": healer.root_pid, "processes": sorted(healer.processes),
                           "coverage": state.options.coverage, "heals": state.heals},
                "agents": await healer.call("status")}
    if op == "reload":
        return await _reload(state, req.get("coverage"))
    if op == "alert":
        return await healer.call("alert", {"function": req.get("function"),
                                           "source": "healer alert"})
    if op == "inject":
        return await healer.call("inject", {"function": req.get("function"),
                                            "probability": req.get("probability"),
                                            "always": bool(req.get("always"))})
    if op == "detach":
        state.exit_reason = "healer detach"
        scope.cancel()  # the answer is sent first: _one's send is not in this scope
        return {"detaching": healer.root_pid}
    raise HealerError(f"unknown control operation {op!r}")

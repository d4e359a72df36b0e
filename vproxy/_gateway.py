"""The gateway: listeners for every route, the control socket, and the state they share."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
import trio

from vproxy import _sockio
from vproxy._config import Address, GatewayConfig, Route
from vproxy._control import ControlSocketError, open_control, serve_control
from vproxy._link import Link
from vproxy._stats import Stats
from vproxy._threadrelay import ThreadRelay
from vproxy._turns import Turns

if TYPE_CHECKING:
    from vproxy._session import ControlSession, Key

log = structlog.get_logger("vproxy")


class GatewayError(Exception):
    """The gateway could not start; the message says what is wrong and how to fix it."""


@dataclass(frozen=True, slots=True)
class Serving:
    """What ``serve`` reports once it listens.

    Attributes:
        listening: the bound address of each route, in ``config.routes`` order (port 0 resolved).
        control: the control socket path (None without one).
        token: the pairing token (also in ``control + ".token"``).
        gateway: the running gateway (``gateway.stats`` for counters).
    """

    listening: tuple[Address, ...]
    control: str | None
    token: str | None
    gateway: Gateway


class Gateway:
    """Shared state: guard, links by the server's 4-tuple, control sessions, counters."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.guarded = False
        self._guards: set[ControlSession] = set()
        self._lost_guards = 0
        self._links: dict[Key, Link] = {}
        self._waiting: dict[Key, set[ControlSession]] = {}
        self._numbers = itertools.count(1)
        self.turns = Turns()  # trio and the relay thread take turns on this gateway's state
        self.relay = ThreadRelay(self.turns)  # every link and control connection

    # --- guard ---------------------------------------------------------------------------------

    def set_guard(self, session: ControlSession, on: bool) -> None:
        """A controller sent GUARD (on) or UNGUARD (off)."""
        if on:
            self._guards.add(session)
        else:  # a clean detach also lifts the guard a lost controller left behind
            self._guards.discard(session)
            self._lost_guards = 0
        was, self.guarded = self.guarded, bool(self._guards) or self._lost_guards > 0
        if was != self.guarded:
            log.info("guard " + ("on" if self.guarded else "off"), controllers=len(self._guards))
        if self.guarded:
            self.relay.guard_all()
        if was and not self.guarded:
            for link in list(self._links.values()):
                link.unguarded()

    def forget_session(self, session: ControlSession) -> None:
        """A paired controller went away; if it guarded, the gateway stays guarded (fail closed)."""
        if session in self._guards:
            self._guards.discard(session)
            self._lost_guards += 1
            log.warning("guarding controller lost; staying guarded", lost=self._lost_guards)
        for sessions in self._waiting.values():
            sessions.discard(session)

    # --- links ---------------------------------------------------------------------------------

    def register(self, link: Link) -> None:
        """A link is connected: CONN lines naming its 4-tuple now find it."""
        assert link.key is not None
        self._links[link.key] = link
        self.stats.active += 1
        for session in self._waiting.pop(link.key, ()):
            session.link_ready(link.key, link)

    def unregister(self, link: Link) -> None:
        if link.key is not None and self._links.get(link.key) is link:
            del self._links[link.key]
            self.stats.active -= 1

    def lookup(self, key: Key) -> Link | None:
        return self._links.get(key)

    def wait_for_link(self, key: Key, session: ControlSession) -> None:
        """``session`` named a 4-tuple not registered yet; tell it when it is."""
        self._waiting.setdefault(key, set()).add(session)

    # --- serving -------------------------------------------------------------------------------

    async def _serve_route(self, route: Route, sock: socket.socket) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    client = await _sockio.accept(sock)
                except OSError as exc:  # EMFILE, ENFILE, ENOBUFS
                    log.warning("accept failed", route=str(route.listen),
                                cause=exc.strerror or str(exc))
                    await trio.sleep(0.05)  # do not spin while out of file descriptors
                    continue
                try:
                    link = Link(self, route, client, next(self._numbers))
                except OSError:  # the client is already gone (getpeername: ENOTCONN)
                    client.close()
                    continue
                self.stats.connections += 1
                nursery.start_soon(link.run)


def _bind(route: Route, reuse_port: bool) -> socket.socket:
    try:
        return _sockio.listener(route.listen.host, route.listen.port, reuse_port=reuse_port)
    except OSError as exc:
        raise GatewayError(f"cannot listen on {route.listen}: {exc.strerror or exc}; choose a free "
                           "port or stop what holds it") from None


async def serve(config: GatewayConfig, *, reuse_port: bool = False,
                task_status: trio.TaskStatus[Serving] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a gateway until cancelled.

    Args:
        config: routes, control socket, policies and bounds.
        reuse_port: set SO_REUSEPORT on the listeners (several gateway processes share a port;
            only for plain relaying: each process has its own control socket and guard).
        task_status: receives a ``Serving`` once every route listens and the control socket
            accepts.

    Error handling:
        GatewayError (before ``started``) when a listen address or the control socket cannot be
        set up; the message names the cause and the fix.
    """
    if not config.routes:
        raise GatewayError("no route: give --upstream (and --listen) or at least one --route")
    gateway = Gateway(config)
    socks = []
    control: socket.socket | None = None
    token = ""
    try:
        for route in config.routes:
            socks.append(_bind(route, reuse_port))
        if config.control is not None:
            try:
                control, token = open_control(config.control, config.control_user)
            except ControlSocketError as exc:
                raise GatewayError(str(exc)) from None
        listening = tuple(Address(*s.getsockname()[:2]) for s in socks)
        gateway.turns.start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(gateway.relay.run)
                for route, sock in zip(config.routes, socks, strict=True):
                    nursery.start_soon(gateway._serve_route, route, sock)
                if control is not None:
                    nursery.start_soon(serve_control, gateway, control, token)
                log.info("gateway listening",
                         routes=[f"{a}->{r.upstream} {r.protocol} {r.side}"
                                 for a, r in zip(listening, config.routes, strict=True)],
                         control=config.control)
                task_status.started(Serving(listening, config.control, token, gateway))
        finally:  # (the relay thread has ended: ``run`` waits for it)
            gateway.turns.stop()
    finally:
        gateway.relay.close()
        for sock in socks:
            sock.close()
        if control is not None and config.control is not None:
            control.close()
            for path in (config.control, config.control + ".token"):
                with contextlib.suppress(OSError):
                    os.unlink(path)


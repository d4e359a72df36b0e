"""One relayed TCP connection: the two sockets, the two directions, and the server output it holds.

Directions are named from the protected server's point of view. On a front route the server is the
upstream, so its output is what the gateway reads from the upstream socket; on a back route the
server is the client that connected to the gateway. Input (towards the server) is always forwarded
at once: the server must read it to make progress. Output goes straight through until the gateway
is guarded; from then on it enters an ``OutHold``, and what the control events release goes out
from the relay thread at once when the peer takes it, else from the link's writer task.

Most of this runs in the relay thread (``vproxy/_threadrelay.py``) and the rest in trio, never at
once (``vproxy/_turns.py``): methods called from the relay loop or a control session do their work
in place and leave what needs trio (waking the writer, starting a replay) to ``turns.soon``.
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING

import structlog
import trio

from protocols.control import Endpoint
from vproxy import _sockio
from vproxy._config import Route
from vproxy._fastrelay import INPUT, OUTPUT, Handover
from vproxy._hold import DISCARDED, HELD, INFINITY, RELEASED, InKeep, Mark, OutHold, OutRange
from vproxy._replace import Replacer

if TYPE_CHECKING:
    from vproxy._gateway import Gateway

_CHUNK = 65536
_STATES = {HELD: "open", RELEASED: "released", DISCARDED: "aborted"}  # (for the log)


def endpoint(addr: tuple[str, int] | tuple[str, int, int, int]) -> Endpoint:
    """A socket address as the control protocol names it (IPv4-mapped IPv6 shown as IPv4)."""
    host = addr[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return Endpoint(host, addr[1])


class Link:
    """A client connection accepted on ``route`` and the upstream connection dialled for it.

    Args:
        gateway: owner of the counters, the guard state and the link registry.
        route: the route the client came in on.
        client: the accepted socket (non-blocking).
        number: a per-gateway connection number for the log.
    """

    def __init__(self, gateway: Gateway, route: Route, client: socket.socket, number: int) -> None:
        self.gateway = gateway
        self.route = route
        self.client = client
        self.upstream: socket.socket | None = None
        self.log = structlog.get_logger("vproxy.link").bind(
            conn=number, route=str(route.listen), client=str(endpoint(client.getpeername())))
        self.hold: OutHold | None = None
        self.keep: InKeep | None = None
        self.key: tuple[Endpoint, Endpoint] | None = None
        self.out_offset = 0  # server output bytes received
        self.in_offset = 0  # bytes delivered to the server (its input offsets, replays included)
        self.replays_left = gateway.config.replay_budget
        self.replacer = Replacer(route.protocol, gateway.config.http_status,
                                 frame=gateway.config.on_abort == "replace", side=route.side)
        self._now = gateway.turns.now  # trio's clock, from either side
        self._wake = trio.Event()
        self._armed: float = INFINITY  # the hold-ms deadline the relay thread wakes the writer at
        self._drained = trio.Event()
        self._server_eof = False
        self._to_server_lock = trio.Lock()
        self._to_peer_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._peer: socket.socket | None = None  # where the server's output goes
        self._handover: Handover | None = None  # set while in the relay thread
        self._backlog: list[bytes | Mark] = []  # released by ``kick``, not sent yet
        self._unheld = b""  # output relayed unheld before a hold, not sent yet: goes out first
        self._closing = False  # a policy closed the link: nothing more goes out

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Dial the upstream and relay until both directions ended or a policy closed the link."""
        try:
            await self._run()
        finally:
            self.close_sockets()

    async def _run(self) -> None:
        route, stats = self.route, self.gateway.stats
        family = socket.AF_INET6 if ":" in route.upstream.host else socket.AF_INET
        try:
            self.upstream = await _sockio.connect((route.upstream.host, route.upstream.port),
                                                  family)
        except OSError as exc:
            stats.upstream_failures += 1
            self.log.warning("upstream unreachable", upstream=str(route.upstream),
                             cause=exc.strerror or str(exc))
            if route.side == "front":
                await self._refuse(self.client, self.replacer.unreachable())
            return
        if route.side == "front":
            server, peer = self.upstream, self.client
        else:
            server, peer = self.client, self.upstream
        self._peer = peer
        # The server's own (LOCAL, PEER) is the reverse of what our socket towards it sees.
        self.key = (endpoint(server.getpeername()), endpoint(server.getsockname()))
        self.gateway.register(self)
        self.log.debug("relaying", upstream=str(route.upstream))
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer, peer)  # idle until output is held
                handover = self._handover = Handover()
                await self.gateway.relay.relay(self, server, peer, handover)
                self._handover = None
                if handover.reason in ("done", "error"):
                    if handover.error is not None:
                        self._reset(handover.error)
                        nursery.cancel_scope.cancel()
                    return  # (the writer ends once the held output is resolved)
                self.log.info("left the relay thread", reason=handover.reason)
                if not handover.ended[INPUT]:  # input is never held: unsent first, then on
                    nursery.start_soon(self._input, peer, server,
                                       handover.unsent[INPUT] + handover.pending[INPUT])
                nursery.start_soon(self._output, server, peer, handover.pending[OUTPUT],
                                   handover.ended[OUTPUT])
        except* OSError as group:
            self._reset(group.exceptions[0])
        finally:
            self.gateway.unregister(self)

    def _reset(self, exc: BaseException) -> None:
        self.log.info("connection reset", cause=getattr(exc, "strerror", None) or str(exc))

    def close_sockets(self) -> None:
        for sock in (self.client, self.upstream):
            if sock is not None and sock.fileno() >= 0:
                trio.lowlevel.notify_closing(sock)
                sock.close()

    async def _refuse(self, sock: socket.socket, answer: bytes) -> None:
        """Send ``answer`` (maybe empty) and close cleanly: half-close, then read what the client
        still sends (bounded) so the kernel does not turn our close into a reset that could
        destroy the answer before the client read it."""
        with contextlib.suppress(OSError), trio.move_on_after(1.0):
            await _sockio.send_all(sock, answer)
            _sockio.shutdown_write(sock)
            buf = bytearray(_CHUNK)
            fair = _sockio.Yielder()
            for _ in range(64):
                if not await _sockio.recv_into(sock, buf, fair):
                    break

    # --- input: towards the server -------------------------------------------------------------

    async def _input(self, src: socket.socket, server: socket.socket, first: bytes) -> None:
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        fair = _sockio.Yielder()
        stats = self.gateway.stats
        lock = self._to_server_lock
        while True:
            if first:  # left unsent by the relay thread
                n, chunk, first = len(first), memoryview(first), b""
            else:
                n = await _sockio.recv_into(src, buf, fair)
                if not n:
                    break
                chunk = view[:n]
            try:
                lock.acquire_nowait()
            except trio.WouldBlock:
                await lock.acquire()
            try:
                await _sockio.send_all(server, chunk)
            finally:
                lock.release()
            self._delivered(chunk)
            if self.hold is not None or self.gateway.guarded:
                self.holding()  # guarded: frame the input from here on, as the output will be
                if self.replacer.wants_input:
                    self.replacer.input_data(chunk)
            stats.bytes_passed += n
        _sockio.shutdown_write(server)

    def passed(self, output: bool, chunk: memoryview) -> None:
        """The relay thread relayed ``chunk`` unheld (``output``: from the server)."""
        if output:
            self.out_offset += len(chunk)
        else:
            self._delivered(chunk)
            if self.hold is not None or self.gateway.guarded:
                self.holding()  # as in ``_input``: frame the input from here on
                if self.replacer.wants_input:
                    self.replacer.input_data(chunk)
        self.gateway.stats.bytes_passed += len(chunk)

    def held_output(self, chunk: memoryview) -> bool:
        """The relay thread read ``chunk`` of server output that must be held: hold it and send what
        is releasable already. Returns True when the hold is over ``hold_bytes``: the relay thread
        stops reading it (the writer applies the bound, the task path waits for the drain)."""
        hold = self.holding()
        n = len(chunk)
        hold.feed(chunk, self._now())
        self.out_offset += n
        stats = self.gateway.stats
        stats.bytes_held += n
        self.kick()  # commits often precede the bytes; arms the writer for what stays held
        stats.trim()
        if hold.size <= self.gateway.config.hold_bytes:
            return False
        self._wake_writer()  # the writer applies the bound
        return True

    def unheld_output(self, data: bytes) -> None:
        """Output the relay thread relayed unheld (and counted) but could not send yet: it goes out
        before anything a hold releases, whatever the guard says."""
        self._unheld += data

    async def _send_unheld(self, peer: socket.socket) -> None:
        """Send ``_unheld`` (the caller holds the peer lock)."""
        if self._unheld:
            data, self._unheld = self._unheld, b""
            await _sockio.send_all(peer, data)

    def output_ended(self) -> None:
        """The server closed its output: every byte it wrote has arrived, so output a transaction
        announced past the end never will (logged, and it holds nothing: the link does not wait
        for it). The writer passes the EOF on once nothing is held any more."""
        self._server_eof = True
        if self.hold is not None:
            self._missing(self.hold.end_output())
        self._wake_writer()

    def announced(self, rng: OutRange) -> None:
        """A transaction announced server output ``rng`` (its bytes may arrive before or after);
        the caller kicks (``kick``) once it applied the rest of its batch of events."""
        missing = self.holding().add_range(rng)
        if missing is not None:
            self._missing([OutRange(*missing, rng.state)])

    def _missing(self, ranges: list[OutRange]) -> None:
        if ranges:
            self.log.warning("server closed its output before announced output arrived",
                             end=self.out_offset, missing=[(r.start, r.end, _STATES[r.state])
                                                           for r in ranges])

    def _delivered(self, chunk: bytes | memoryview) -> None:
        if self.keep is None and self.gateway.guarded:
            self.keep = InKeep(self.in_offset, self.gateway.config.hold_bytes)
        if self.keep is not None:
            self.keep.feed(chunk)
        self.in_offset += len(chunk)

    def input_committed(self, upto: int) -> None:
        """A committed root transaction read input up to ``upto``: that copy is no longer needed."""
        if self.keep is not None:
            self.keep.trim(upto)

    async def _replay(self, data: bytes) -> None:
        async with self._to_server_lock:
            assert self.upstream is not None
            server = self.upstream if self.route.side == "front" else self.client
            await _sockio.send_all(server, data)
            self._delivered(data)
        self.gateway.stats.bytes_replayed += len(data)

    # --- output: from the server ---------------------------------------------------------------

    async def _output(self, server: socket.socket, peer: socket.socket, first: bytes,
                      ended: bool) -> None:
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        fair = _sockio.Yielder()
        gateway = self.gateway
        stats = gateway.stats
        lock = self._to_peer_lock
        limit = gateway.config.hold_bytes
        async with lock:  # (unless the writer sent it already)
            await self._send_unheld(peer)
        while not ended:
            while self.hold is not None and self.hold.size > limit:
                self._drained = trio.Event()
                await self._drained.wait()
            if first:  # read by the relay thread, not sent
                n, chunk, first = len(first), memoryview(first), b""
            else:
                n = await _sockio.recv_into(server, buf, fair)
                if not n:
                    break
                chunk = view[:n]
            hold = self.hold
            if hold is None and not gateway.guarded:
                self.out_offset += n
                try:
                    lock.acquire_nowait()
                except trio.WouldBlock:
                    await lock.acquire()
                try:
                    await _sockio.send_all(peer, chunk)
                finally:
                    lock.release()
                stats.bytes_passed += n
                continue
            if hold is None:
                hold = self.holding()
            now = self._now()
            hold.feed(chunk, now)
            self.out_offset += n
            stats.bytes_held += n
            await self._flush(peer, hold, now)  # commits often precede the bytes: no wake-up
            if hold.size:
                self._arm()
        self.output_ended()

    def holding(self) -> OutHold:
        """The link's hold, created at the current output offset the first time it is needed."""
        if self.hold is None:
            if self._handover is not None:  # unsent unheld output must go first: task path
                self.gateway.relay.hold_starts(self._handover)
            self.hold = OutHold(self.out_offset)
            if self._server_eof:
                self.hold.end_output()  # (empty: nothing can be missing yet)
            self.replacer.restart()
            if not self.gateway.guarded:
                self.hold.release_wm = INFINITY
        return self.hold

    def kick(self) -> None:
        """Control events changed what is releasable: send it now if the peer socket is free and
        takes it whole (no task switch between the event and the send), else let the writer."""
        hold, peer = self.hold, self._peer
        if self._closing:
            return
        if hold is not None and not hold.size and not hold.marks and not self._backlog \
                and not self._unheld:
            return  # nothing arrived to release (events usually precede their bytes)
        if hold is None or peer is None or self._backlog or self._unheld \
                or self._to_peer_lock.locked():
            self._wake_writer()
            return
        items = self._pump(hold, self._now())
        for i, item in enumerate(items):
            if isinstance(item, Mark):  # replacing or closing needs the writer's awaits
                self._backlog = items[i:]
                break
            try:
                sent = peer.send(item)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:  # the writer meets it again and ends the link
                self._backlog = items[i:]
                break
            self.replacer.released(item[:sent])
            if sent < len(item):
                self._backlog = [item[sent:], *items[i + 1:]]
                break
        if self._backlog or self._server_eof:  # (the writer passes the EOF on)
            self._wake_writer()
        elif hold.size:
            self._arm()

    def _hold_deadline(self) -> float:
        """When the oldest held byte reaches hold-ms, in trio's clock: every hold time of a link
        is taken with ``turns.now()``, trio's clock (``time.monotonic()`` differs from it by
        trio's random offset, and a deadline computed from it was always past: the writer spun
        for as long as anything was held)."""
        hold = self.hold
        if hold is None or hold.held_since is None:
            return INFINITY
        return hold.held_since + self.gateway.config.hold_ms / 1000

    def _arm(self) -> None:
        """Bytes stay held: make sure the writer wakes by their hold-ms bound. Measured on the
        wget crawl, waking it for every held chunk only to re-arm its deadline was the guarded
        path's largest cost (a task switch and a cancel scope per response). The relay thread's
        timer wakes it instead (``hold_due``), armed once per deadline, not per chunk: a later
        held byte's deadline is never earlier than one still armed. A deadline left early by
        bytes released since only makes the writer wake, find nothing due and wait again."""
        deadline = self._hold_deadline()
        if deadline < self._armed:
            self._armed = deadline
            self.gateway.relay.arm(self, deadline)

    def hold_due(self) -> None:
        """(relay thread) The deadline ``_arm`` gave the thread passed: wake the writer if the
        oldest held byte is due now, else keep watching for the one that is held now."""
        self._armed = INFINITY
        deadline = self._hold_deadline()
        if deadline <= self._now():
            self._wake_writer()
        elif deadline < INFINITY:
            self._armed = deadline
            self.gateway.relay.arm(self, deadline)

    def _wake_writer(self) -> None:
        """Let the writer task look at the hold (in trio: from the relay thread, after its turn)."""
        self.gateway.turns.soon(self._set_wake)

    def _set_wake(self) -> None:
        self._wake.set()  # (the writer replaces ``_wake`` each time it woke)

    def unguarded(self) -> None:
        """The last guard left: output owned by no open transaction goes out."""
        if self.hold is not None:
            self.hold.release_wm = INFINITY
            self._wake_writer()

    def aborted(self, offset: int | None, reason: str, inputs: list[tuple[int, int]]) -> None:
        """A transaction that wrote (from ``offset``) or read on this link was rolled back.

        Args:
            offset: first output offset it wrote, or None when it only read.
            reason: the abort reason (logged, and carried by the replacement).
            inputs: its input ranges, replayed or dropped per ``on_rollback_input``.
        """
        config = self.gateway.config
        hold = self.holding()
        if config.on_abort != "drop":
            at = hold.end if offset is None else offset
            hold.add_mark(Mark(at, "close" if config.on_abort == "close" else "replace", reason))
        if inputs and config.on_rollback_input == "replay":
            self._replay_inputs(inputs, reason)
        elif inputs:
            self.log.info("aborted input dropped", reason=reason,
                          bytes=sum(e - s for s, e in inputs))
        self._wake_writer()

    def _replay_inputs(self, inputs: list[tuple[int, int]], reason: str) -> None:
        pieces = [self.keep.get(s, e) if self.keep is not None else None for s, e in inputs]
        if self.replays_left <= 0 or any(p is None for p in pieces):
            why = "retry budget spent" if self.replays_left <= 0 else "input no longer kept"
            self.log.warning("aborted input not replayed", reason=reason, why=why,
                             bytes=sum(e - s for s, e in inputs))
            return
        self.replays_left -= 1
        if self._handover is not None:  # the replay and the input share the lock of the
            self.gateway.relay.evict(self._handover, "replay")  # task path
        data = b"".join(p for p in pieces if p is not None)
        self.log.info("replaying aborted input", reason=reason, bytes=len(data),
                      budget_left=self.replays_left)
        assert self._nursery is not None
        self.gateway.turns.soon(self._nursery.start_soon, self._replay, data)

    # --- writer: held output to the peer -------------------------------------------------------

    async def _writer(self, peer: socket.socket) -> None:
        while True:
            with trio.move_on_at(self._hold_deadline()):  # (bytes held later: ``_arm``)
                await self._wake.wait()
            self._wake = trio.Event()
            hold = self.hold
            if hold is not None:
                await self._flush(peer, hold, self._now())
            if self._server_eof and not self._unheld and \
                    (self.hold is None or not self.hold.pending()):
                _sockio.shutdown_write(peer)
                return

    def _pump(self, hold: OutHold, now: float) -> list[bytes | Mark]:
        stats = self.gateway.stats
        items, released, discarded = hold.pump(now, stats.hold_times)
        stats.bytes_released += released
        stats.bytes_discarded += discarded
        return items

    async def _flush(self, peer: socket.socket, hold: OutHold, now: float) -> None:
        """Send the backlog and what the hold releases now, apply marks and bounds.

        Pumping happens with the peer lock held, so whatever pumps later (``kick``, the other
        task) cannot overtake these bytes while they are being sent.
        """
        gateway = self.gateway
        config, stats = gateway.config, gateway.stats
        lock = self._to_peer_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            await self._send_unheld(peer)
            items, self._backlog = [*self._backlog, *self._pump(hold, now)], []
            while items:
                await self._send_items(peer, items)
                if self._closing:
                    return
                # the relay thread may have fed more while we sent: only what stays held counts
                # against the bound below
                items = self._pump(hold, now)
            if self._closing:
                return
            if hold.size and (hold.size > config.hold_bytes or
                             now >= (hold.held_since or INFINITY) + config.hold_ms / 1000):
                await self._bound(peer, hold, now)
        finally:
            lock.release()
        stats.trim()
        self._drained.set()
        if not gateway.guarded and not hold.pending() and self.hold is hold:
            self.hold = None

    async def _send_items(self, peer: socket.socket, items: list[bytes | Mark]) -> None:
        """Send bytes and act on marks, in order (the caller holds the peer lock)."""
        for item in items:
            if isinstance(item, Mark):
                if not await self._act(peer, item):
                    return
            else:
                self.replacer.released(item)
                await _sockio.send_all(peer, item)

    async def _act(self, peer: socket.socket, mark: Mark) -> bool:
        """Replace or close at ``mark``; returns False when the link was closed."""
        if mark.action == "replace":
            data = self.replacer.replacement(mark.reason)
            if data == b"":  # a back route: the aborted request is dropped, nothing is made up
                self.log.info("aborted request dropped at a message boundary; nothing sent to "
                              "the backend", reason=mark.reason, at=mark.offset)
                return True
            if data is not None:
                self.gateway.stats.replacements += 1
                self.log.info("aborted output replaced", reason=mark.reason, at=mark.offset)
                await _sockio.send_all(peer, data)
                if not self.replacer.closes_after:
                    return True
            else:
                self.log.info("aborted output mid-message or not replaceable: closing",
                              reason=mark.reason, at=mark.offset, protocol=self.route.protocol)
        else:
            self.log.info("aborted output: closing", reason=mark.reason, at=mark.offset)
        self._close(peer)
        return False

    def _close(self, peer: socket.socket) -> None:
        """End the link now: the peer reads EOF after what was already released, nothing more."""
        self._closing = True
        _sockio.shutdown_write(peer)
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    async def _bound(self, peer: socket.socket, hold: OutHold, now: float) -> None:
        config, stats = self.gateway.config, self.gateway.stats
        stats.bounds_fired += 1
        why = "hold-bytes" if hold.size > config.hold_bytes else "hold-ms"
        self.log.warning("hold bound reached", bound=why, policy=config.on_bound,
                         start=hold.base, end=hold.end, held_bytes=hold.size,
                         held_ms=round((now - (hold.held_since or now)) * 1000, 1),
                         hold_bytes=config.hold_bytes, hold_ms=config.hold_ms)
        if config.on_bound == "close":
            self._close(peer)
            return
        data = hold.data()
        resolved = hold.force(now, stats.hold_times, release=config.on_bound == "release")
        if config.on_bound == "release":
            stats.bytes_released += resolved
            await self._send_items(peer, [data])
        else:
            stats.bytes_discarded += resolved

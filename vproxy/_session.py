"""One control connection's view of the commit protocol (sans-IO: bytes in, answer bytes out).

Each control connection (one per agent process) scopes its own ``cid`` and ``tx`` numbers. A
``CONN`` whose 4-tuple the gateway does not know yet (the server accepted before the gateway
registered its socket) is kept waiting with the events that name it; they apply when the link
appears.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import structlog

from protocols import control as c
from vproxy._hold import DISCARDED, HELD, RELEASED, OutRange

if TYPE_CHECKING:
    from vproxy._gateway import Gateway
    from vproxy._link import Link

Key = tuple[c.Endpoint, c.Endpoint]

_MAX_WAITING: Final = 4096
_MAX_ERRORS: Final = 100
log = structlog.get_logger("vproxy.control")

OPEN: Final = "open"
_STATE: Final = {OPEN: HELD, "committed": RELEASED, "aborted": DISCARDED}  # tx state -> range


class _Tx:
    __slots__ = ("children", "id", "ins", "out", "parent", "reason", "state")

    def __init__(self, tx_id: int, parent: _Tx | None) -> None:
        self.id = tx_id
        self.parent = parent
        self.children: list[_Tx] = []
        self.out: list[tuple[Link, OutRange]] = []
        self.ins: list[tuple[Link, int, int]] = []
        self.state = OPEN  # or "committed", "merged", "aborted"
        self.reason = ""  # why it aborted

    def effective(self) -> _Tx:
        tx = self
        while tx.state == "merged" and tx.parent is not None:
            tx = tx.parent
        return tx


def _gradual_commit(tx: _Tx, link: Link) -> None:
    """GRADUAL: the output ``tx`` and its ancestors wrote on ``link`` so far is released for good,
    and every input its thread's open transactions (its ancestors and descendants) read so far was
    made permanent with the memory. Both leave the transactions: a later abort can neither discard
    nor replace that output (bytes still on their way go out when they arrive) nor replay that
    input, whose copy is dropped. (A connection-long transaction, as Apache's under COSAK, also
    no longer carries every request's ranges to the end.)"""
    ancestors = []
    t: _Tx | None = tx
    while t is not None:
        ancestors.append(t)
        t = t.parent
    family, stack = ancestors[1:], [tx]
    while stack:
        family.append(t := stack.pop())
        stack += t.children
    consumed: dict[Link, int] = {}
    for t in family:
        for lk, _, end in t.ins:
            consumed[lk] = max(consumed.get(lk, 0), end)
        t.ins = []
    for t in ancestors:
        for lk, rng in t.out:
            if lk is link and rng.state == HELD:
                rng.state = RELEASED
        t.out = [(lk, rng) for lk, rng in t.out if lk is not link]
    for lk, end in consumed.items():
        lk.input_committed(end)


class _Binding:
    __slots__ = ("key", "link", "waiting")

    def __init__(self, key: Key, link: Link | None) -> None:
        self.key = key
        self.link = link
        self.waiting: list[tuple[_Tx | None, c.Message]] = []


def _late_io(seen: tuple[int | None, list[tuple[int, int]]], msg: c.Io
             ) -> tuple[int | None, list[tuple[int, int]]]:
    """Add an aborted transaction's IO, kept until its link appeared, to (its first output
    offset, its input ranges) on that link: what ``Link.aborted`` needs."""
    offset, inputs = seen
    if msg.direction == "out":
        return (msg.start if offset is None else min(offset, msg.start)), inputs
    return offset, [*inputs, (msg.start, msg.end)]


class ControlSession:
    """Applies one control connection's messages to the gateway.

    Args:
        gateway: the gateway whose links and counters the messages act on.
        token: the pairing token a HELLO must carry.

    Error handling:
        Every refused line yields an ``ERR code text`` answer; the session goes on unless the line
        was a bad HELLO (``closed`` becomes True: the caller drops the connection).
    """

    def __init__(self, gateway: Gateway, token: str) -> None:
        self.gateway = gateway
        self._token = token
        self._reader = c.ControlReader()
        self.hello: c.Hello | None = None
        self._agent = False  # paired, and not as admin: every handler applies
        self.closed = False
        self.guarding = False
        self._errors = 0
        self._txs: dict[int, _Tx] = {}
        # links whose releasable output may have changed, kicked once the batch of lines is applied
        # (an IO line's kick before the GRADUAL that releases it found nothing to send)
        self._dirty: dict[Link, None] = {}
        self._cids: dict[int, _Binding] = {}
        self._handlers: dict[type, Callable[[c.Message], bytes]] = {
            c.Guard: self._guard, c.Unguard: self._unguard, c.Conn: self._conn,
            c.Begin: self._begin, c.Io: self._io, c.Commit: self._commit, c.Abort: self._abort,
            c.Gradual: self._gradual, c.Release: self._release, c.Close: self._close,
            c.Ping: self._ping, c.Stats: self._stats,
        }

    # --- input ---------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> bytes:
        """Feed bytes from the control socket (``b""`` at EOF); returns the answer bytes to send."""
        reader, handlers = self._reader, self._handlers
        reader.receive_data(data)
        answer = b""
        while not self.closed:
            msg = reader.next_event()
            if msg is c.NEED_DATA:
                break
            # a paired agent's lines go straight to their handler (COSAK: ~36 lines a request)
            handler = handlers.get(type(msg)) if self._agent else None
            out = handler(msg) if handler is not None else self._handle(msg)  # type: ignore[arg-type]
            if out:
                answer += out
        self._kick_dirty()
        return answer

    def _kick_dirty(self) -> None:
        dirty, self._dirty = self._dirty, {}
        for link in dirty:
            link.kick()

    def _handle(self, msg: c.Message | c.Malformed) -> bytes:
        if isinstance(msg, c.Malformed):
            return self._err("malformed", f"{msg.error.reason}: {msg.error.line[:60]!a}; see "
                                          "docs/control-protocol.md")
        if self.hello is None:
            return self._first(msg)
        if self.hello.role == "admin" and not isinstance(msg, c.Ping | c.Stats):
            return self._err("not-allowed", f"an admin connection may only send PING and STATS, "
                                            f"not {type(msg).__name__.upper()}")
        handler = self._handlers.get(type(msg))
        if handler is None:
            return self._err("malformed", f"{type(msg).__name__.upper()} is a gateway answer, "
                                          "not a request")
        return handler(msg)

    def _err(self, code: str, text: str) -> bytes:
        """An ERR answer; after ``_MAX_ERRORS`` only a log line, so an agent that never reads
        its socket cannot make the gateway block on a full buffer of answers."""
        self._errors += 1
        if self._errors > _MAX_ERRORS:
            log.debug("control line refused (answer suppressed)", code=code, text=text)
            return b""
        log.warning("control line refused", code=code, text=text)
        if self._errors == _MAX_ERRORS:
            text += f" (last ERR on this connection: {_MAX_ERRORS} refused lines)"
        return c.encode(c.Err(code, text))

    def _first(self, msg: c.Message) -> bytes:
        self.closed = True
        if not isinstance(msg, c.Hello):
            return self._err("not-hello", "the first line must be HELLO 1 ROLE PID TOKEN")
        if msg.version != c.VERSION:
            return self._err("bad-version", f"this gateway speaks sead-control/{c.VERSION}, "
                                            f"not {msg.version}; upgrade the healer or the gateway")
        if not hmac.compare_digest(msg.token.encode(), self._token.encode()):
            return self._err("bad-token", "token does not match the gateway's; read it from "
                                          "CONTROL_PATH.token of the running gateway")
        self.closed = False
        self.hello = msg
        self._agent = msg.role != "admin"
        log.info("controller paired", role=msg.role, pid=msg.pid)
        return c.encode(c.Ok(f"sead-control/{c.VERSION}"))

    # --- guard ---------------------------------------------------------------------------------

    def _guard(self, msg: c.Message) -> bytes:
        self.guarding = True
        self.gateway.set_guard(self, True)
        return b""

    def _unguard(self, msg: c.Message) -> bytes:
        self.guarding = False
        self.gateway.set_guard(self, False)
        return b""

    # --- connections ---------------------------------------------------------------------------

    def _conn(self, msg: c.Message) -> bytes:
        assert isinstance(msg, c.Conn)
        key = (msg.local, msg.peer)
        binding = _Binding(key, self.gateway.lookup(key))
        self._cids[msg.cid] = binding
        if binding.link is None:
            self.gateway.wait_for_link(key, self)
        return b""

    def link_ready(self, key: Key, link: Link) -> None:
        """The link a waiting ``CONN`` named is registered now: apply the events kept for it."""
        for binding in self._cids.values():
            if binding.link is None and binding.key == key:
                binding.link = link
                late: dict[_Tx, tuple[int | None, list[tuple[int, int]]]] = {}
                for tx, msg in binding.waiting:
                    self._apply(binding, tx, msg)
                    owner = tx.effective() if tx is not None else None
                    if owner is not None and owner.state == "aborted" and isinstance(msg, c.Io):
                        late[owner] = _late_io(late.get(owner, (None, [])), msg)
                binding.waiting.clear()
                for owner, (offset, inputs) in late.items():  # aborted while the link was
                    link.aborted(offset, owner.reason, sorted(inputs))  # unknown: as if known
        self._kick_dirty()

    def _binding(self, cid: int) -> _Binding | None:
        return self._cids.get(cid)

    def _close(self, msg: c.Message) -> bytes:
        assert isinstance(msg, c.Close)
        if self._cids.pop(msg.cid, None) is None:
            return self._err("unknown-cid", f"CLOSE {msg.cid}: no CONN announced cid {msg.cid}")
        return b""

    # --- transactions --------------------------------------------------------------------------

    def _begin(self, msg: c.Message) -> bytes:
        assert isinstance(msg, c.Begin)
        parent = None
        if msg.parent is not None:
            parent = self._txs.get(msg.parent)
            if parent is None:
                return self._err("unknown-tx", f"BEGIN {msg.tx} {msg.parent}: parent is not open")
        tx = _Tx(msg.tx, parent)
        if parent is not None:
            parent.children.append(tx)
        self._txs[msg.tx] = tx
        return b""

    def _io(self, msg: c.Message) -> bytes:
        assert isinstance(msg, c.Io)
        tx = self._txs.get(msg.tx)
        if tx is None:
            return self._err("unknown-tx", f"IO for tx {msg.tx} which is not open")
        binding = self._binding(msg.cid)
        if binding is None:
            return self._err("unknown-cid", f"IO on cid {msg.cid}: send CONN {msg.cid} first")
        return self._apply(binding, tx, msg)

    def _apply(self, binding: _Binding, tx: _Tx | None, msg: c.Message) -> bytes:
        link = binding.link
        if link is None:
            if len(binding.waiting) >= _MAX_WAITING:
                return self._err("unknown-conn", f"{binding.key[0]} {binding.key[1]} matches no "
                                                 "gateway connection; its events are dropped")
            binding.waiting.append((tx, msg))
            return b""
        kind = type(msg)
        if kind is c.Io and tx is not None:
            assert isinstance(msg, c.Io)
            owner = tx.effective()
            if msg.direction == "out":
                rng = OutRange(msg.start, msg.end, _STATE[owner.state])
                owner.out.append((link, rng))
                link.announced(rng)
                self._dirty[link] = None
            else:
                owner.ins.append((link, msg.start, msg.end))
        elif kind is c.Gradual and tx is not None:
            _gradual_commit(tx, link)
            self._dirty[link] = None
        elif kind is c.Release:
            assert isinstance(msg, c.Release)
            hold = link.holding()
            hold.release_wm = max(hold.release_wm, msg.upto)
            self._dirty[link] = None
        return b""

    def _commit(self, msg: c.Message) -> bytes:
        assert isinstance(msg, c.Commit)
        tx = self._txs.pop(msg.tx, None)
        if tx is None:
            return self._err("unknown-tx", f"COMMIT {msg.tx}: no such open transaction")
        if tx.parent is not None and tx.parent.state == OPEN:
            tx.state = "merged"
            tx.parent.out += tx.out
            tx.parent.ins += tx.ins
            tx.parent.children.remove(tx)
            return b""
        tx.state = "committed"
        self.gateway.stats.committed += 1
        links = set()
        for link, rng in tx.out:
            if rng.state == HELD:
                rng.state = RELEASED
            links.add(link)
        consumed: dict[Link, int] = {}
        for link, _, end in tx.ins:
            consumed[link] = max(consumed.get(link, 0), end)
        for link, end in consumed.items():
            link.input_committed(end)
        for link in links:
            self._dirty[link] = None
        return b""

    def _abort(self, msg: c.Message) -> bytes:
        assert isinstance(msg, c.Abort)
        tx = self._txs.get(msg.tx)
        if tx is None:
            return self._err("unknown-tx", f"ABORT {msg.tx}: no such open transaction")
        self._abort_tree(tx, msg.reason)
        return b""

    def _abort_tree(self, tx: _Tx, reason: str) -> None:
        doomed, stack = [], [tx]
        while stack:
            t = stack.pop()
            doomed.append(t)
            stack += t.children
        first_out: dict[Link, int | None] = {}
        inputs: dict[Link, list[tuple[int, int]]] = {}
        for t in doomed:
            t.state, t.reason = "aborted", reason
            self._txs.pop(t.id, None)
            for link, rng in t.out:
                rng.state = DISCARDED
                prev = first_out.get(link)
                first_out[link] = rng.start if prev is None else min(prev, rng.start)
            for link, start, end in t.ins:
                inputs.setdefault(link, []).append((start, end))
                first_out.setdefault(link, None)
        if tx.parent is not None and tx in tx.parent.children:
            tx.parent.children.remove(tx)
        self.gateway.stats.aborted += 1
        log.info("transaction aborted", tx=tx.id, reason=reason, links=len(first_out))
        for link, offset in first_out.items():
            link.aborted(offset, reason, sorted(inputs.get(link, [])))

    def _gradual(self, msg: c.Message) -> bytes:
        assert isinstance(msg, c.Gradual)
        tx = self._txs.get(msg.tx)
        if tx is None:
            return self._err("unknown-tx", f"GRADUAL {msg.tx}: no such open transaction")
        binding = self._binding(msg.cid)
        if binding is None:
            return self._err("unknown-cid", f"GRADUAL on cid {msg.cid}: send CONN first")
        return self._apply(binding, tx, msg)

    def _release(self, msg: c.Message) -> bytes:
        assert isinstance(msg, c.Release)
        binding = self._binding(msg.cid)
        if binding is None:
            return self._err("unknown-cid", f"RELEASE on cid {msg.cid}: send CONN first")
        return self._apply(binding, None, msg)

    # --- probes --------------------------------------------------------------------------------

    def _ping(self, msg: c.Message) -> bytes:
        assert isinstance(msg, c.Ping)
        return c.encode(c.Pong(msg.n))

    def _stats(self, msg: c.Message) -> bytes:
        return c.encode(c.StatsReply(self.gateway.stats.to_json()))

    # --- end -----------------------------------------------------------------------------------

    def lost(self) -> None:
        """The control connection closed: open transactions abort (``agent-lost``), guard stays."""
        for tx in [t for t in self._txs.values() if t.parent is None]:
            self._abort_tree(tx, "agent-lost")
        self._txs.clear()
        self.gateway.forget_session(self)

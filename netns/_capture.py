"""What crossed a link: TCP payload bytes per direction, captured inside a namespace.

Tests use it to prove what reached a client (or a backend) and, more often, what did not::

    with netns.capture(topo.client_ns, "eth0") as cap:
        ...                          # the client talks to vproxy
    reply = cap.from_port(80)        # every byte vproxy sent to the client, in stream order
    assert b"secret" not in reply

A raw AF_PACKET socket is opened inside the namespace (so the host's interfaces are never touched)
and read on a helper thread; frames are decoded with scapy, and each flow's segments are put in
sequence order, so retransmissions and reordering do not duplicate or shuffle bytes.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from netns._enter import call_in
from netns._errors import NetnsError

_ETH_P_ALL = 0x0003
_SOL_SOCKET_RCVBUFFORCE = 33
_FRAME_MAX = 262144  # veth hands over GSO frames up to 64 KiB; leave room


class Flow(NamedTuple):
    """One direction of one TCP connection, as the link saw it."""

    src: str
    sport: int
    dst: str
    dport: int


@dataclass
class _Stream:
    base: int | None = None  # sequence number of the first payload byte (SYN + 1 when seen)
    segments: dict[int, bytes] = field(default_factory=dict)

    def add(self, seq: int, syn: bool, payload: bytes) -> None:
        if syn:
            self.base = (seq + 1) & 0xFFFFFFFF
        if payload:
            self.segments.setdefault(seq, payload)

    def data(self) -> tuple[bytes, bool]:
        """The stream's bytes in order, and whether a hole was seen (a segment never captured)."""
        if not self.segments:
            return b"", False
        base = self.base if self.base is not None else min(self.segments)
        ordered = sorted(((s - base) & 0xFFFFFFFF, p) for s, p in self.segments.items())
        out, hole = bytearray(), False
        for offset, payload in ordered:
            if offset > len(out):
                hole = True
                out.extend(b"\0" * (offset - len(out)))
            out.extend(payload[len(out) - offset:])
        return bytes(out), hole


class Capture:
    """Frames seen on one interface of one namespace while its with-block ran."""

    def __init__(self, ns: str, iface: str) -> None:
        self.ns, self.iface = ns, iface
        self.frames = 0
        self._streams: dict[Flow, _Stream] = {}
        self._raw: list[bytes] = []

    @property
    def streams(self) -> dict[Flow, bytes]:
        """TCP payload per flow (one direction of one connection), in stream order."""
        self._decode()
        return {flow: s.data()[0] for flow, s in self._streams.items()}

    def holes(self) -> list[Flow]:
        """Flows with a sequence gap (a segment the capture missed): their bytes are incomplete."""
        self._decode()
        return [flow for flow, s in self._streams.items() if s.data()[1]]

    def to_port(self, port: int) -> bytes:
        """Every payload byte sent to TCP ``port`` (all connections, in order of first segment)."""
        return b"".join(data for flow, data in self.streams.items() if flow.dport == port)

    def from_port(self, port: int) -> bytes:
        """Every payload byte sent from TCP ``port`` (e.g. everything a server sent to clients)."""
        return b"".join(data for flow, data in self.streams.items() if flow.sport == port)

    def _decode(self) -> None:
        if not self._raw:
            return
        from scapy.layers.inet import IP, TCP  # scapy loads slowly: only when decoding
        from scapy.layers.l2 import Ether
        raw, self._raw = self._raw, []
        for frame in raw:
            pkt = Ether(frame)
            if IP not in pkt or TCP not in pkt:
                continue
            ip, tcp = pkt[IP], pkt[TCP]
            payload = bytes(tcp.payload)[: max(0, ip.len - ip.ihl * 4 - tcp.dataofs * 4)]
            flow = Flow(ip.src, int(tcp.sport), ip.dst, int(tcp.dport))
            self._streams.setdefault(flow, _Stream()).add(int(tcp.seq), bool(tcp.flags.S), payload)


def _open(ns: str, iface: str) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SOL_SOCKET_RCVBUFFORCE, 16 << 20)
            sock.bind((iface, 0))
        except OSError:
            sock.close()
            raise
        return sock
    try:
        return call_in(ns, make)
    except OSError as exc:
        raise NetnsError(f"cannot capture on {iface!r} in namespace {ns!r}: {exc} "
                         "(is the interface there? capturing needs root)") from None


@contextlib.contextmanager
def capture(ns: str, iface: str = "eth0") -> Iterator[Capture]:
    """Capture every frame on ``iface`` inside namespace ``ns`` while the with-block runs.

    Args:
        ns: the namespace's name (e.g. ``topo.client_ns``).
        iface: the interface inside it (``eth0`` in client/server/backend; in the gateway
            namespace ``client``, ``server`` or ``backend``).

    Returns:
        A Capture; read it after the block (``streams``, ``to_port``, ``from_port``, ``holes``).

    Error handling:
        A missing namespace or interface raises NetnsError before the block runs.
    """
    sock = _open(ns, iface)
    cap = Capture(ns, iface)
    stop = threading.Event()

    def reader() -> None:
        # After stop, drain what the kernel already queued: frames sent inside the block are
        # queued on this socket before the sender's syscall returns.
        while True:
            ready, _, _ = select.select([sock], [], [], 0 if stop.is_set() else 0.05)
            if not ready:
                if stop.is_set():
                    return
                continue
            cap._raw.append(sock.recv(_FRAME_MAX))
            cap.frames += 1

    thread = threading.Thread(target=reader, name=f"capture:{ns}:{iface}", daemon=True)
    thread.start()
    try:
        yield cap
    finally:
        stop.set()
        thread.join(timeout=30)
        sock.close()

"""What a gateway is told to do: its routes, its control socket and its policies (plain data)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

Protocol = Literal["http", "line", "lenpfx", "raw"]
Side = Literal["front", "back"]
OnAbort = Literal["replace", "drop", "close"]
OnBound = Literal["release", "discard", "close"]
OnRollbackInput = Literal["replay", "drop"]

PROTOCOLS: tuple[Protocol, ...] = ("http", "line", "lenpfx", "raw")


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP endpoint the gateway listens on or dials."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, *, what: str = "address") -> Address:
        """Parse ``HOST:PORT`` or ``[V6]:PORT`` (port 0 = any free port).

        Error handling:
            ValueError naming the text and the expected form.
        """
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
        else:
            host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError(f"{what} {text!r} is not HOST:PORT (e.g. 127.0.0.1:8080 or [::1]:80)")
        if not 0 <= int(port) <= 65535:
            raise ValueError(f"{what} {text!r}: port must be 0-65535")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host != "localhost":
                raise ValueError(f"{what} {text!r}: host must be an IP address") from None
            host = "127.0.0.1"
        return cls(host, int(port))


@dataclass(frozen=True, slots=True)
class Route:
    """One path through the gateway.

    ``side="front"``: clients connect to ``listen`` and the protected server is at ``upstream``
    (its output is what the gateway reads from the upstream socket). ``side="back"``: the protected
    server is the client that connects to ``listen`` and ``upstream`` is its backend (e.g. a
    ledger); its output is what the gateway reads from the accepted socket.
    """

    listen: Address
    upstream: Address
    protocol: Protocol = "raw"
    side: Side = "front"

    @classmethod
    def parse(cls, text: str, default_protocol: Protocol = "raw") -> Route:
        """Parse ``LISTEN=UPSTREAM[,PROTOCOL][,back]``.

        Error handling:
            ValueError naming the bad part and the expected form.
        """
        listen, sep, rest = text.partition("=")
        if not sep:
            raise ValueError(f"route {text!r} is not LISTEN=UPSTREAM[,PROTOCOL][,back]")
        upstream, *opts = rest.split(",")
        protocol: Protocol = default_protocol
        side: Side = "front"
        for opt in opts:
            if opt in PROTOCOLS:
                protocol = opt
            elif opt in ("front", "back"):
                side = opt  # type: ignore[assignment]
            else:
                raise ValueError(f"route {text!r}: unknown option {opt!r} "
                                 f"(protocols: {', '.join(PROTOCOLS)}; sides: front, back)")
        return cls(Address.parse(listen, what="listen address"),
                   Address.parse(upstream, what="upstream address"), protocol, side)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything ``vproxy.serve`` needs.

    Args:
        routes: the paths to relay (at least one).
        control: path of the control Unix socket, or None for a plain relay without a healer.
        control_user: user that owns the control socket and token (e.g. ``www-data``), or None.
        on_abort: what replaces an aborted transaction's output: a protocol error (``replace``),
            nothing (``drop``), or closing the connection (``close``).
        on_rollback_input: input an aborted transaction read is sent to the server again
            (``replay``, at most ``replay_budget`` times per connection) or forgotten (``drop``).
        hold_bytes / hold_ms: bounds of a hold on one connection; ``on_bound`` resolves it.
        http_status: status of the HTTP replacement (500 or 503).
    """

    routes: tuple[Route, ...]
    control: str | None = None
    control_user: str | None = None
    on_abort: OnAbort = "replace"
    on_rollback_input: OnRollbackInput = "drop"
    replay_budget: int = 1
    hold_bytes: int = 4 << 20
    hold_ms: float = 10_000.0
    on_bound: OnBound = "close"
    http_status: int = 503

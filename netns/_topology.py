"""The namespace layout of a protected server: client, gateway, server and backend.

::

    client ns            gateway ns (vproxy)             server ns             backend ns
    eth0 10.231.1.2 ── client  10.231.1.1
                         server  10.231.2.1 ─────────── eth0 10.231.2.2
                         backend 10.231.3.1 ────────────────────────────────── eth0 10.231.3.2

The gateway namespace forwards nothing (``ip_forward=0``) and the client, server and backend
namespaces have no route beyond their own link: the server can reach only the gateway's address on
its link, where vproxy listens, so every byte in or out of it crosses vproxy. ``routed=True`` adds
routes and kernel forwarding; it exists only for the benchmark's native baseline.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pyroute2 import NetNS
from pyroute2 import netns as _pyroute2_netns
from pyroute2.netlink.exceptions import NetlinkError

from netns._enter import call_in, exists, pids_in, require_root
from netns._errors import NetnsError

PREFIX = "sead"
ROLES = ("client", "gw", "server", "backend")
# role -> (gateway-side interface name, subnet's first three octets)
_LINKS = {"client": ("client", "10.231.1"), "server": ("server", "10.231.2"),
          "backend": ("backend", "10.231.3")}
_counter = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Topology:
    """Names and addresses of one built layout. Namespaces are ``<name>-<role>``."""

    name: str
    routed: bool = False

    def ns(self, role: str) -> str:
        """The namespace of ``role`` (client, gw, server or backend)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        return f"{self.name}-{role}"

    @property
    def client_ns(self) -> str:
        return self.ns("client")

    @property
    def gw_ns(self) -> str:
        return self.ns("gw")

    @property
    def server_ns(self) -> str:
        return self.ns("server")

    @property
    def backend_ns(self) -> str:
        return self.ns("backend")

    # Addresses: <role>_addr is the role's own address on its link; gw_<role>_addr is the gateway's
    # address on that link (where vproxy listens for that side).
    client_addr = "10.231.1.2"
    server_addr = "10.231.2.2"
    backend_addr = "10.231.3.2"
    gw_client_addr = "10.231.1.1"
    gw_server_addr = "10.231.2.1"
    gw_backend_addr = "10.231.3.1"
    #: the interface names: eth0 in client/server/backend; client/server/backend in the gateway
    peer_ifname = "eth0"

    def namespaces(self) -> list[str]:
        return [self.ns(role) for role in ROLES]


def unique_name(prefix: str = PREFIX) -> str:
    """A topology name unique to this process and call (prefix, pid, counter)."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


def _set_forwarding(ns: str, on: bool) -> None:
    def write() -> None:
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1\n" if on else "0\n")
    call_in(ns, write)


def _build(topo: Topology) -> None:
    for ns in topo.namespaces():
        if not exists(ns):
            _pyroute2_netns.create(ns)
        with NetNS(ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    with NetNS(topo.gw_ns) as gw:
        for role, (gw_if, net) in _LINKS.items():
            if not gw.link_lookup(ifname=gw_if):
                gw.link("add", ifname=gw_if, kind="veth",
                        peer={"ifname": topo.peer_ifname, "net_ns_fd": topo.ns(role)})
            idx = gw.link_lookup(ifname=gw_if)[0]
            if not gw.get_addr(index=idx, address=f"{net}.1"):
                gw.addr("add", index=idx, address=f"{net}.1", prefixlen=24)
            gw.link("set", index=idx, state="up")
    for role, (_gw_if, net) in _LINKS.items():
        with NetNS(topo.ns(role)) as ipr:
            idx = ipr.link_lookup(ifname=topo.peer_ifname)[0]
            if not ipr.get_addr(index=idx, address=f"{net}.2"):
                ipr.addr("add", index=idx, address=f"{net}.2", prefixlen=24)
            ipr.link("set", index=idx, state="up")
            if topo.routed:
                with contextlib.suppress(NetlinkError):  # already there: up is idempotent
                    ipr.route("add", dst="default", gateway=f"{net}.1")
    _set_forwarding(topo.gw_ns, topo.routed)


def up(name: str, *, routed: bool = False) -> Topology:
    """Build (or complete) the layout called ``name`` and return it. Idempotent.

    Error handling:
        Not root raises NotRootError; a netlink failure raises NetnsError naming the step, after
        removing what was built (a half-built layout is never left behind).
    """
    require_root("building network namespaces")
    topo = Topology(name, routed)
    try:
        _build(topo)
    except (OSError, NetlinkError) as exc:
        down(name)
        raise NetnsError(f"building topology {name!r} failed: {exc}; run as root with iproute2 "
                         "installed; 'python -m netns status' shows what exists") from None
    return topo


def down(name: str, *, grace: float = 2.0) -> list[str]:
    """Remove every namespace of layout ``name`` and return the names removed. Idempotent.

    Processes still running in those namespaces (a server a test forgot, a crashed gateway) get
    SIGTERM, then SIGKILL after ``grace`` seconds: a namespace with a live process would outlive
    its name. Namespaces already gone are skipped, so this also cleans a half-built layout.
    """
    require_root("removing network namespaces")
    topo = Topology(name)
    present = [ns for ns in topo.namespaces() if exists(ns)]
    _kill_all([pid for ns in present for pid in pids_in(ns)], grace)
    removed = []
    for ns in present:
        try:
            _pyroute2_netns.remove(ns)
            removed.append(ns)
        except FileNotFoundError:  # another teardown got there first
            continue
        except OSError as exc:
            raise NetnsError(f"removing namespace {ns!r} failed: {exc}") from None
    return removed


def _kill_all(pids: list[int], grace: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                alive.append(pid)
        deadline = time.monotonic() + grace
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in alive if os.path.exists(f"/proc/{pid}")
                     and not _is_zombie(pid)]
            time.sleep(0.05)
        pids = alive
        if not pids:
            return


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def existing(prefix: str = PREFIX) -> dict[str, list[str]]:
    """Layouts present now: topology name -> its namespaces that exist."""
    found: dict[str, list[str]] = {}
    for ns in sorted(_pyroute2_netns.listnetns()):
        base, _, role = ns.rpartition("-")
        if ns.startswith(prefix + "-") and role in ROLES:
            found.setdefault(base, []).append(ns)
    return found


@contextlib.contextmanager
def topology(name: str | None = None, *, routed: bool = False) -> Iterator[Topology]:
    """Build a layout for the with-block and remove it (and every process left in it) afterwards,
    also when the block raises or is interrupted. ``name`` defaults to a unique one."""
    name = name or unique_name()
    try:
        yield up(name, routed=routed)
    finally:
        down(name)

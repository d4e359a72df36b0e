"""Network namespaces (pyroute2) so that the protected server's only way in or out is the gateway.

Public front::

    with netns.topology() as topo:               # client, gw, server, backend namespaces
        apache = popen_in(topo.server_ns, [...])  # a program inside a namespace
        sock = netns.socket_in(topo.client_ns)    # a Python socket inside a namespace
        with netns.capture(topo.client_ns, "eth0") as cap:
            ...                                   # traffic
        cap.to_port(80), cap.from_port(80)        # TCP payload bytes that crossed the link

``python -m netns up|down|status`` does the same from a shell. Layout and addresses: ``_topology``.
"""

from netns._capture import Capture, Flow, capture
from netns._enter import (
                          argv_in,
                          call_in,
                          exists,
                          pids_in,
                          popen_in,
                          run_in,
                          socket_in,
                          wait_listening,
)
from netns._errors import NetnsError, NotRootError
from netns._gateway import Gateway, gateway, start_gateway, vproxy_argv
from netns._topology import ROLES, Topology, down, existing, topology, unique_name, up

__all__ = [
    "ROLES",
    "Capture",
    "Flow",
    "Gateway",
    "NetnsError",
    "NotRootError",
    "Topology",
    "argv_in",
    "call_in",
    "capture",
    "down",
    "existing",
    "exists",
    "gateway",
    "pids_in",
    "popen_in",
    "run_in",
    "socket_in",
    "start_gateway",
    "topology",
    "unique_name",
    "up",
    "vproxy_argv",
    "wait_listening",
]

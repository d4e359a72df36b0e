"""The errors the netns package raises: OSError from netlink or /proc is translated here, once."""

from __future__ import annotations


class NetnsError(RuntimeError):
    """Building, entering or tearing down a namespace failed; the message says why and the fix."""


class NotRootError(NetnsError):
    """Namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN): run it as root, "
                         "e.g. with sudo")

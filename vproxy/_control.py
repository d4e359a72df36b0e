"""The control socket: a Unix stream socket (mode 0600) plus its pairing token file.

Each accepted control connection gets its own ``ControlSession``; a bad HELLO is answered with
``ERR`` and that connection is closed while traffic and the other controllers go on.
"""

from __future__ import annotations

import os
import pwd
import secrets
import socket
import stat
from typing import TYPE_CHECKING

import structlog
import trio

from vproxy._session import ControlSession

if TYPE_CHECKING:
    from vproxy._gateway import Gateway

log = structlog.get_logger("vproxy.control")


class ControlSocketError(Exception):
    """The control socket could not be set up; the message names the path and the fix."""


def open_control(path: str, user: str | None) -> tuple[trio.socket.SocketType, str]:
    """Create the listening control socket and write ``PATH.token``, both mode 0600.

    Args:
        path: where the socket goes; a stale socket there is replaced, any other file is not.
        user: owner of both files (e.g. ``www-data``), or None to keep root.

    Returns:
        (listening trio socket, token).

    Error handling:
        ControlSocketError when the path is taken by a non-socket, the directory is missing or
        not writable, or the user does not exist.
    """
    uid = gid = -1
    if user is not None:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise ControlSocketError(f"--control-user {user!r} is not a user on this system; "
                                     "give an existing user name") from None
        uid, gid = entry.pw_uid, entry.pw_gid
    try:
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise ControlSocketError(f"{path} exists and is not a socket; remove it or choose "
                                         "another --control path")
            os.unlink(path)
        token = secrets.token_hex(16)
        token_path = path + ".token"
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.chmod(token_path, 0o600)
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.bind(path)
        sock = trio.socket.from_stdlib_socket(raw)
        os.chmod(path, 0o600)  # before listen(): nobody can connect while it is wider
        if user is not None:
            os.chown(path, uid, gid)
            os.chown(token_path, uid, gid)
        sock.listen(64)
    except OSError as exc:
        raise ControlSocketError(f"cannot create control socket {path}: {exc.strerror or exc}; "
                                 "check that the directory exists and is writable") from None
    return sock, token


async def serve_control(gateway: Gateway, sock: trio.socket.SocketType, token: str) -> None:
    """Accept control connections forever, one task each."""
    async with trio.open_nursery() as nursery:
        while True:
            conn, _ = await sock.accept()
            nursery.start_soon(_session, gateway, conn, token)


async def _session(gateway: Gateway, conn: trio.socket.SocketType, token: str) -> None:
    session = ControlSession(gateway, token)
    with conn:
        try:
            while not session.closed:
                # small reads: a long batch of lines is applied in slices, with the relay tasks
                # scheduled in between (one 64 KiB read of events stalled traffic for ~40 ms)
                data = await conn.recv(4096)
                try:
                    answer = session.receive_data(data)
                except Exception:  # a bug here must not take the gateway's traffic down
                    log.exception("control session failed; closing this control connection")
                    break
                while answer:
                    answer = answer[await conn.send(answer):]
                if not data:
                    break
        except OSError as exc:
            log.info("control connection lost", cause=exc.strerror or str(exc))
        finally:
            if session.hello is None and session.closed:
                gateway.stats.refused_controllers += 1
            else:
                try:
                    session.lost()
                except Exception:
                    log.exception("aborting a lost controller's transactions failed")

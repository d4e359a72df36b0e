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

from vproxy import _sockio
from vproxy._session import ControlSession

if TYPE_CHECKING:
    from vproxy._gateway import Gateway
    from vproxy._threadrelay import ThreadRelay

log = structlog.get_logger("vproxy.control")

_READ = 4096  # bytes of control lines applied per read (see ``_Channel``)


class ControlSocketError(Exception):
    """The control socket could not be set up; the message names the path and the fix."""


def open_control(path: str, user: str | None) -> tuple[socket.socket, str]:
    """Create the listening control socket and write ``PATH.token``, both mode 0600.

    Args:
        path: where the socket goes; a stale socket there is replaced, any other file is not.
        user: owner of both files (e.g. ``www-data``), or None to keep root.

    Returns:
        (listening non-blocking socket, token).

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
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind(path)
        os.chmod(path, 0o600)  # before listen(): nobody can connect while it is wider
        if user is not None:
            os.chown(path, uid, gid)
            os.chown(token_path, uid, gid)
        sock.listen(64)
    except OSError as exc:
        raise ControlSocketError(f"cannot create control socket {path}: {exc.strerror or exc}; "
                                 "check that the directory exists and is writable") from None
    return sock, token


async def serve_control(gateway: Gateway, sock: socket.socket, token: str) -> None:
    """Accept control connections forever, one task each (their lines are read and applied by
    the gateway's relay thread, ``_Channel``; the task sends answers and cleans up)."""
    async with trio.open_nursery() as nursery:
        while True:
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS
                log.warning("control accept failed", cause=exc.strerror or str(exc))
                await trio.sleep(0.05)  # do not spin while out of file descriptors
                continue
            conn.setblocking(False)
            nursery.start_soon(_session, gateway, conn, token)


class _Channel:
    """One control connection as the relay thread serves it: ``readable`` reads once and applies
    the lines (a read of at most ``_READ`` bytes, so a long batch of lines is applied in slices
    with the traffic served in between: one 64 KiB read of events stalled traffic for ~40 ms);
    answers and the end are left to the connection's task in trio (``wake``)."""

    __slots__ = ("answers", "ended", "relay", "session", "sock", "wake")

    def __init__(self, sock: socket.socket, session: ControlSession, relay: ThreadRelay) -> None:
        self.sock = sock
        self.session = session
        self.relay = relay
        self.answers = bytearray()  # to send, in order
        self.ended = False
        self.wake = trio.Event()

    def _wake_task(self) -> None:
        self.wake.set()  # (the task replaces ``wake`` each time it woke)

    def readable(self) -> None:
        try:
            data = self.sock.recv(_READ)
        except BlockingIOError:
            return
        except OSError as exc:
            log.info("control connection lost", cause=exc.strerror or str(exc))
            data = b""
        try:
            self.answers += self.session.receive_data(data)
        except Exception:  # a bug here must not take the gateway's traffic down
            log.exception("control session failed; closing this control connection")
            data = b""
        if not data or self.session.closed:
            self.ended = True
            self.relay.unwatch(self.sock)  # now: an EOF would be reported again and again
            self.relay.turns.soon(self._wake_task)
        elif self.answers:
            self.relay.turns.soon(self._wake_task)


async def _session(gateway: Gateway, conn: socket.socket, token: str) -> None:
    channel = _Channel(conn, ControlSession(gateway, token), gateway.relay)
    session = channel.session
    try:
        gateway.relay.watch(conn, channel.readable)
        try:
            while True:
                await channel.wake.wait()
                channel.wake = trio.Event()
                if channel.answers:
                    answers = bytes(channel.answers)
                    channel.answers.clear()
                    await _sockio.send_all(conn, answers)
                if channel.ended:
                    break
        finally:
            gateway.relay.unwatch(conn)
    except OSError as exc:
        log.info("control connection lost", cause=exc.strerror or str(exc))
    finally:
        trio.lowlevel.notify_closing(conn)
        conn.close()
        if session.hello is None and session.closed:
            gateway.stats.refused_controllers += 1
        else:
            try:
                session.lost()
            except Exception:
                log.exception("aborting a lost controller's transactions failed")

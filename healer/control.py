"""Host-to-healer control: ``healer status/reload/detach/alert/inject PID`` talk to the ``healer
attach``/``healer run`` process that owns the Frida session of PID.

Transport: a Unix stream socket ``$SEAD_RUN_DIR/healer-PID.sock`` (default ``/run/sead``; the
directory is made mode 0700 and the socket 0600, so only the same user, normally root, can
connect). One JSON object a line each way: a request ``{"op": "status"|"reload"|"detach"|
"alert"|"inject", ...}`` and one answer ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
import trio

from healer.errors import HealerError

log = structlog.get_logger("healer.control")
MAX_LINE = 1 << 20
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def run_dir() -> Path:
    return Path(os.environ.get("SEAD_RUN_DIR", "/run/sead"))


def socket_path(pid: int) -> Path:
    return run_dir() / f"healer-{pid}.sock"


async def serve(pid: int, handler: Handler, *,
                task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve control requests for ``pid`` until cancelled; the socket is removed on exit.

    Error handling:
        HealerError when the socket cannot be created (unwritable run directory, another healer
        already serving this pid).
    """
    path = socket_path(pid)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if _alive(path):
            raise HealerError(f"another healer already controls pid {pid} ({path}); detach it "
                              f"first with 'healer detach {pid}'")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            await sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(16)
    except OSError as exc:
        raise HealerError(f"cannot create the control socket {path}: {exc.strerror}; set "
                          "SEAD_RUN_DIR to a writable directory") from None
    listener = trio.SocketListener(sock)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(path)
            while True:
                stream = await listener.accept()
                nursery.start_soon(_one, stream, handler)
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        sock.close()


def _alive(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


async def _one(stream: trio.SocketStream, handler: Handler) -> None:
    async with stream:
        buf = b""
        with trio.move_on_after(30):
            while b"\n" not in buf and len(buf) < MAX_LINE:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buf += chunk
        try:
            request = json.loads(buf.split(b"\n", 1)[0])
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise ValueError("not a request object")
        except ValueError as exc:
            answer: dict[str, Any] = {"ok": False, "error": f"malformed request: {exc}"}
        else:
            try:
                answer = {"ok": True, "result": await handler(request)}
            except HealerError as exc:
                answer = {"ok": False, "error": str(exc)}
        # Shielded: a `detach` answer must still go out while its handler cancels the healer.
        with trio.CancelScope(shield=True), trio.move_on_after(5), contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(json.dumps(answer, default=str).encode() + b"\n")


def request(pid: int, op: str, timeout: float = 30.0, **fields: Any) -> Any:
    """Send one request to the healer controlling ``pid`` and return its result (blocking).

    Error handling:
        HealerError when no healer controls pid, the socket is not permitted, the healer does
        not answer in time, or it answered with an error.
    """
    path = socket_path(pid)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise HealerError(f"no healer controls pid {pid} (no {path}); start one with "
                              f"'healer attach {pid}'") from None
        except PermissionError:
            raise HealerError(f"not permitted to use {path}; run as the user that started the "
                              "healer (normally root)") from None
        s.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except TimeoutError:
        raise HealerError(f"the healer of pid {pid} did not answer within {timeout:g} s") from None
    except OSError as exc:
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            raise HealerError(f"the healer of pid {pid} closed the connection") from None
        raise HealerError(f"cannot talk to the healer of pid {pid}: {exc.strerror}") from None
    finally:
        s.close()
    try:
        answer = json.loads(buf)
    except ValueError:
        raise HealerError(f"the healer of pid {pid} sent no answer (it may have exited)") from None
    if not answer.get("ok"):
        raise HealerError(str(answer.get("error")))
    return answer.get("result")

"""Apache (``apache2 -X``) as a Smart Error Virtualization target: the request path's functions,
their return types (for vanilla error virtualization's return-type heuristic), training and replay
request sets, and a server whose ``exchange`` answers like ``targets.kv_server.KvServer``'s.

::

    httpd = HttpdServer.start()          # apache2 -X on a free loopback port
    httpd.exchange(EVAL_REQUESTS)        # ["200 <body digest>", "404 ...", ...]; None if dead/hung
    httpd.stop()

Requests share a keep-alive connection while the server keeps it open (a heal that breaks a
connection shows in the replies after it); a reply is the status code and a digest of the body,
the externally visible behaviour the SEV paper's level 3 compares (headers carry the date and are
left out).
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable, Sequence

from targets import apache

RETURN_TYPES: dict[str, str] = {
    # httpd 2.4's declarations (include/http_*.h, httpd.h, util_filter.h): 'int' (a status, flag
    # or count; apr_status_t too), 'ptr' (a pointer), 'void'
    "ap_read_request": "ptr", "ap_parse_uri": "void", "ap_getword_white": "ptr",
    "ap_getword": "ptr", "ap_getword_nc": "ptr", "ap_unescape_url": "int",
    "ap_set_keepalive": "int", "ap_meets_conditions": "int", "ap_process_request": "void",
    "ap_process_request_internal": "int", "ap_getparents": "void", "ap_is_url": "int",
    "ap_count_dirs": "int", "ap_rgetline_core": "int", "ap_discard_request_body": "int",
    "ap_run_translate_name": "int", "ap_run_map_to_storage": "int", "ap_run_handler": "int",
    "ap_run_fixups": "int", "ap_run_type_checker": "int", "ap_run_access_checker": "int",
    "ap_run_check_user_id": "int", "ap_run_auth_checker": "int",
    "ap_run_post_read_request": "int", "ap_run_header_parser": "int",
    "ap_run_log_transaction": "int", "ap_core_translate": "int", "ap_directory_walk": "int",
    "ap_location_walk": "int", "ap_file_walk": "int", "ap_is_initial_req": "int",
    "ap_some_auth_required": "int", "ap_update_mtime": "void", "ap_set_content_length": "void",
    "ap_set_etag": "void", "ap_send_error_response": "void", "ap_die": "void",
    "ap_pass_brigade": "int", "ap_get_brigade": "int", "ap_method_number_of": "int",
    "ap_setup_client_block": "int", "ap_should_client_block": "int",
    "ap_sub_req_lookup_uri": "ptr", "ap_run_sub_req": "int", "ap_destroy_sub_req": "void",
    "ap_internal_redirect": "void", "ap_index_of_response": "int",
    "ap_http_header_filter": "int", "ap_byterange_filter": "int",
    "ap_content_length_filter": "int", "ap_core_output_filter": "int",
    "ap_core_input_filter": "int",
}
"""Every function profiled and failed on Apache, with its C return type class."""

FUNCTIONS = tuple(RETURN_TYPES)

LIBRARY_CALLS = tuple(
    [f"libapr-1!apr_{n}" for n in ("stat", "file_open", "file_close", "file_read",
                                    "filepath_merge", "table_get", "socket_recv", "socket_sendv",
                                    "dir_open", "dir_read", "pstrcat")]
    + [f"libaprutil-1!apr_{n}" for n in ("uri_parse", "brigade_create", "bucket_file_create",
                                         "date_parse_http")]
    + [f"libc!{n}" for n in ("read", "writev", "open64", "close", "fstatat64", "strcasecmp")])
"""Library calls of the request path (APR, libc) that profile mode can add to the windows
(``lib!name``): the STEM paper's profiler saw library calls too."""

MANUAL_PATHS = ("/manual/", "/manual/index.html", "/manual/en/mod/", "/manual/en/howto/cgi.html",
                "/manual/images/", "/manual/en/mod/core.html", "/manual/en/mod/mod_alias.html")
BAD_REQUESTS = ("GET /manual/nothere.html HTTP/1.0", "GET /manual/../../etc/passwd HTTP/1.0",
                "GET /manual/%zz HTTP/1.0", "GET /manual/%2e%2e/ HTTP/1.0",
                "GET /manual/%00 HTTP/1.0", "GARBAGE", "GET /manual/ HTTP/9.9",
                "BREW /manual/ HTTP/1.0", "GET manual HTTP/1.0", "POST /manual/ HTTP/1.0")
"""Malformed or refused requests: 404, 400, 403, 405, 501 answers (SEV's "failure dynamics")."""

EVAL_REQUESTS = ("GET /manual/ HTTP/1.1", "GET /manual/nothere.html HTTP/1.1",
                 "GET /manual/en/mod/ HTTP/1.1", "GET /manual/%zz HTTP/1.1",
                 "GET /manual/images/ HTTP/1.1", "GARBAGE", "GET /manual/ HTTP/1.1")
"""The replayed sequence: normal pages and bad requests interleaved on keep-alive connections
(Apache closes one after a 400), none with a query string (training requests carry one, so no
evaluated request is a training request)."""


def training_requests(rounds: int) -> list[str]:
    """Every manual page and bad request ``rounds`` times, each with its own query string;
    HTTP/1.1 (keep-alive) and HTTP/1.0 alternate by round."""
    out = []
    for r in range(rounds):
        out += [f"GET {p}?r={r} HTTP/1.{1 - r % 2}" for p in MANUAL_PATHS]
        out += list(BAD_REQUESTS)
    return out


class _Closed(Exception):
    """The server closed the connection before the first byte of a reply."""


class _Reader:
    """Replies read off one connection: status line, headers, a body delimited by
    Content-Length, chunked encoding or the end of the connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        self.buf += chunk
        return bool(chunk)

    def _take(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not self._more():
                return None
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes | None:
        while b"\r\n" not in self.buf:
            if not self._more():
                return None
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self) -> tuple[str, bool]:
        """(``"<status> <body length> <body digest>"``, whether the connection stays open).

        Error handling: _Closed when nothing arrived; socket.timeout propagates."""
        while b"\r\n\r\n" not in self.buf:
            if not self._more():
                if not self.buf:
                    raise _Closed
                return f"cut {len(self.buf)} {_digest(self.buf)}", False
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ")
        code = status[1].decode(errors="replace") if len(status) > 1 else "?"
        headers = {k.strip().lower(): v.strip().lower()
                   for k, _, v in (ln.partition(b":") for ln in lines[1:])}
        keep = headers.get(b"connection") != b"close"
        body: bytes | None
        if headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while (size := self._line()) is not None and (n := int(size.split(b";")[0], 16)):
                part = self._take(n + 2)
                if part is None:
                    break
                body += part[:-2]
            else:
                if size is not None and self._line() is not None:  # the trailer's empty line
                    return f"{code} {len(body)} {_digest(body)}", keep
            return f"{code} cut {len(body)} {_digest(body)}", False
        if b"content-length" in headers:
            body = self._take(int(headers[b"content-length"]))
            if body is None:
                return f"{code} cut {len(self.buf)} {_digest(self.buf)}", False
            return f"{code} {len(body)} {_digest(body)}", keep
        while self._more():
            pass
        body, self.buf = self.buf, b""
        return f"{code} {len(body)} {_digest(body)}", False


def _digest(body: bytes) -> str:
    return hashlib.sha1(body).hexdigest()[:12]


class HttpdServer:
    """``apache2 -X`` serving the manual on a free loopback port; ``stop()`` kills it."""

    def __init__(self, httpd: apache.Apache) -> None:
        self.httpd = httpd

    @classmethod
    def start(cls) -> HttpdServer:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        return cls(apache.start(port=port, workers=0))

    @property
    def pid(self) -> int:
        return self.httpd.pid

    def exchange(self, requests: Sequence[str], timeout: float = 3.0,
                 pause: tuple[int, Callable[[], None]] | None = None) -> list[str] | None:
        """Send the requests (request lines) in order, as a browser would: on one connection
        while the server keeps it open, on a new one after it closed it (a request that finds a
        reused connection closed is sent once more on a fresh one).

        Args:
            pause: ``(k, fn)``: call ``fn()`` once the first ``k`` requests are answered.

        Returns:
            ``"<status> <body length> <body digest>"`` per request (``"closed"`` when the server
            closed a fresh connection without a reply, ``cut`` in it when a reply broke off), or
            None as soon as a connection is refused or a reply does not come within ``timeout``
            (the server died or hangs).
        """
        out = []
        reader: _Reader | None = None
        try:
            for i, line in enumerate(requests):
                if pause is not None and i == pause[0]:
                    pause[1]()
                for _attempt in range(2):
                    fresh = reader is None
                    if reader is None:
                        reader = _Reader(socket.create_connection(
                            (self.httpd.host, self.httpd.port), timeout=timeout))
                    try:
                        reader.sock.sendall(line.encode() + b"\r\nHost: localhost\r\n\r\n")
                        reply, keep = reader.reply()
                    except (_Closed, BrokenPipeError, ConnectionResetError):
                        reply, keep = "closed", False
                    if not keep:
                        reader.sock.close()
                        reader = None
                    if reply != "closed" or fresh:
                        break
                out.append(reply)
        except OSError:  # refused, or a timeout: dead or hanging
            return None
        finally:
            if reader is not None:
                reader.sock.close()
        return out

    def stop(self) -> None:
        self.httpd.stop()

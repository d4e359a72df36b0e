"""targets/apache.py runs Debian's apache2 from a generated config inside a namespace."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import netns
from targets import apache


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def _get(ns: str, host: str, port: int, path: str) -> bytes:
    sock = netns.socket_in(ns)
    sock.settimeout(10)
    with sock:
        sock.connect((host, port))
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = bytearray()
        while chunk := sock.recv(65536):
            data.extend(chunk)
    return bytes(data)


def test_config_touches_nothing_under_etc(tmp_path: Path) -> None:
    text = apache.render_config(tmp_path, listen="10.0.0.1:8080", workers=0)
    assert "Listen 10.0.0.1:8080" in text and "mpm_prefork" in text  # -X: one thread
    etc = [line for line in text.splitlines() if "/etc/" in line]
    assert etc == ["TypesConfig /etc/mime.types"]  # read-only use of the MIME table
    assert "MaxRequestWorkers 4" in apache.render_config(tmp_path, listen=":1", workers=4)


def test_single_process_serves_the_manual_only_inside_its_namespace(
        topo: netns.Topology) -> None:
    with apache.running(host=topo.server_addr, port=8080, ns=topo.server_ns) as httpd:
        assert httpd.worker_pids() == []
        assert _uid(httpd.pid) != 0, "-X as root must still switch to www-data"
        assert netns.pids_in(topo.server_ns) == [httpd.pid]
        reply = _get(topo.server_ns, topo.server_addr, 8080, "/manual/en/bind.html")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert body == (apache.MANUAL / "en" / "bind.html").read_bytes()
        sock = netns.socket_in(topo.client_ns)
        sock.settimeout(2)
        with sock, pytest.raises(OSError) as exc:
            sock.connect((topo.server_addr, 8080))
        assert exc.value.errno == errno.ENETUNREACH
    assert netns.pids_in(topo.server_ns) == []
    assert not httpd.root.exists()


def test_prefork_runs_exactly_n_children_and_stops_them_all(topo: netns.Topology) -> None:
    with apache.running(host=topo.server_addr, port=8080, ns=topo.server_ns,
                        workers=3) as httpd:
        children = httpd.worker_pids()
        assert len(children) == 3
        assert all(_uid(pid) != 0 for pid in children)
        assert sorted(netns.pids_in(topo.server_ns)) == sorted([httpd.pid, *children])
        for _ in range(6):  # several connections: each may land on another child
            assert _get(topo.server_ns, topo.server_addr, 8080, "/manual/").startswith(
                b"HTTP/1.1 200")
    assert netns.pids_in(topo.server_ns) == []


def test_a_port_in_use_is_a_clear_error(topo: netns.Topology) -> None:
    with apache.running(host=topo.server_addr, port=8080, ns=topo.server_ns):
        with pytest.raises(apache.ApacheError, match="already in use"):
            apache.start(host=topo.server_addr, port=8080, ns=topo.server_ns)
        assert len(netns.pids_in(topo.server_ns)) == 1  # the failed one left nothing behind

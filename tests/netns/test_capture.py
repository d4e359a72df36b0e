"""netns.capture returns exactly the TCP payload that crossed a link, per direction."""

from __future__ import annotations

import os
import threading

import pytest

import netns

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


@needs_root
def test_capture_returns_each_direction_in_order(topo: netns.Topology) -> None:
    upload = os.urandom(1 << 20)  # large enough for many segments, GSO frames, window updates
    reply = b"ok:" + os.urandom(5000)
    srv = netns.socket_in(topo.gw_ns)
    srv.bind((topo.gw_client_addr, 0))
    srv.listen()
    port = srv.getsockname()[1]
    got = bytearray()

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            while len(got) < len(upload):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                got.extend(chunk)
            conn.sendall(reply)

    server = threading.Thread(target=serve, daemon=True)
    with netns.capture(topo.client_ns, "eth0") as cap:
        server.start()
        cli = netns.socket_in(topo.client_ns)
        cli.settimeout(10)
        with cli:
            cli.connect((topo.gw_client_addr, port))
            cli.sendall(upload)
            received = bytearray()
            while len(received) < len(reply):
                chunk = cli.recv(65536)
                assert chunk, "server closed early"
                received.extend(chunk)
        server.join(timeout=10)
    srv.close()
    assert bytes(got) == upload and bytes(received) == reply
    assert cap.holes() == []
    assert cap.to_port(port) == upload
    assert cap.from_port(port) == reply
    assert len([f for f in cap.streams if port in (f.sport, f.dport)]) == 2


@needs_root
def test_capture_sees_nothing_that_did_not_cross(topo: netns.Topology) -> None:
    # traffic on the backend link is not on the client link
    srv = netns.socket_in(topo.gw_ns)
    srv.bind((topo.gw_backend_addr, 0))
    srv.listen()
    with netns.capture(topo.client_ns, "eth0") as cap:
        cli = netns.socket_in(topo.backend_ns)
        cli.settimeout(5)
        cli.connect((topo.gw_backend_addr, srv.getsockname()[1]))
        cli.sendall(b"backend-only secret")
        conn, _ = srv.accept()
        assert conn.recv(100) == b"backend-only secret"
        conn.close()
        cli.close()
    srv.close()
    assert all(b"secret" not in data for data in cap.streams.values())


def test_capture_in_a_missing_namespace_is_a_clear_error() -> None:
    with pytest.raises(netns.NetnsError, match="does not exist"), \
            netns.capture("seadtest-no-such-ns", "eth0"):
        pass

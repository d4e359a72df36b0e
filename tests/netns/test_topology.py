"""The layout isolates the server: its only peer is the gateway; building and removal are robust."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyroute2 import NetNS
from pyroute2 import netns as pyroute2_netns

import netns
from netns.__main__ import main as netns_main

REPO = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def _listen(ns: str, host: str) -> tuple[object, int]:
    srv = netns.socket_in(ns)
    srv.bind((host, 0))
    srv.listen()
    return srv, srv.getsockname()[1]


def _connect_error(ns: str, host: str, port: int) -> int | None:
    sock = netns.socket_in(ns)
    sock.settimeout(1.0)
    try:
        sock.connect((host, port))
        return None
    except TimeoutError:
        return errno.ETIMEDOUT
    except OSError as exc:
        return exc.errno
    finally:
        sock.close()


@needs_root
def test_server_reaches_only_the_gateway(topo: netns.Topology) -> None:
    for ns, host in [(topo.client_ns, topo.client_addr), (topo.backend_ns, topo.backend_addr),
                     (topo.gw_ns, topo.gw_client_addr), (topo.gw_ns, topo.gw_backend_addr)]:
        srv, port = _listen(ns, host)
        with srv:  # type: ignore[attr-defined]
            assert _connect_error(topo.server_ns, host, port) == errno.ENETUNREACH, host
    srv, port = _listen(topo.gw_ns, topo.gw_server_addr)
    with srv:  # type: ignore[attr-defined]
        assert _connect_error(topo.server_ns, topo.gw_server_addr, port) is None
    # and nobody outside reaches the server except through the gateway
    srv, port = _listen(topo.server_ns, topo.server_addr)
    with srv:  # type: ignore[attr-defined]
        assert _connect_error(topo.client_ns, topo.server_addr, port) == errno.ENETUNREACH
        assert _connect_error(topo.backend_ns, topo.server_addr, port) == errno.ENETUNREACH


@needs_root
def test_gateway_forwards_nothing_even_if_the_server_adds_a_route(topo: netns.Topology) -> None:
    """Fail closed: a compromised server with its own default route still gets nowhere."""
    with NetNS(topo.server_ns) as ipr, NetNS(topo.client_ns) as cli:
        ipr.route("add", dst="default", gateway=topo.gw_server_addr)
        cli.route("add", dst="default", gateway=topo.gw_client_addr)
    srv, port = _listen(topo.client_ns, topo.client_addr)
    with srv:  # type: ignore[attr-defined]
        assert _connect_error(topo.server_ns, topo.client_addr, port) is not None


@needs_root
def test_routed_layout_forwards_for_the_native_baseline() -> None:
    with netns.topology(netns.unique_name("seadtest"), routed=True) as topo:
        srv, port = _listen(topo.server_ns, topo.server_addr)
        with srv:  # type: ignore[attr-defined]
            assert _connect_error(topo.client_ns, topo.server_addr, port) is None


@needs_root
def test_up_and_down_are_idempotent() -> None:
    name = netns.unique_name("seadtest")
    try:
        first = netns.up(name)
        assert netns.up(name) == first
        assert sorted(netns.existing("seadtest")[name]) == sorted(first.namespaces())
        assert sorted(netns.down(name)) == sorted(first.namespaces())
        assert netns.down(name) == []
        assert name not in netns.existing("seadtest")
    finally:
        netns.down(name)


@needs_root
def test_down_cleans_a_half_built_layout_and_its_processes() -> None:
    name = netns.unique_name("seadtest")
    topo = netns.Topology(name)
    pyroute2_netns.create(topo.gw_ns)
    pyroute2_netns.create(topo.server_ns)
    sleeper = netns.popen_in(topo.server_ns, ["sleep", "60"])
    try:
        for _ in range(200):  # `ip netns exec` enters the namespace just after the fork
            if netns.pids_in(topo.server_ns):
                break
            time.sleep(0.01)
        assert netns.pids_in(topo.server_ns) == [sleeper.pid]
        assert sorted(netns.down(name)) == sorted([topo.gw_ns, topo.server_ns])
        assert sleeper.wait(timeout=10) != 0
        assert name not in netns.existing("seadtest")
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)
        netns.down(name)


@needs_root
def test_context_manager_removes_the_layout_when_the_block_fails() -> None:
    name = netns.unique_name("seadtest")
    with pytest.raises(RuntimeError, match="boom"), netns.topology(name):
        assert name in netns.existing("seadtest")
        raise RuntimeError("boom")
    assert name not in netns.existing("seadtest")


def test_unique_names_differ_and_carry_the_pid() -> None:
    a, b = netns.unique_name("x"), netns.unique_name("x")
    assert a != b and str(os.getpid()) in a


def test_not_root_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(netns.NotRootError, match="needs root"):
        netns.up("seadtest-never")
    assert netns_main(["up", "--name", "seadtest-never"]) == 1
    err = capsys.readouterr().err
    assert "needs root" in err and "Traceback" not in err


@needs_root
def test_cli_up_status_down() -> None:
    name = netns.unique_name("seadcli")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "netns", *args], cwd=REPO, text=True,
                              capture_output=True, timeout=60)
    try:
        up = cli("up", "--name", name)
        assert up.returncode == 0, up.stderr
        assert "10.231.2.2/24" in up.stdout
        status = cli("status", "--prefix", "seadcli")
        assert f"{name}-server" in status.stdout and "missing" not in status.stdout
        assert cli("down", "--name", name).returncode == 0
        assert "nothing to remove" in cli("down", "--name", name).stdout
        assert name not in netns.existing("seadcli")
    finally:
        netns.down(name)

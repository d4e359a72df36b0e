"""End to end: the whole Apache manual crosses the gateway complete and byte-identical.

Real namespaces, Debian's apache2 in the server namespace, ``vproxy serve`` in the gateway
namespace, wget in the client namespace. The reference is the same Apache crawled from inside its
own namespace (no gateway). One full crawl each way: a few seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import netns
from targets import apache

REPO = Path(__file__).resolve().parents[2]


def _have(package: str, command: str) -> bool:
    return subprocess.run([sys.executable, "-m", package, command, "--help"], cwd=REPO,
                          capture_output=True, timeout=60).returncode == 0


@pytest.fixture
def shm() -> Iterator[Path]:
    """wget's output on a tmpfs: on disk, writing and deleting 70 MB dominates the crawl."""
    path = Path(tempfile.mkdtemp(prefix="sead-test-", dir="/dev/shm"))
    path.chmod(0o711)  # Apache's workers (www-data) reach the control socket inside
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _crawl(ns: str, url: str, out: Path) -> dict[str, bytes]:
    proc = netns.run_in(ns, ["wget", "-r", "-np", "-nH", "-q", "-P", str(out), url],
                        timeout=120, check=False)
    assert proc.returncode in (0, 8), proc.stderr  # 8: the manual links to absent translations
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_manual_crosses_the_gateway_complete_and_byte_identical(
        topo: netns.Topology, shm: Path) -> None:
    if not _have("vproxy", "serve"):
        pytest.skip("`vproxy serve` has not landed yet")
    control = shm / "ctl.sock"
    with apache.running(host=topo.server_addr, port=8080, ns=topo.server_ns) as httpd, \
            netns.gateway(topo, listen=(topo.gw_client_addr, 80),
                          upstream=(topo.server_addr, 8080), control=control,
                          extra=["--protocol", "http", "--control-user", "www-data"],
                          log=subprocess.DEVNULL):
        direct = _crawl(topo.server_ns, f"http://{topo.server_addr}:8080/manual/", shm / "d")
        before = len((httpd.root / "access.log").read_text().splitlines())
        via = _crawl(topo.client_ns, f"http://{topo.gw_client_addr}/manual/", shm / "g")
        access = (httpd.root / "access.log").read_text().splitlines()[before:]
    assert len(direct) > 2500, "the reference crawl itself is incomplete"
    assert sorted(via) == sorted(direct)
    differing = [name for name in direct if via[name] != direct[name]]
    assert differing == []
    assert via["manual/index.html"] == (apache.MANUAL / "index.html").read_bytes()
    # every request of the second crawl reached Apache from the gateway's address, none directly
    assert len(access) >= len(via)
    assert {line.split()[0] for line in access} == {topo.gw_server_addr}

"""End to end: the whole Apache manual crosses the gateway complete and byte-identical, with the
healer attached and every request a transaction whose output the gateway holds until it commits.

Real namespaces, Debian's apache2 (``-X``) in the server namespace, ``vproxy serve`` in the gateway
namespace, ``healer attach`` on the host, wget in the client namespace. The reference is the same
Apache crawled from inside its own namespace (no gateway). One full crawl each way.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import netns
from demo.stack import REPO, have, healer_attached
from targets import apache

# Apache -X (prefork, one thread) serves every request through this function: supervising it
# makes each request one transaction. (COSAK, ~175 supervised calls a request, is what
# bench/wget_manual.py measures.)
SUPERVISED = "ap_process_request"


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


def _agent_status(pid: int) -> dict[str, dict]:
    """The agent's status (``healer status PID``): its plugins' counters."""
    out = subprocess.run([sys.executable, "-m", "healer", "status", str(pid)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout)["agents"][str(pid)])


def _gateway_stats(control: Path) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-m", "vproxy", "stats", "--control", str(control),
                          "--json"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_manual_crosses_the_guarded_gateway_complete_and_byte_identical(
        topo: netns.Topology, shm: Path) -> None:
    if not (have("vproxy", "serve") and have("healer", "attach")):
        pytest.skip("`vproxy serve` or `healer attach` has not landed yet")
    control = shm / "ctl.sock"
    coverage = shm / "supervised.txt"
    coverage.write_text(SUPERVISED + "\n")
    with apache.running(host=topo.server_addr, port=8080, ns=topo.server_ns) as httpd, \
            netns.gateway(topo, listen=(topo.gw_client_addr, 80),
                          upstream=(topo.server_addr, 8080), control=control,
                          extra=["--protocol", "http", "--control-user", "www-data"],
                          log=subprocess.DEVNULL):
        direct = _crawl(topo.server_ns, f"http://{topo.server_addr}:8080/manual/", shm / "d")
        before = len((httpd.root / "access.log").read_text().splitlines())
        with healer_attached(httpd.pid, control, shm / "healer.log",
                             "--coverage", f"list:{coverage}"):
            via = _crawl(topo.client_ns, f"http://{topo.gw_client_addr}/manual/", shm / "g")
            status = _agent_status(httpd.pid)
            stats = _gateway_stats(control)
        wire, memlog = status["wire"], status["memlog"]
        access = (httpd.root / "access.log").read_text().splitlines()[before:]
        assert httpd.proc.poll() is None, "Apache died under the healer"
    assert len(direct) > 2500, "the reference crawl itself is incomplete"
    assert sorted(via) == sorted(direct)
    differing = [name for name in direct if via[name] != direct[name]]
    assert differing == []
    assert via["manual/index.html"] == (apache.MANUAL / "index.html").read_bytes()
    # every request of the second crawl reached Apache from the gateway's address, none directly
    assert len(access) >= len(via)
    assert {line.split()[0] for line in access} == {topo.gw_server_addr}
    # and every request transaction that moved bytes was announced to the gateway, which held
    # its output until its commit (the agent announces a transaction at its first socket I/O:
    # a request whose reply Apache writes after the function returned has nothing to announce)
    assert 0 < wire["announced"] == wire["commits"]
    assert int(stats["committed"]) >= wire["commits"]  # type: ignore[call-overload]
    assert int(stats["aborted"]) == 0  # type: ignore[call-overload]
    # the memory log followed Apache's thread with Frida's inline caches widened, and the hooks'
    # stubs and Interceptor's thunks left uninstrumented (20_memlog.js): what the wget
    # benchmark's speed rests on
    assert memlog["threads"] == 1 and memlog["logged"] > 0
    assert memlog["fridaPatches"]["icEntries"] == 32, memlog["fridaPatches"]
    assert len(memlog["interceptorThunks"]) == 2 and memlog["stubs"] > 0, memlog
    assert memlog["fridaCalls"] > 0, memlog

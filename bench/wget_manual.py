"""Table 1 of the STEM paper: ``wget -r`` of the Apache manual, native and through the gateway.

Apache (``-X``, one process, as in the paper) serves ``/manual/`` in the server namespace of a
routed layout; wget runs in the client namespace and writes to a tmpfs. Configurations, run
alternately (A B C ... A B C ...) so that drift on the shared machine hits them all alike:

- ``native``: through the gateway namespace's kernel routing (same links, no proxy);
- ``haproxy-tcp``: haproxy in TCP mode, one thread (the reference proxy);
- ``vproxy-pass``: ``vproxy serve --protocol http --control ..`` with no healer paired
  (pass-through);
- ``vproxy-none|cosak|all``: a second, identical gateway with ``healer attach --coverage X``
  paired (the healer's detach sends UNGUARD: the gateway is back to pass-through in between);
- ``vproxy-request``: the same with ``--coverage list:`` ``ap_process_request``: each
  request is one transaction whose output the gateway holds until it commits;
  ``vproxy-request-nolog`` the same without the memory log (``--disable-plugin memlog``), to see
  what the log costs; ``vproxy-cosak-nolog`` likewise for COSAK.

Each guarded crawl gets a freshly started Apache (attached after its start-up, as in the paper),
so the native and proxy baselines run on an Apache the healer never touched; whether Apache
survives the healer's detach is recorded, and so are the agent's counters per request (``healer
status`` before and after the crawl: supervised calls, control lines and flushes, transactions
announced to the gateway, stores logged). Before a guarded configuration is timed, one request must
come back through it within 30 s; otherwise it is reported as not available with what happened.

Prints a table like the paper's (seconds, ms per request, slowdown), writes
``bench/results/wget_manual.json`` and ``.png``, and the time ``healer attach`` takes on a running
Apache. A configuration whose parts do not exist yet is reported as ``not available: <why>``.

    python -m bench wget_manual
    python -m bench.wget_manual --rounds 5 --configs native,vproxy-pass
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netns
from bench._proc import stop
from demo.stack import HealerError, have, healer_attached, http_get
from targets import apache

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("native", "haproxy-tcp", "vproxy-pass", "vproxy-none", "vproxy-request",
           "vproxy-request-nolog", "vproxy-cosak", "vproxy-cosak-nolog", "vproxy-all")
GUARDED = ("vproxy-none", "vproxy-request", "vproxy-request-nolog", "vproxy-cosak",
           "vproxy-cosak-nolog", "vproxy-all")
REQUEST_FUNCTION = "ap_process_request"  # the per-request entry point of Apache -X (prefork)
PORTS = {"haproxy-tcp": 8081, "vproxy-pass": 8082, "vproxy-guarded": 8083}
VPROXY_FLAGS = ("--protocol", "http", "--control-user", "www-data")
APACHE_PORT = 8080
GUARDED_APACHE_PORT = 8090  # a fresh Apache per guarded crawl: Frida never touches the baseline
PAPER = "Apache 2.0.53: 74.85% slowdown under STEM; 2.2.4: 72.54% (~4100 files, ~72 MB)"


class NotAvailable(Exception):
    """A configuration cannot run here; the message says why."""


@dataclass
class Crawl:
    seconds: float
    requests: int
    files: int
    bytes: int
    wget_status: int
    apache_cpu: float  # seconds of CPU Apache used during the crawl
    proxy_cpu: float | None  # the same for the proxy process (None: no proxy)


@dataclass
class Config:
    name: str
    reason: str = ""  # set when not available
    crawls: list[Crawl] = field(default_factory=list)
    attach_seconds: list[float] = field(default_factory=list)
    survived_detach: list[bool] = field(default_factory=list)  # Apache alive after the detach
    per_request: dict[str, float] = field(default_factory=dict)  # agent counters, last crawl
    ic_entries: list[int] = field(default_factory=list)  # Stalker's inline cache, each round


def _cpu(pid: int | None) -> float:
    """User+system CPU seconds of ``pid`` and its reaped children so far (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _crawl(topo: netns.Topology, httpd: apache.Apache, target: tuple[str, int | None],
           out: Path) -> Crawl:
    url, proxy = target
    shutil.rmtree(out, ignore_errors=True)
    before = _lines(httpd.root / "access.log")
    cpu_apache, cpu_proxy = _cpu(httpd.pid), _cpu(proxy)
    start = time.perf_counter()
    proc = netns.run_in(topo.client_ns, ["wget", "-r", "-np", "-nH", "-q", "-P", str(out), url],
                        timeout=600, check=False)
    seconds = time.perf_counter() - start
    cpu_apache, cpu_proxy = _cpu(httpd.pid) - cpu_apache, _cpu(proxy) - cpu_proxy
    files = [p for p in out.rglob("*") if p.is_file()]
    # wget exits 8 for the manual's 404s (links to absent translations): not a failure
    return Crawl(seconds, _lines(httpd.root / "access.log") - before, len(files),
                 sum(p.stat().st_size for p in files), proc.returncode, cpu_apache,
                 cpu_proxy if proxy is not None else None)


def _lines(path: Path) -> int:
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        return sum(1 for _ in f)
    return 0


@contextlib.contextmanager
def _haproxy(topo: netns.Topology, workdir: Path) -> Iterator[tuple[str, int | None]]:
    if not shutil.which("haproxy"):
        raise NotAvailable("haproxy is not installed (apt-get install haproxy)")
    cfg = workdir / "haproxy.cfg"
    listen = (topo.gw_client_addr, PORTS["haproxy-tcp"])
    cfg.write_text(f"""global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen manual
    bind {listen[0]}:{listen[1]}
    server apache {topo.server_addr}:{APACHE_PORT}
""")
    proc = netns.popen_in(topo.gw_ns, ["haproxy", "-db", "-f", str(cfg)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        netns.wait_listening(topo.client_ns, *listen, proc=proc)
        yield f"http://{listen[0]}:{listen[1]}/manual/", proc.pid  # ip netns exec execs haproxy
    finally:
        stop(proc)


@contextlib.contextmanager
def _vproxy(topo: netns.Topology, port: int, control: Path, log: Path,
            upstream_port: int = APACHE_PORT) -> Iterator[tuple[str, int | None]]:
    if not have("vproxy", "serve"):
        raise NotAvailable("`vproxy serve` does not exist yet")
    listen = (topo.gw_client_addr, port)
    with open(log, "ab") as out, netns.gateway(topo, listen=listen,
                                              upstream=(topo.server_addr, upstream_port),
                                              control=control, extra=VPROXY_FLAGS,
                                              log=out) as gw:
        yield f"http://{listen[0]}:{listen[1]}/manual/", gw.proc.pid


def _profile(topo: netns.Topology, httpd: apache.Apache, target: tuple[str, int | None],
             work: Path, top: int = 12) -> list[tuple[str, float]]:
    """One crawl with py-spy sampling the gateway: its leaf functions by share of busy samples."""
    _url, pid = target
    raw = work / "pyspy.txt"
    spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                            str(pid), "--format", "raw", "--rate", "250", "--nonblocking",
                            "-o", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    try:
        _crawl(topo, httpd, target, work / "wget")
    finally:
        spy.send_signal(2)
        spy.wait(30)
    leaves: dict[str, int] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            leaf = stack.rsplit(";", 1)[-1]
            leaves[leaf] = leaves.get(leaf, 0) + int(count)
    total = sum(leaves.values()) or 1
    return [(leaf, round(100 * n / total, 1))
            for leaf, n in sorted(leaves.items(), key=lambda kv: -kv[1])[:top]]


def _server(name: str) -> str:
    """Which running thing a configuration crawls: native, haproxy-tcp, vproxy-pass or -guarded."""
    return "vproxy-guarded" if name in GUARDED else name


def _healer_flags(name: str, work: Path) -> list[str]:
    """The ``healer attach`` flags of a guarded configuration."""
    nolog = ["--disable-plugin", "memlog"] if name.endswith("-nolog") else []
    if name.startswith("vproxy-request"):
        listed = work / "request.txt"
        listed.write_text(REQUEST_FUNCTION + "\n")
        return ["--coverage", f"list:{listed}", *nolog]
    return ["--coverage", name.removeprefix("vproxy-").removesuffix("-nolog"), *nolog]


def _round(cfg: Config, topo: netns.Topology, httpd: apache.Apache,
           urls: dict[str, tuple[str, int | None]], control: Path, work: Path) -> None:
    out = work / "wget"
    target = urls[_server(cfg.name)]
    if cfg.name not in GUARDED:
        cfg.crawls.append(_crawl(topo, httpd, target, out))
        return
    with apache.running(host=topo.server_addr, port=GUARDED_APACHE_PORT,
                        ns=topo.server_ns) as fresh:
        _guarded_crawl(cfg, topo, fresh, target, control, work)
        time.sleep(0.5)  # a crash the detach caused shows within this
        cfg.survived_detach.append(fresh.proc.poll() is None)


AGENT_COUNTERS = {"supervised_calls": ("txn", "supervisedCalls"), "wire_lines": ("wire", "lines"),
                  "wire_flushes": ("wire", "flushes"), "announced": ("wire", "announced"),
                  "logged_stores": ("memlog", "logged")}


def _agent_status(pid: int) -> dict[str, Any]:
    """The agent's status in ``pid`` (``healer status``); empty if unavailable."""
    out = subprocess.run([sys.executable, "-m", "healer", "status", str(pid)], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        return {}
    return dict(json.loads(out.stdout).get("agents", {}).get(str(pid), {}))


def _agent_counters(agent: dict[str, Any]) -> dict[str, float]:
    """The cumulative counters of AGENT_COUNTERS in an agent's status."""
    return {name: float(agent.get(part, {}).get(key, 0))
            for name, (part, key) in AGENT_COUNTERS.items()}


def _guarded_crawl(cfg: Config, topo: netns.Topology, httpd: apache.Apache,
                   target: tuple[str, int | None], control: Path, work: Path) -> None:
    out = work / "wget"
    try:
        with healer_attached(httpd.pid, control, work / "healer.log",
                             *_healer_flags(cfg.name, work)) as healer:
            cfg.attach_seconds.append(healer.ready_seconds)
            probe = http_get(topo.client_ns, topo.gw_client_addr, PORTS["vproxy-guarded"],
                             "/manual/", timeout=30)
            if not probe.startswith(b"HTTP/1.1 200"):
                raise NotAvailable(f"a request through the guarded gateway got {probe[:40]!r} "
                                   "(held output never committed; see the gateway log)")
            before = _agent_counters(_agent_status(httpd.pid))
            cfg.crawls.append(_crawl(topo, httpd, target, out))
            status = _agent_status(httpd.pid)
            after = _agent_counters(status)
            if "memlog" in status:  # 0 when the agent could not widen Stalker's inline caches
                cfg.ic_entries.append(int(status["memlog"]["fridaPatches"]["icEntries"]))
            requests = max(cfg.crawls[-1].requests, 1)
            cfg.per_request = {k: round((after[k] - before.get(k, 0)) / requests, 2)
                               for k in after}
    except OSError as exc:  # the probe timed out or was reset
        raise NotAvailable(f"a request through the guarded gateway failed: {exc} (held output "
                           "never committed; see the gateway log)") from None
    except HealerError as exc:
        raise NotAvailable(str(exc).splitlines()[0]) from None


def run(names: list[str], rounds: int,
        profile: bool = False) -> tuple[list[Config], dict[str, Any]]:
    """Measure ``names`` for ``rounds`` alternating rounds; returns configs and facts.

    With ``profile``, one more crawl through vproxy (no healer) under py-spy: ``facts`` gets the
    gateway's hottest leaf functions."""
    configs = [Config(n) for n in names]
    work = Path(tempfile.mkdtemp(prefix="sead-wget-", dir="/dev/shm"))
    work.chmod(0o711)  # the agent in Apache (www-data) connects to the control socket inside
    facts: dict[str, Any] = {}
    try:
        with contextlib.ExitStack() as stack:
            topo = stack.enter_context(netns.topology(netns.unique_name("seadbench"),
                                                      routed=True))
            httpd = stack.enter_context(apache.running(host=topo.server_addr, port=APACHE_PORT,
                                                       ns=topo.server_ns))
            facts["apache"] = subprocess.run([apache.APACHE2, "-v"], capture_output=True,
                                             text=True).stdout.splitlines()[0]
            control = work / "ctl.sock"
            urls: dict[str, tuple[str, int | None]] = {
                "native": (f"http://{topo.server_addr}:{APACHE_PORT}/manual/", None)}
            starters = {
                "haproxy-tcp": lambda: _haproxy(topo, work),
                "vproxy-pass": lambda: _vproxy(topo, PORTS["vproxy-pass"], work / "pass.sock",
                                               work / "vproxy-pass.log"),
                "vproxy-guarded": lambda: _vproxy(topo, PORTS["vproxy-guarded"], control,
                                                  work / "vproxy-guarded.log",
                                                  GUARDED_APACHE_PORT),
            }
            guarded = [c for c in configs if c.name in GUARDED]
            wanted = {_server(c.name) for c in configs}
            reasons: dict[str, str] = {}
            for key, starter in starters.items():
                if key in wanted:
                    try:
                        urls[key] = stack.enter_context(starter())
                    except (NotAvailable, netns.NetnsError) as exc:
                        reasons[key] = str(exc)
            if guarded and "vproxy-guarded" not in reasons and not have("healer", "attach"):
                reasons["healer"] = "`healer attach` does not exist yet"
            for c in configs:
                c.reason = reasons.get(_server(c.name), "") or \
                    (reasons.get("healer", "") if c in guarded else "")
            _crawl(topo, httpd, urls["native"], work / "wget")  # warm the page cache
            for _ in range(rounds):
                for c in configs:
                    if c.reason:
                        continue
                    try:
                        _round(c, topo, httpd, urls, control, work)
                    except (NotAvailable, netns.NetnsError) as exc:
                        c.reason = str(exc)
            if profile and "vproxy-pass" in urls:
                facts["vproxy_pass_profile_leaf_percent"] = _profile(topo, httpd,
                                                                     urls["vproxy-pass"], work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return configs, facts


def summarize(configs: list[Config], rounds: int, facts: dict[str, Any]) -> dict[str, Any]:
    by_name = {c.name: c for c in configs}
    native = by_name.get("native")
    base = statistics.median(c.seconds for c in native.crawls) if native and native.crawls \
        else None
    ref_files = native.crawls[0].files if native and native.crawls else None
    table: dict[str, Any] = {}
    for c in configs:
        if c.reason or not c.crawls:
            table[c.name] = {"available": False, "reason": c.reason or "no run"}
            continue
        med = statistics.median(x.seconds for x in c.crawls)
        requests = c.crawls[-1].requests
        entry: dict[str, Any] = {
            "available": True, "median_seconds": round(med, 4),
            "runs_seconds": [round(x.seconds, 4) for x in c.crawls],
            "requests": requests, "files": c.crawls[-1].files, "bytes": c.crawls[-1].bytes,
            "ms_per_request": round(1000 * med / max(requests, 1), 4),
            "slowdown": round(med / base, 3) if base else None,
            "complete": ref_files is None or all(x.files == ref_files for x in c.crawls),
        }
        proxy_cpu = [x.proxy_cpu for x in c.crawls if x.proxy_cpu is not None]
        entry["apache_cpu_us_per_request"] = round(
            1e6 * statistics.median(x.apache_cpu for x in c.crawls) / max(requests, 1), 1)
        entry["proxy_cpu_us_per_request"] = round(
            1e6 * statistics.median(proxy_cpu) / max(requests, 1), 1) if proxy_cpu else None
        if c.survived_detach:
            entry["apache_survived_detach"] = f"{sum(c.survived_detach)}/{len(c.survived_detach)}"
        if c.attach_seconds:
            entry["attach_seconds_median"] = round(statistics.median(c.attach_seconds), 3)
        if c.per_request:
            entry["agent_per_request"] = c.per_request
        if c.ic_entries:
            entry["stalker_ic_entries"] = c.ic_entries
        table[c.name] = entry
    return {"workload": "wget -r -np -nH of /manual/ (apache2-doc), Apache -X, wget to tmpfs",
            "rounds": rounds, "order": "alternating", "paper": PAPER, **facts,
            "configs": table}


def print_table(summary: dict[str, Any]) -> None:
    print(f"{'configuration':<20} {'seconds':>8} {'ms/req':>7} {'slowdown':>9} {'requests':>8} "
          f"{'MB':>6} {'apache µs/req':>13} {'proxy µs/req':>12} {'attach s':>8}")
    for name, e in summary["configs"].items():
        if not e["available"]:
            print(f"{name:<20} not available: {e['reason']}")
            continue
        slow = f"{100 * (e['slowdown'] - 1):+.1f}%" if e["slowdown"] else "-"
        attach = f"{e['attach_seconds_median']:.2f}" if "attach_seconds_median" in e else "-"
        flag = "" if e["complete"] else "  INCOMPLETE crawl"
        if "apache_survived_detach" in e:
            flag += f"  Apache alive after detach: {e['apache_survived_detach']}"
        if 0 in e.get("stalker_ic_entries", []):
            flag += "  (Stalker's inline cache not widened in some rounds: docs/memlog-and-wire.md)"
        proxy = "-" if e["proxy_cpu_us_per_request"] is None else \
            f"{e['proxy_cpu_us_per_request']:.0f}"
        print(f"{name:<20} {e['median_seconds']:>8.3f} {e['ms_per_request']:>7.3f} {slow:>9} "
              f"{e['requests']:>8} {e['bytes'] / 1e6:>6.1f} "
              f"{e['apache_cpu_us_per_request']:>13.0f} {proxy:>12} "
              f"{attach:>8}{flag}")
    for name, e in summary["configs"].items():
        if e.get("agent_per_request"):
            counters = ", ".join(f"{k} {v:g}" for k, v in e["agent_per_request"].items())
            print(f"  {name} per request: {counters}")
    print(f"paper: {summary['paper']}")
    for leaf, percent in summary.get("vproxy_pass_profile_leaf_percent", []):
        print(f"  vproxy pass-through, py-spy leaf {percent:5.1f}%  {leaf}")


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(summary["configs"])
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, name in enumerate(names):
        e = summary["configs"][name]
        if e["available"]:
            ax.bar(i, e["median_seconds"], color="tab:blue" if name == "native" else "tab:orange")
            label = f"{e['median_seconds']:.2f}s" + (f"\n{e['slowdown']:.2f}x"
                                                     if e["slowdown"] else "")
            ax.text(i, e["median_seconds"], label, ha="center", va="bottom", fontsize=8)
        else:
            ax.text(i, 1.0, "not\navailable", ha="center", va="bottom", fontsize=8)
    native = summary["configs"].get("native", {})
    if native.get("available"):
        for factor, what in ((1.35, "goal for COSAK 1.35x"), (1.73, "paper STEM 1.73x")):
            ax.axhline(native["median_seconds"] * factor, ls="--", lw=0.8, color="grey")
            ax.text(-0.4, native["median_seconds"] * factor, what, ha="left",
                    va="bottom", fontsize=7, color="grey")
    heights = [e["median_seconds"] for e in summary["configs"].values() if e["available"]]
    if heights and max(heights) > 10 * min(heights):
        ax.set_yscale("log")  # guarded runs can be tens of times slower: keep baselines visible
    ax.margins(y=0.2)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("wget -r /manual/ median seconds")
    ax.set_title(f"Apache manual crawl ({summary['rounds']} alternating rounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wget_manual",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated subset of {','.join(CONFIGS)}")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--profile", action="store_true",
                        help="one more crawl through vproxy under py-spy; print where it spends "
                        "its time")
    args = parser.parse_args(argv)
    names = [n for n in args.configs.split(",") if n]
    if unknown := set(names) - set(CONFIGS):
        parser.error(f"unknown configurations {sorted(unknown)}; choose from {', '.join(CONFIGS)}")
    if os.geteuid() != 0:
        print("wget_manual: needs root (network namespaces): run it as root", file=sys.stderr)
        return 1
    try:
        configs, facts = run(names, args.rounds, args.profile)
    except (netns.NetnsError, apache.ApacheError) as exc:
        print(f"wget_manual: {exc}", file=sys.stderr)
        return 1
    summary = summarize(configs, args.rounds, facts)
    print_table(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wget_manual.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, args.out / "wget_manual.png")
    print(f"wrote {args.out / 'wget_manual.json'} and {args.out / 'wget_manual.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

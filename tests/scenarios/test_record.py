"""``vproxy record``: recorded traffic replays to the same result on fresh servers."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path

import trio

from vproxy import _cmd_record
from vproxy import scenario as sc

HERE = Path(__file__).resolve().parent

SEQUENTIAL = """\
scenario: to-record
accounts:
  alice: {password: wonderland, balance: 100}
  bob: {password: builder, balance: 50}
  carol: {password: carrots, balance: 0}
conversations:
  - name: first
    steps:
      - send: LOGIN alice wonderland
        expect: OK welcome alice
      - send: "XFER r1 bob 30 rent #1"
        expect: [RECEIPT r1 alice bob 30, DONE r1 balance 70 rent]
  - name: second
    after: first
    steps:
      - send: LOGIN bob ${Z*20}
        expect: ERR denied
      - send: LOGIN bob builder
        expect: OK welcome bob
      - send: XFER r1 carol 80 all of it
        expect: [RECEIPT r1 bob carol 80, DONE r1 balance 0 general]
      - send: QUIT
        expect: BYE
        closed: true
"""


async def test_recorded_traffic_replays_on_fresh_servers(servers: sc.Servers,
                                                         tmp_path: Path) -> None:
    live = sc.parse(SEQUENTIAL, "live.yaml")
    endpoints = sc.start_direct(servers, live)
    args = argparse.Namespace(listen=("127.0.0.1", 0),
                              front=("127.0.0.1", int(endpoints.front_name.split(":")[1])),
                              ledger=("127.0.0.1", int(endpoints.ledger_name.split(":")[1])),
                              name="recorded", conversations=2, duration=20.0)
    texts: list[str] = []

    async def recording(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        texts.append(await _cmd_record.record(args, task_status=task_status))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(recording)
            through = sc.Endpoints(sc.tcp_opener("127.0.0.1", port), endpoints.ledger,
                                   f"127.0.0.1:{port}", endpoints.ledger_name)
            live_outcome = await sc.run_scenario(live, through)
    assert live_outcome.passed, sc.render(live_outcome)

    path = tmp_path / "recorded.yaml"
    path.write_text(texts[0])
    recorded = sc.load(path)
    assert {a.name: (a.password, a.balance) for a in recorded.accounts} == {
        "alice": ("wonderland", 100), "bob": ("builder", 50), "carol": ("unknown-carol", 0)}
    assert recorded.final_balances == {"alice": 70, "bob": 0, "carol": 80}
    c1, c2 = recorded.conversations
    assert c2.after == (c1.name,)
    assert "${Z*20}" in path.read_text()  # long runs are written compactly
    assert c2.steps[-1].closed and [e.text for e in c2.steps[-1].expect] == ["BYE"]

    # Replay the recording against a fresh pair of servers: same replies, same final balances.
    with sc.Servers() as fresh:
        outcome = await sc.run_scenario(recorded, sc.start_direct(fresh, recorded))
        outcome.notes += fresh.notes()
    assert outcome.passed, sc.render(outcome, verbose=True)
    assert outcome.after.balances == recorded.final_balances


def test_record_cli_writes_a_loadable_scenario(servers: sc.Servers, tmp_path: Path) -> None:
    live = sc.parse(SEQUENTIAL, "live.yaml")
    endpoints = sc.start_direct(servers, live)
    out = tmp_path / "rec.yaml"
    recorder = servers.start("record", [
        sys.executable, "-m", "vproxy", "--log-json", "record", "--listen", "127.0.0.1:0",
        "--front", endpoints.front_name, "--ledger", endpoints.ledger_name, "-o", str(out),
        "--conversations", "1"], ready=None)
    port = _listening_port(recorder)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"LOGIN carol nope\nQUIT\n")
        client.settimeout(5)
        replies = b""
        while chunk := client.recv(4096):  # bounded: payfront closes after BYE, timeout 5 s
            replies += chunk
    assert replies == b"ERR denied\nBYE\n"
    assert recorder.proc.wait(timeout=20) == 0
    recorded = sc.load(out)
    [conv] = recorded.conversations
    assert [s.send for s in conv.steps] == ["LOGIN carol nope", "QUIT"]
    assert conv.steps[-1].closed and recorded.final_balances == {"alice": 100, "bob": 50,
                                                                 "carol": 0}


def _listening_port(recorder: sc.Started) -> int:
    # The recorder logs {"event": "recording", "listen": "127.0.0.1:PORT"} on stderr.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        recorder.stderr.seek(0)
        for line in recorder.stderr.read().splitlines():
            if b'"recording"' in line:
                return int(json.loads(line)["listen"].rsplit(":", 1)[1])
        assert recorder.proc.poll() is None, "vproxy record exited early"
        time.sleep(0.05)
    raise AssertionError("vproxy record did not log its listening address")

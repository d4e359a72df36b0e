"""The profile plugin inside the full healer agent: `healer attach --profile`, `healer inject`."""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from healer.profile import load, save
from targets.kv_server import KvServer

Events = Callable[[], list[dict[str, Any]]]

def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stops a healer process: SIGTERM, SIGKILL after 15 s, always reaped."""
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)



@pytest.fixture
def attached(kv, trained, tmp_path) -> Iterator[tuple[Events, dict[str, str]]]:
    """`healer attach KV --coverage all --profile FILE`, stopped in teardown."""
    save(trained, tmp_path / "kv.prof")
    env = dict(os.environ, SEAD_RUN_DIR=str(tmp_path))
    log = tmp_path / "healer.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "healer", "--log-json", "attach",
                                 str(kv.pid), "--coverage", "all", "--profile",
                                 str(tmp_path / "kv.prof")], env=env, stderr=err,
                                stdout=subprocess.DEVNULL)

    def events() -> list[dict[str, Any]]:
        out = []
        for line in log.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line still being written
                out.append(json.loads(line))
        return out

    try:
        for _ in range(150):
            if any(e.get("event") == "healer ready" for e in events()) or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert any(e.get("event") == "healer ready" for e in events()), log.read_text()
        yield events, env
    finally:
        _stop(proc)


def test_inject_in_the_full_agent_heals_with_the_profile_value(kv, trained, attached):
    events, env = attached
    assert kv.exchange(["RESET", "SET alpha 1"]) == ["RESET", "STORED"]
    r = subprocess.run([sys.executable, "-m", "healer", "inject", str(kv.pid), "--function",
                        "find_slot"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    replies = kv.exchange(["GET alpha", "COUNT"])
    assert replies is not None and len(replies) == 2  # the server answered both and lives
    injected: list[dict[str, Any]] = []
    for _ in range(50):
        injected = [e for e in events() if e.get("event") == "inject"]
        if injected:
            break
        time.sleep(0.1)
    assert len(injected) == 1, events()
    ev = injected[0]
    assert ev["function"] == "find_slot" and ev["selected"] == "profile"
    assert ev["why"].startswith("context: P(")  # the window was found in the profile
    assert int(ev["value"]) in trained.functions["find_slot"].values
    assert kv.proc.poll() is None
    assert Path(env["SEAD_RUN_DIR"]).is_dir()


def test_profile_settings_turn_on_anomaly_alerts_in_healer_attach(kv, record, tmp_path):
    rnd = random.Random(7)
    normal = ["RESET"] + [rnd.choice([f"SET k{rnd.randrange(9)} {rnd.randrange(99)}",
                                      f"GET k{rnd.randrange(9)}", "COUNT"]) for _ in range(300)]
    trainer = KvServer.start()
    try:
        save(record(trainer, normal), tmp_path / "normal.prof")
    finally:
        trainer.stop()
    heal = [sys.executable, "-m", "healer"]
    bad = subprocess.run([*heal, "profile", "set", str(tmp_path / "normal.prof"),
                          "--function-strategy", "find_slot=best"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown scheduling strategy 'best'" in bad.stderr
    ok = subprocess.run([*heal, "profile", "set", str(tmp_path / "normal.prof"),
                         "--anomaly-width", "2", "--function-strategy", "find_slot=first"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert load(tmp_path / "normal.prof").settings["anomaly_width"] == 2
    with _attached(kv, tmp_path / "normal.prof") as log:
        kv.exchange(normal[:100])
        assert kv.exchange(["GET bad!"]) == ["ERROR bad key"]
        anomaly = _wait(log, lambda e: e.get("event") == "anomaly")
        assert anomaly is not None, log.read_text()
        assert anomaly["function"] == "send_reply"
        assert anomaly["window"] == ["key_valid", "parse_command"]
        alerts = [e for e in _events(log) if e.get("event") == "anomaly"]
        assert len(alerts) == 1  # the training traffic raised none


@contextlib.contextmanager
def _attached(kv: KvServer, profile: Path) -> Iterator[Path]:
    """`healer attach --coverage all --profile` on kv, ready; yields its JSON log, stops it."""
    log = profile.parent / "healer.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "healer", "--log-json", "attach",
                                 str(kv.pid), "--coverage", "all", "--profile", str(profile)],
                                env=dict(os.environ, SEAD_RUN_DIR=str(profile.parent)),
                                stderr=err, stdout=subprocess.DEVNULL)
    try:
        assert _wait(log, lambda e: e.get("event") == "healer ready"), log.read_text()
        yield log
    finally:
        _stop(proc)


def _events(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line still being written
            out.append(json.loads(line))
    return out


def _wait(log: Path, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    for _ in range(150):
        for e in _events(log):
            if pred(e):
                return e
        time.sleep(0.1)
    return None


def test_fixed_value_setting_heals_with_that_value_in_healer_attach(kv, trained, tmp_path):
    save(trained, tmp_path / "kv.prof")
    heal = [sys.executable, "-m", "healer"]
    bad = subprocess.run([*heal, "profile", "set", str(tmp_path / "kv.prof"), "--fixed-value",
                          "zero"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "give an integer" in bad.stderr
    ok = subprocess.run([*heal, "profile", "set", str(tmp_path / "kv.prof"), "--fixed-value", "0"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    env = dict(os.environ, SEAD_RUN_DIR=str(tmp_path))
    with _attached(kv, tmp_path / "kv.prof") as log:
        r = subprocess.run([*heal, "inject", str(kv.pid), "--function", "key_valid"], env=env,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        # key_valid ran and accepted "good"; the fixed 0 it was made to return means "invalid"
        assert kv.exchange(["RESET", "SET good 1", "COUNT"]) == ["RESET", "ERROR bad key",
                                                                 "COUNT 0"]
        ev = _wait(log, lambda e: e.get("event") == "inject")
        assert ev is not None, log.read_text()
        assert (ev["function"], ev["selected"], ev["value"]) == ("key_valid", "fixed", "0")

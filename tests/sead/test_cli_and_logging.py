"""The shared CLI frame and logging set-up, exercised through the real entry points."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import structlog

from sead.cli import CliError, run_cli
from sead.logging import configure_logging


@pytest.mark.parametrize("prog", ["vproxy", "healer"])
def test_help_lists_every_discovered_command(prog: str) -> None:
    proc = subprocess.run([sys.executable, "-m", prog, "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "COMMAND" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_cli_error_becomes_one_line_and_status(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import sead.cli as cli

    class _Cmd:
        NAME, HELP = "boom", "fails on purpose"

        @staticmethod
        def add_arguments(parser: object) -> None:
            pass

        @staticmethod
        def run(args: object) -> int:
            raise CliError("no such pid 999999: is the server running?", status=3)

    monkeypatch.setattr(cli, "_commands", lambda package: [_Cmd])
    status = run_cli("tool", "d", "unused", ["--no-log-json", "boom"])
    err = capsys.readouterr().err
    assert status == 3
    assert err.strip() == "tool: error: no such pid 999999: is the server running?"


def test_json_logging_emits_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json=True)
    try:
        log = structlog.get_logger().bind(conn=7)
        log.debug("hidden")
        log.info("released", bytes=17)
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln]
        assert len(lines) == 1
        record = json.loads(lines[0])
        assert record["event"] == "released" and record["conn"] == 7 and record["bytes"] == 17
        assert record["level"] == "info"
    finally:
        structlog.reset_defaults()


def test_unknown_log_level_names_the_choices() -> None:
    with pytest.raises(ValueError, match="debug, info, warning, error"):
        configure_logging("loud")

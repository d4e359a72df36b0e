"""``healer policy check``: exit status, positioned messages, warnings, the compiled form."""

from __future__ import annotations

import json
from pathlib import Path

from healer.__main__ import main

FIGURE3 = Path(__file__).resolve().parents[2] / "policies" / "figure3.pol"


def test_figure3_checks_against_the_login_server(login_exe, capsys):
    assert main(["policy", "check", str(FIGURE3), "--binary", str(login_exe)]) == 0
    out = capsys.readouterr().out
    assert f"{FIGURE3}: ok: check_credentials; checked against {login_exe}" in out


def test_print_shows_the_compiled_form(capsys):
    assert main(["policy", "check", str(FIGURE3), "--print"]) == 0
    out = capsys.readouterr().out
    compiled = json.loads(out[:out.rindex("}") + 1])
    assert compiled["functions"]["check_credentials"]["rps"][0]["name"] == "FixAuth"


def test_errors_are_positioned_and_the_status_is_1(tmp_path, login_exe, capsys):
    bad = tmp_path / "bad.pol"
    bad.write_text("rp R := (rollback);\ntp check_credential :=: &R;\nivp I :=: (nope == 1);\n")
    assert main(["policy", "check", str(bad), "--binary", str(login_exe)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{bad}:2:4: error: unknown function check_credential in tp")
    assert err[1].startswith(f"{bad}:3:12: error: unknown name nope")
    assert err[2] == f"{bad}: 2 errors; the policy cannot be used"


def test_warnings_do_not_fail_the_check(tmp_path, capsys):
    warn = tmp_path / "warn.pol"
    warn.write_text("rp R := ('rvalue = 0);\ntp f :=: &R;\n")
    assert main(["policy", "check", str(warn)]) == 0
    captured = capsys.readouterr()
    assert f"{warn}:1:4: warning: rp R has no (rollback)" in captured.err
    assert "names not checked (no --binary)" in captured.out


def test_missing_binary_is_an_operator_error_not_a_traceback(tmp_path, capsys):
    assert main(["policy", "check", str(FIGURE3), "--binary", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("healer: error: ") and "no such file" in err
    assert "Traceback" not in err

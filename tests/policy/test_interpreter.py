"""30_policy.js in a real process (the login server) with a stub core: IVPs, repairs, assertions
with fallback, forbid-ev, the default tp, CDI memory, reload (docs/repair-policy.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from healer.policy import compile_text, load
from healer.policy._compile import _BINARY, _BITS, _wrap


def _compile_ops() -> list[str]:
    return list(_BINARY)


def _fold(op: str, a: int, b: int) -> int:
    return _wrap(_BINARY[op](a, b))

REPO = Path(__file__).resolve().parents[2]
RET = "0x401234"  # the return address saved at entry (the shadow stack's top)
CHECK = {"fn": "check_credentials", "ret": RET}


def test_figure3_ivp_holds_when_the_return_address_is_intact(harness, login_exe):
    h = harness()
    h.api.init({"policy": load(REPO / "policies" / "figure3.pol", binary=login_exe)})
    assert h.api.leave(CHECK, "0x1") is None


def test_figure3_ivp_fails_when_the_return_address_was_overwritten(harness, login_exe):
    h = harness()
    h.api.init({"policy": load(REPO / "policies" / "figure3.pol", binary=login_exe)})
    verdict = h.api.leave({**CHECK, "slot": "0x4141414141414141"}, "0x1")
    assert verdict == {"reason": "ivp MeasureStack failed: ('raddress=='shadowstack[0])"}


def test_figure3_repair_returns_authentication_failure(harness, login_exe):
    h = harness()
    h.api.init({"policy": load(REPO / "policies" / "figure3.pol", binary=login_exe)})
    result = h.api.heal(CHECK, "stack-chk")
    assert result["outcome"] == "repaired"
    assert result["value"] == "0"
    assert "FixAuth" in result["why"]


def test_functions_without_a_tp_are_left_to_the_profile_and_heuristic(harness, login_exe):
    h = harness()
    h.api.init({"policy": load(REPO / "policies" / "figure3.pol", binary=login_exe)})
    assert h.api.heal({"fn": "lookup", "ret": RET}, "SIGSEGV")["outcome"] == "not-policy"
    assert h.api.leave({"fn": "lookup", "ret": RET, "slot": "0x41"}, "0x0") is None


POLICY = """
symval FAIL = 0;
cdi failures : i32 @ &failed_logins;
ivp Sane :=: ('raddress == 'shadowstack[0]), (i32('rvalue) >= 0);
rp Strict := (rollback), ('rvalue = FAIL), (failures = 77),
             (assert failures == 78);              # never holds: forces the fallback
rp Counted := (rollback), ('rvalue == FAIL), (failed_logins = failures + 1),
              (assert i32('rvalue) == FAIL && failed_logins == 8);
tp check_credentials &Sane :=: &Strict, &Counted;
"""


def test_a_failed_assertion_undoes_the_rp_and_falls_back_to_the_next(harness, login_exe):
    h = harness()
    h.api.writeS32("failed_logins", 7)
    h.api.init({"policy": compile_text(POLICY, "p.pol", binary=login_exe)})
    result = h.api.heal(CHECK, "SIGSEGV")
    assert result["outcome"] == "repaired"
    assert result["reasons"] == [
        "assertion (failures == 78) of rp Strict failed after the repair"]
    assert "Counted" in result["why"]
    # Strict's write (77) was undone before Counted ran, so Counted saw the old value 7
    assert h.api.readS32("failed_logins") == 8
    assert h.logs("policy-assertion-failed")


def test_when_every_repair_fails_its_assertions_the_policy_refuses(harness, login_exe):
    h = harness()
    h.api.writeS32("failed_logins", 3)
    h.api.init({"policy": compile_text(POLICY, "p.pol", binary=login_exe)})
    result = h.api.heal(CHECK, "SIGSEGV")
    assert result["outcome"] == "refused"
    assert len(result["reasons"]) == 2
    assert "no repair of tp check_credentials held" in result["why"]
    assert h.api.readS32("failed_logins") == 3  # both rps' writes undone
    assert h.logs("policy-refuse")


def test_ivp_conditions_use_the_return_value(harness, login_exe):
    h = harness()
    h.api.init({"policy": compile_text(POLICY, "p.pol", binary=login_exe)})
    assert h.api.leave(CHECK, "0x1") is None
    verdict = h.api.leave(CHECK, "0xffffffff")  # an int -1 in eax
    assert verdict == {"reason": "ivp Sane failed: (i32('rvalue) >= 0)"}


def test_forbid_ev_refuses_instead_of_manufacturing_a_value(harness, login_exe):
    h = harness()
    text = "forbid-ev check_credentials, checkpassword;"
    h.api.init({"policy": compile_text(text, "p.pol", binary=login_exe)})
    result = h.api.heal(CHECK, "SIGSEGV")
    assert result["outcome"] == "refused"
    assert result["why"] == "check_credentials is forbid-ev"


def test_forbid_ev_still_takes_an_explicit_rvalue_from_the_policy(harness, login_exe):
    h = harness()
    text = ("rp Deny := (rollback), ('rvalue == 0);\n"
            "rp Count := (rollback), (failed_logins = 1);\n"
            "tp check_credentials :=: &Deny;\n tp checkpassword :=: &Count;\n"
            "forbid-ev check_credentials, checkpassword;")
    h.api.init({"policy": compile_text(text, "p.pol", binary=login_exe)})
    assert h.api.heal(CHECK, "SIGSEGV")["value"] == "0"
    refused = h.api.heal({"fn": "checkpassword", "ret": RET}, "SIGSEGV")
    assert refused["outcome"] == "refused"
    assert "sets no 'rvalue" in refused["why"]


def test_the_default_tp_covers_functions_without_their_own(harness, login_exe):
    h = harness()
    text = ("ivp Frame :=: ('raddress == 'shadowstack[0]), ('shadowstack[1] == 0x5000);\n"
            "rp Minus := ('rvalue = -1), ('raddress = 'shadowstack[0] + 'arg1);\n"
            "tp * &Frame :=: &Minus;")
    h.api.init({"policy": compile_text(text, "p.pol", binary=login_exe)})
    nested = {"fn": "lookup", "ret": RET, "args": ["0x10", "0x8"], "parent": {"fn": "login",
                                                                               "ret": "0x5000"}}
    assert h.api.leave(nested, "0x0") is None
    assert h.api.leave({**nested, "parent": {"fn": "login", "ret": "0x6000"}}, "0x0") == {
        "reason": "ivp Frame failed: ('shadowstack[1] == 0x5000)"}
    # 'shadowstack[1] without an enclosing transaction cannot be evaluated: the check fails
    assert h.api.leave({"fn": "lookup", "ret": RET}, "0x0") is not None
    result = h.api.heal(nested, "SIGSEGV")
    assert result["value"] == "-1"
    assert int(result["raddress"], 16) == 0x401234 + 8


def test_an_rp_that_cannot_be_applied_is_skipped(harness, login_exe):
    h = harness()
    text = ("rp Bad := (i32[0x10] = 1), ('rvalue = 5);\nrp Good := ('rvalue = 0);\n"
            "tp check_credentials :=: &Bad, &Good;")
    h.api.init({"policy": compile_text(text, "p.pol", binary=login_exe)})
    result = h.api.heal(CHECK, "SIGSEGV")
    assert result["value"] == "0"
    assert h.logs("policy-rp-failed")


def test_reload_swaps_the_policy_and_refuses_an_invalid_one(harness, login_exe):
    h = harness()
    h.api.init({"policy": load(REPO / "policies" / "figure3.pol", binary=login_exe)})
    other = compile_text("rp One := ('rvalue = 1);\ntp check_credentials :=: &One;", "one.pol")
    assert h.api.reload({"policy": other}) is None
    assert h.api.heal(CHECK, "SIGSEGV")["value"] == "1"
    # the core's reload passes the merged config: the unchanged policy is not prepared again
    assert h.api.reload({"policy": other, "coverage": {"mode": "all"}}) is None
    assert len(h.logs("policy-loaded")) == 2
    # names a symbol the process lacks: compiled without --binary, refused by the agent
    broken = compile_text("rp Two := (no_such_global = 2);\ntp check_credentials :=: &Two;",
                          "broken.pol")
    error = h.api.reload({"policy": broken})
    assert error is not None and "no_such_global" in error
    assert "previous policy stays in force" in error
    assert h.api.status()["policy"]["source"] == "one.pol"
    assert h.api.heal(CHECK, "SIGSEGV")["value"] == "1"
    refused = h.logs("policy-refused")
    assert refused and "no_such_global" in refused[0]["why"]
    assert h.api.status()["policy"]["stats"]["reloadsRefused"] == 1


@pytest.mark.parametrize("policy", [None, {"format": "something-else"}])
def test_reload_to_no_policy_or_garbage(harness, login_exe, policy):
    h = harness()
    h.api.init({"policy": load(REPO / "policies" / "figure3.pol", binary=login_exe)})
    error = h.api.reload({"policy": policy})
    if policy is None:
        assert error is None
        assert h.api.heal(CHECK, "SIGSEGV")["outcome"] == "not-policy"
    else:
        assert "not a compiled policy" in error
        assert h.api.heal(CHECK, "SIGSEGV")["value"] == "0"


def test_an_rp_reads_the_values_its_earlier_actions_set(harness, login_exe):
    h = harness()
    text = ("rp R := ('rvalue = 5), ('rvalue = 'rvalue * 2), (failed_logins = 'rvalue + 1),\n"
            "         (assert failed_logins == 11);\ntp check_credentials :=: &R;")
    h.api.init({"policy": compile_text(text, "p.pol", binary=login_exe)})
    assert h.api.heal(CHECK, "SIGSEGV")["value"] == "10"
    assert h.api.readS32("failed_logins") == 11


def test_a_policy_that_cannot_be_loaded_at_start_fails_closed(harness):
    h = harness()
    broken = compile_text("rp R := (no_such_global = 1), ('rvalue = 1);\n"
                          "tp check_credentials :=: &R;", "broken.pol")
    h.api.init({"policy": broken})
    result = h.api.heal(CHECK, "SIGSEGV")
    assert result["outcome"] == "refused"
    assert "could not be loaded" in result["why"] and "no_such_global" in result["why"]
    assert h.api.heal({"fn": "lookup", "ret": RET}, "SIGSEGV")["outcome"] == "not-policy"
    assert h.logs("policy-refused")[0]["failClosed"] == ["check_credentials"]


_EDGES = [0, 1, -1, 2, 7, -7, 63, 64, 0x7FFFFFFF, -0x80000000, (1 << 63) - 1, -(1 << 63),
          0x123456789ABCDEF, -0x0FEDCBA987654321]


def _u64(v: int) -> str:
    return hex(v & ((1 << 64) - 1))


@pytest.mark.parametrize("op", sorted(_compile_ops()))
def test_the_agent_computes_like_the_compiler(harness, op):
    """Differential: 'arg0 OP 'arg1 evaluated in the agent equals the compiler's constant folding
    (both claim C semantics on signed 64-bit values)."""
    h = harness()
    h.api.init({"policy": compile_text(f"rp R := ('rvalue = 'arg0 {op} 'arg1);\n"
                                       "tp check_credentials :=: &R;", "diff.pol")})
    for a in _EDGES:
        for b in _EDGES:
            if op in ("/", "%") and b == 0:
                continue
            got = h.api.heal({**CHECK, "args": [_u64(a), _u64(b)]}, "SIGSEGV")["value"]
            assert int(got) == _fold(op, a, b), (a, op, b)


@pytest.mark.parametrize("form", ["-{}", "~{}", "!{}", *(f"{t}({{}})" for t in sorted(_BITS))])
def test_the_agent_computes_unary_forms_like_the_compiler(harness, form):
    h = harness()
    h.api.init({"policy": compile_text(f"rp R := ('rvalue = {form.format(chr(39) + 'arg0')});\n"
                                       "tp check_credentials :=: &R;", "diff.pol")})
    for a in _EDGES:
        folded = compile_text(f"symval V = {form.format(f'({a})')};\nrp R := ('rvalue = V);\n"
                              "tp f :=: &R;")["functions"]["f"]["rps"][0]["set"][0][1]
        got = h.api.heal({**CHECK, "args": [_u64(a)]}, "SIGSEGV")["value"]
        assert got == folded[1], (form, a)


def test_the_exit_hook_is_offered_only_while_the_policy_has_ivps(harness, login_exe):
    h = harness()
    h.api.init({"policy": compile_text("rp R := ('rvalue = 0);\ntp check_credentials :=: &R;")})
    assert h.api.has_leave_hook() is False  # the core can keep supervised returns in C
    assert h.api.heal(CHECK, "SIGSEGV")["value"] == "0"
    assert h.api.reload({"policy": load(REPO / "policies" / "figure3.pol")}) is None
    assert h.api.has_leave_hook() is True
    assert h.api.reload({"policy": None}) is None
    assert h.api.has_leave_hook() is False

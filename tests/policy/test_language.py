"""The policy language in Python: every construct, every diagnostic (message snapshots), name
resolution against a real binary's symbols, and a parser that never crashes (hypothesis)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healer.policy import FORMAT, BinaryError, PolicyError, compile_text, load

REPO = Path(__file__).resolve().parents[2]
FIGURE3 = REPO / "policies" / "figure3.pol"


def test_figure3_as_printed_in_the_paper_compiles_to_its_meaning(login_exe):
    compiled = load(FIGURE3, binary=login_exe)
    assert compiled["format"] == FORMAT
    assert compiled["warnings"] == []
    assert compiled["default"] is None
    assert compiled["functions"] == {"check_credentials": {
        "ivps": [{"name": "MeasureStack", "checks": [["==", ["ra"], ["ss", 0]]],
                  "text": ["'raddress=='shadowstack[0]"]}],
        "rps": [{"name": "FixAuth", "rollback": True, "set": [[["rv"], ["k", "0"]]],
                 "assert": [], "assert_text": []}],
        "forbid_ev": False}}
    # the paper's four statements, verbatim (OCR text of Figure 3, apostrophes restored)
    assert FIGURE3.read_text().count(
        "symval AUTHENTICATION_FAILURE = 0;\n"
        "ivp MeasureStack :=: ('raddress=='shadowstack[0]);\n"
        "rp FixAuth := ('rvalue==AUTHENTICATION_FAILURE), (rollback);\n"
        "tp check_credentials &MeasureStack :=: &FixAuth;\n") == 1


def test_typographic_quotes_copied_from_the_paper_are_accepted():
    text = ("ivp M :=: (\u2018raddress == \u2019shadowstack[0]);\n"
            "rp R := (rollback);\ntp f &M :=: &R;")
    assert compile_text(text)["functions"]["f"]["ivps"][0]["checks"] == [
        ["==", ["ra"], ["ss", 0]]]


EVERYTHING = """
# hash comment
// line comment
/* block
   comment */
symval LIMIT = 0x10 * 2 + 1;          // constant folding: 33
symval NEG = -LIMIT;
cdi counter : u16 @ 0x601000 + 4;
cdi by_symbol : ptr @ &last_user;
ivp A :=: ('raddress == 'shadowstack[1]), ('arg0 != 0 || !'arg5);
ivp B :=: (u8[&last_user + 3] < 'arg2 << 2), (i32('rvalue) >= NEG);
rp R1 := (rollback), ('rvalue == NEG), (counter = counter + 1), (i64[by_symbol] = ~0),
         ('raddress = 'shadowstack[0]), (assert counter != 0 && 'rvalue == -33);
rp R2 := ('rvalue = 7 % 4 - 8 / 3);
tp target_fn &A, &B :=: &R1, &R2;
tp * :=: &R2;
forbid-ev target_fn, other_fn;
"""


def test_every_construct_compiles():
    compiled = compile_text(EVERYTHING, "all.pol")
    fn = compiled["functions"]["target_fn"]
    assert fn["forbid_ev"] is True
    assert [i["name"] for i in fn["ivps"]] == ["A", "B"]
    assert fn["ivps"][0]["checks"] == [
        ["==", ["ra"], ["ss", 1]],
        ["||", ["!=", ["arg", 0], ["k", "0"]], ["!", ["arg", 5]]]]
    assert fn["ivps"][1]["checks"] == [
        ["<", ["ld", "u8", ["+", ["sym", "last_user"], ["k", "3"]]],
         ["<<", ["arg", 2], ["k", "2"]]],
        [">=", ["cast", "i32", ["rv"]], ["k", "-33"]]]
    r1, r2 = fn["rps"]
    assert r1["rollback"] is True and r2["rollback"] is False
    counter = ["k", str(0x601004)]
    assert r1["set"] == [
        [["rv"], ["k", "-33"]],
        [["st", "u16", counter], ["+", ["ld", "u16", counter], ["k", "1"]]],
        [["st", "i64", ["ld", "ptr", ["sym", "last_user"]]], ["k", "-1"]],
        [["ra"], ["ss", 0]]]
    assert r1["assert"] == [["&&", ["!=", ["ld", "u16", counter], ["k", "0"]],
                             ["==", ["rv"], ["k", "-33"]]]]
    assert r1["assert_text"] == ["counter != 0 && 'rvalue == -33"]
    assert r2["set"] == [[["rv"], ["k", "1"]]]  # 7 % 4 - 8 / 3 == 3 - 2 (C division)
    assert compiled["default"] == {"ivps": [], "rps": [r2]}
    # a forbid-ev function without its own tp gets the default one, and the flag
    assert compiled["functions"]["other_fn"] == {"ivps": [], "rps": [r2], "forbid_ev": True}
    assert compiled["symbols"] == ["last_user"]
    assert compiled["warnings"] == ["all.pol:14:4: warning: rp R2 has no (rollback): memory is "
                                    "rolled back anyway before any repair (write (rollback) to "
                                    "say so)"]


@pytest.mark.parametrize(("expr", "value"), [
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("-7 / 2", -3), ("-7 % 2", -1), ("1 << 63", -(1 << 63)),
    ("0xffffffffffffffff", -1), ("~0 == -1", 1), ("1 < 2 && 2 < 1", 0), ("0 || 3", 1),
    ("5 & 3 | 8 ^ 1", 9), ("u8(0x1ff)", 255), ("i8(0xff)", -1), ("u32(-1)", 0xFFFFFFFF),
    ("-1 >> 1", -1), ("!0 + !5", 1), ("(1 == 1) == 1", 1),
])
def test_constant_expressions_fold_with_c_semantics(expr, value):
    compiled = compile_text(f"symval V = {expr};\nrp R := ('rvalue = V);\ntp f :=: &R;")
    assert compiled["functions"]["f"]["rps"][0]["set"] == [[["rv"], ["k", str(value)]]]


def test_globals_take_their_width_from_the_symbol_table(login_exe):
    text = ("ivp I :=: (failed_logins == 0), (login_attempts > 0);\n"
            "rp R := (rollback);\ntp check_credentials &I :=: &R;\nforbid-ev checkpassword;")
    fn = compile_text(text, binary=login_exe)["functions"]["check_credentials"]
    assert fn["ivps"][0]["checks"] == [
        ["==", ["ld", "i32", ["sym", "failed_logins"]], ["k", "0"]],
        [">", ["ld", "i64", ["sym", "login_attempts"]], ["k", "0"]]]


# Every diagnostic the checker can give, as the operator sees it (BIN: the login server's path).
DIAGNOSTICS = [
    ("rp F :=: (rollback);", False,
     "p.pol:1:6: syntax error: expected ':=', found ':=:' (an rp is written 'rp NAME := ...'; "
     "':=:' belongs to ivp and tp)"),
    ("ivp X := (1);", False, "p.pol:1:7: syntax error: expected ':=:', found ':='"),
    ("tp f &A := &B;", False, "p.pol:1:9: syntax error: expected ',' or ':=:', found ':='"),
    ("tp f &A :=: ", False, "p.pol:1:13: syntax error: expected '&', found end of file"),
    ("ivp X :=: (1 $ 2);", False,
     "p.pol:1:14: syntax error: expected ')' or an operator, found the character '$'"),
    ("symval A = 0", False,
     "p.pol:1:13: syntax error: expected ';' or an operator, found end of file"),
    ("symval = 0;", False, "p.pol:1:8: syntax error: expected a name, found '='"),
    ("ivp M :=: 'raddress == 0;", False,
     "p.pol:1:11: syntax error: expected '(', found a special variable \"'raddress\""),
    ("rp F := ('rvalue == 0) (rollback);", False,
     "p.pol:1:24: syntax error: expected ',' or ';', found '('"),
    ("rp F := (rollback);\ntp f :=: F;", False,
     "p.pol:2:10: syntax error: expected '&', found a name 'F'"),
    ("rp F := ('rvalue == 0)\ntp f :=: &F;", False,
     "p.pol:2:1: syntax error: expected ',' or ';', found 'tp'"),
    ("ivp M :=: ('rvalu == 0);", False,
     "p.pol:1:12: error: unknown special variable 'rvalu: expected 'rvalue, 'raddress, "
     "'shadowstack[i] or 'arg0..'arg5"),
    ("ivp M :=: ('arg6 == 0);", False,
     "p.pol:1:12: error: unknown special variable 'arg6: expected 'rvalue, 'raddress, "
     "'shadowstack[i] or 'arg0..'arg5"),
    ("ivp M :=: ('shadowstack == 0);", False,
     "p.pol:1:12: error: 'shadowstack needs an index: 'shadowstack[0] is the return address "
     "saved when the function was entered"),
    ("ivp M :=: ('rvalue[1] == 0);", False,
     "p.pol:1:12: error: 'rvalue cannot be indexed (only 'shadowstack[i] can)"),
    ("ivp M :=: ('shadowstack['arg0] == 0);", False,
     "p.pol:1:25: error: expected a constant, found \"'arg0\""),
    ("rp F := ('arg0 = 1);", False,
     "p.pol:1:10: error: cannot assign to 'arg0: only 'rvalue, 'raddress, CDIs, globals and "
     "TYPE[address] can be assigned"),
    ("symval A = 1; rp F := (A = 1);", False,
     "p.pol:1:24: error: cannot assign to symval A: it is a constant"),
    ("symval A = B; symval B = 1;", False,
     "p.pol:1:12: error: symval B is used before its definition at line 1"),
    ("symval A = 'rvalue;", False, "p.pol:1:12: error: expected a constant, found \"'rvalue\""),
    ("symval A = x;", False, "p.pol:1:12: error: expected a constant, found x (symvals must be "
                             "defined before they are used)"),
    ("ivp M :=: (1 / 0);", False, "p.pol:1:12: error: division by zero in '1 / 0'"),
    ("ivp M :=: (010);", False,
     "p.pol:1:12: error: 010 would be octal in C: write decimal or 0x hexadecimal"),
    ("symval A = 1;\nsymval A = 2;", False,
     "p.pol:2:8: error: A is already defined (as symval at line 1); choose another name"),
    ("ivp M :=: (1); rp R := (rollback); tp f &R :=: &M;", False,
     "p.pol:1:42: error: expected the name of an ivp before ':=:', found rp R\n"
     "p.pol:1:49: error: expected the name of an rp after ':=:', found ivp M"),
    ("rp R := (rollback);\ntp f :=: &R;\ntp f :=: &R;", False,
     "p.pol:3:1: error: a second tp for f (the first is at line 2); list its ivps and rps in "
     "one tp instead"),
    ("rp Repair := (rollback); tp f :=: &Repiar;", False,
     "p.pol:1:36: error: expected the name of an rp after ':=:', found Repiar, which is not "
     "defined; did you mean 'Repair'?"),
    ("ivp M :=: (M == 1);", False,
     "p.pol:1:12: error: M is an ivp, expected a value (a symval, a cdi or a global variable)"),
    ("cdi c : i32 @ c; ", False,
     "p.pol:1:15: error: cdi c is used before its definition at line 1"),
    ("ivp M :=: (&M == 1);", False,
     "p.pol:1:13: error: &M: expected a cdi or a global symbol, found ivp M"),
    ("rp R := (rollback); tp check_credential :=: &R;", True,
     "p.pol:1:24: error: unknown function check_credential in tp: expected a function of BIN; "
     "did you mean 'check_credentials'?"),
    ("rp R := (rollback); tp failed_logins :=: &R;", True,
     "p.pol:1:24: error: failed_logins in tp is a data symbol of BIN, expected a function"),
    ("ivp M :=: (failed_login == 0);", True,
     "p.pol:1:12: error: unknown name failed_login: expected a symval, a cdi or a global "
     "variable of BIN; did you mean 'failed_logins'?"),
    ("rp F := (rvalue == 0);", True,
     "p.pol:1:10: error: unknown name rvalue: expected a symval, a cdi or a global variable of "
     "BIN; the special variable is written 'rvalue"),
    ("ivp M :=: (last_user == 0);", True,
     "p.pol:1:12: error: global last_user is 32 bytes, not an integer: read it with a type, "
     "e.g. u8[&last_user + 0], or declare a cdi"),
    ("ivp M :=: (login == 0);", True,
     "p.pol:1:12: error: login is a function, expected a value (write &login for its address)"),
    ("ivp M :=: (&nosuch == 0);", True,
     "p.pol:1:13: error: unknown symbol nosuch in &nosuch: expected a symbol of BIN"),
    ("forbid-ev nosuch;", True,
     "p.pol:1:11: error: unknown function nosuch in forbid-ev: expected a function of BIN"),
]


@pytest.mark.parametrize(("text", "with_binary", "message"), DIAGNOSTICS)
def test_diagnostic_messages(login_exe, text, with_binary, message):
    with pytest.raises(PolicyError) as caught:
        compile_text(text, "p.pol", binary=login_exe if with_binary else None)
    assert str(caught.value).replace(str(login_exe), "BIN") == message


def test_unused_definitions_are_warnings_not_errors():
    compiled = compile_text("ivp M :=: (1);\nrp R := (rollback);", "p.pol")
    assert compiled["functions"] == {}
    assert compiled["warnings"] == ["p.pol:1:5: warning: ivp M is not used",
                                    "p.pol:2:4: warning: rp R is not used"]


def test_unreadable_policy_file_and_binary(tmp_path):
    with pytest.raises(PolicyError) as caught:
        load(tmp_path / "missing.pol")
    assert str(caught.value) == (f"{tmp_path / 'missing.pol'}:1:1: error: cannot read the "
                                 "policy: No such file or directory")
    with pytest.raises(BinaryError, match="no such file"):
        load(FIGURE3, binary=tmp_path / "missing")
    not_elf = tmp_path / "not_elf"
    not_elf.write_text("hello")
    with pytest.raises(BinaryError, match="cannot read its symbol table"):
        load(FIGURE3, binary=not_elf)


# -- the parser never crashes: any text gives a compiled policy or a PolicyError -------------------

_TOKENS = ["symval", "cdi", "ivp", "rp", "tp", "forbid-ev", "rollback", "assert", "i32", "u8",
           "ptr", ":=", ":=:", ":", "@", "=", "==", "!=", "<", ">>", "&&", "||", "&", "|", "^",
           "+", "-", "*", "/", "%", "!", "~", "(", ")", "[", "]", ",", ";", "'rvalue",
           "'raddress", "'shadowstack", "'arg0", "'bogus", "A", "f", "x", "0", "0x10", "7",
           "//c\n", "/*", "*/", "#", "\n", "\u2019rvalue"]

_fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _compiles_or_diagnoses(text: str) -> None:
    try:
        compiled = compile_text(text, "fuzz.pol")
    except PolicyError as exc:
        assert exc.diagnostics
        for d in exc.diagnostics:
            assert d.line >= 1 and d.column >= 1
            assert str(d).startswith(f"fuzz.pol:{d.line}:{d.column}: ")
    else:
        assert compiled["format"] == FORMAT


@_fuzz
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text(text):
    _compiles_or_diagnoses(text)


@_fuzz
@given(st.lists(st.sampled_from(_TOKENS), max_size=40))
def test_fuzz_token_soup(tokens):
    _compiles_or_diagnoses(" ".join(tokens))


@_fuzz
@given(st.integers(0, len(EVERYTHING)), st.integers(0, 5), st.text(max_size=5))
def test_fuzz_mutations_of_a_valid_policy(position, cut, insert):
    _compiles_or_diagnoses(EVERYTHING[:position] + insert + EVERYTHING[position + cut:])


@pytest.mark.parametrize("path", sorted((REPO / "policies").glob("*.pol")), ids=lambda p: p.name)
def test_example_policies_check_against_the_login_server(path, login_exe):
    compiled = load(path, binary=login_exe)
    assert "check_credentials" in compiled["functions"]
    assert compiled["warnings"] == []


@pytest.mark.parametrize("expr", ["-" * 5000 + "1", " + ".join(["x"] * 3000)], ids=["unary", "sum"])
def test_deep_expressions_are_a_diagnostic_not_a_recursion_error(expr):
    with pytest.raises(PolicyError, match="nested more than 200 levels deep"):
        compile_text(f"ivp M :=: ({expr});")


def test_a_stripped_binary_is_checked_against_its_dynamic_symbols(tmp_path, login_exe):
    stripped = tmp_path / "login_server"
    shutil.copy(login_exe, stripped)
    subprocess.run(["strip", str(stripped)], check=True, timeout=30)
    assert "check_credentials" in load(FIGURE3, binary=stripped)["functions"]
    with pytest.raises(PolicyError, match="did you mean 'failed_logins'"):
        compile_text("ivp M :=: (failed_login == 0);", binary=stripped)
    no_dynamic = tmp_path / "plain"
    subprocess.run(["gcc", "-x", "c", "-", "-o", str(no_dynamic), "-s"], input="int main(){}",
                   text=True, check=True, timeout=60)
    with pytest.raises(BinaryError, match="no symbols"):
        load(FIGURE3, binary=no_dynamic)

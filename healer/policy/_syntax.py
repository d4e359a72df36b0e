"""Parsing a policy text into a lark tree; lark's errors become positioned, readable diagnostics."""

from __future__ import annotations

from functools import cache
from importlib import resources

import lark
from lark.lexer import PatternStr

from healer.policy._errors import Diagnostic, PolicyError

# How a diagnostic names the terminals that are not plain strings.
_DESCRIPTIONS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "TYPE": "a type (i8 u8 i16 u16 i32 u32 i64 u64 ptr)",
    "SPECIAL": "a special variable ('rvalue 'raddress 'shadowstack[i] 'arg0..'arg5)",
    "$END": "end of file",
}


@cache
def _parser() -> lark.Lark:
    grammar = (resources.files("healer.policy") / "repair.lark").read_text()
    return lark.Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False)


@cache
def _terminal_names() -> dict[str, str]:
    names = dict(_DESCRIPTIONS)
    for term in _parser().terminals:
        if isinstance(term.pattern, PatternStr):
            names[term.name] = repr(term.pattern.value)
    return names


# Listed as "an operator" when several are possible, so a message names what matters.
_OPERATORS = frozenset({"'!='", "'%'", "'&&'", "'&'", "'*'", "'+'", "'-'", "'/'", "'<'", "'<<'",
                        "'<='", "'=='", "'>'", "'>='", "'>>'", "'^'", "'|'", "'||'"})


def _expected(exc: lark.UnexpectedInput, fallback: set[str] | frozenset[str]) -> set[str]:
    """The tokens the parser would really accept here (LALR's lookahead sets list more)."""
    interactive = getattr(exc, "interactive_parser", None)
    if interactive is not None:
        try:
            return set(interactive.accepts())
        except lark.LarkError:
            pass
    return set(fallback)


def _describe_expected(expected: set[str]) -> str:
    names = _terminal_names()
    found = {names.get(t, t) for t in expected}
    if len(found & _OPERATORS) > 3:
        found = (found - _OPERATORS) | {"an operator"}
    words = sorted(found, key=lambda w: (w == "an operator", w))
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _describe_token(token: lark.Token) -> str:
    if token.type == "$END":
        return "end of file"
    if token.type in ("NAME", "NUMBER", "SPECIAL", "TYPE"):
        return f"{_DESCRIPTIONS[token.type].split(' (')[0]} {str(token)!r}"
    return repr(str(token))


def _end_position(text: str) -> tuple[int, int]:
    line = text.count("\n") + 1
    return line, len(text) - (text.rfind("\n") + 1) + 1


def parse(text: str, filename: str) -> lark.Tree:
    """Parse policy ``text``.

    Args:
        text: the policy source.
        filename: the name diagnostics carry.

    Returns:
        The lark tree (positions kept in each node's ``meta`` and on each token).

    Error handling:
        A syntax error raises PolicyError with one diagnostic: position, what was expected, what was
        found. Parsing never raises anything else, whatever the text.
    """
    try:
        return _parser().parse(text)
    except lark.UnexpectedToken as exc:
        token = exc.token
        if token.type == "$END":
            line, column = _end_position(text)
        else:
            line, column = token.line or 1, token.column or 1
        start = token.start_pos or 0
        if str(token) == ":" and text[max(start - 2, 0):start] == ":=":  # 'rp NAME :=: ...'
            message = ("syntax error: expected ':=', found ':=:' (an rp is written "
                       "'rp NAME := ...'; ':=:' belongs to ivp and tp)")
            raise PolicyError([Diagnostic(filename, line, column - 2, message)]) from None
        message = (f"syntax error: expected {_describe_expected(_expected(exc, exc.expected))}, "
                   f"found {_describe_token(token)}")
        raise PolicyError([Diagnostic(filename, line, column, message)]) from None
    except lark.UnexpectedCharacters as exc:
        pos = exc.pos_in_stream or 0
        found = repr(text[pos]) if pos < len(text) else "end of file"
        message = (f"syntax error: expected {_describe_expected(_expected(exc, exc.allowed))}, "
                   f"found the character {found}")
        raise PolicyError([Diagnostic(filename, exc.line, exc.column, message)]) from None
    except lark.UnexpectedEOF as exc:
        line, column = _end_position(text)
        expected = _describe_expected(_expected(exc, set(exc.expected)))
        message = f"syntax error: expected {expected}, found end of file"
        raise PolicyError([Diagnostic(filename, line, column, message)]) from None

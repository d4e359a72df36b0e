"""Resolving and compiling a parsed policy into the compact form the agent interprets.

The compiled form is plain JSON (see docs/repair-policy.md, "Compiled form"): expressions are
prefix lists such as ``["==", ["ra"], ["ss", 0]]``; names are resolved here, once, so the agent only
evaluates. Every problem found is collected, so one run reports them all.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lark import Token, Tree

from healer.policy._errors import Diagnostic, PolicyError
from healer.policy._symbols import Symbol

FORMAT = "sead-policy/1"
ARG_COUNT = 6  # x86-64 SysV integer argument registers
MAX_DEPTH = 200  # expression nesting: the compiler and the agent's closures recurse
_WIDTH_TYPES = {1: "i8", 2: "i16", 4: "i32", 8: "i64"}
_BITS = {"i8": 8, "u8": 8, "i16": 16, "u16": 16, "i32": 32, "u32": 32, "i64": 64, "u64": 64,
         "ptr": 64}

Expr = list[Any]


class _Invalid(Exception):
    """An expression could not be compiled; its diagnostic is already recorded."""


def _wrap(value: int) -> int:
    """Two's complement signed 64-bit, the arithmetic the agent uses (BigInt.asIntN(64, ...))."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >> 63 else value


def _cast(type_name: str, value: int) -> int:
    bits = _BITS[type_name]
    value &= (1 << bits) - 1
    if type_name.startswith("i") and value >> (bits - 1):
        value -= 1 << bits
    return _wrap(value)


def _truncating_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


_BINARY: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "/": _truncating_div, "%": lambda a, b: a - b * _truncating_div(a, b),
    "&": lambda a, b: a & b, "|": lambda a, b: a | b, "^": lambda a, b: a ^ b,
    "<<": lambda a, b: a << (b & 63), ">>": lambda a, b: a >> (b & 63),
    "==": lambda a, b: int(a == b), "!=": lambda a, b: int(a != b), "<": lambda a, b: int(a < b),
    "<=": lambda a, b: int(a <= b), ">": lambda a, b: int(a > b), ">=": lambda a, b: int(a >= b),
    "&&": lambda a, b: int(bool(a) and bool(b)), "||": lambda a, b: int(bool(a) or bool(b)),
}
_UNARY: dict[str, Callable[[int], int]] = {
    "-": lambda a: -a, "~": lambda a: ~a, "!": lambda a: int(not a),
}


def _const(expr: Expr) -> int | None:
    return int(expr[1]) if expr[0] == "k" else None


def _k(value: int) -> Expr:
    return ["k", str(_wrap(value))]


@dataclass
class _Declared:
    kind: str  # symval | cdi | ivp | rp
    node: Tree
    line: int
    value: Any = None  # symval: int; cdi: (type, address expr)


@dataclass
class _Compiler:
    text: str
    filename: str
    symbols: dict[str, Symbol] | None
    errors: list[Diagnostic] = field(default_factory=list)
    warnings: list[Diagnostic] = field(default_factory=list)
    declared: dict[str, _Declared] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    needed_symbols: set[str] = field(default_factory=set)
    binary_name: str = ""
    depth: int = 0

    # -- diagnostics -------------------------------------------------------------------------

    def error(self, where: Token | Tree, message: str) -> None:
        line, column = _position(where)
        self.errors.append(Diagnostic(self.filename, line, column, f"error: {message}"))

    def warn(self, where: Token | Tree, message: str) -> None:
        line, column = _position(where)
        self.warnings.append(Diagnostic(self.filename, line, column, f"warning: {message}"))

    def _suggest(self, name: str, candidates: list[str]) -> str:
        close = difflib.get_close_matches(name, candidates, n=1)
        return f"; did you mean {close[0]!r}?" if close else ""

    def source(self, node: Tree) -> str:
        return " ".join(self.text[node.meta.start_pos:node.meta.end_pos].split())

    # -- declarations ------------------------------------------------------------------------

    def declare(self, statements: list[Tree]) -> None:
        for stmt in statements:
            if stmt.data in ("symval", "cdi", "ivp", "rp"):
                name = _token(stmt.children[0])
                previous = self.declared.get(str(name))
                if previous is not None:
                    self.error(name, f"{name!s} is already defined (as {previous.kind} at line "
                                     f"{previous.line}); choose another name")
                    continue
                self.declared[str(name)] = _Declared(str(stmt.data), stmt, name.line or 0)

    def compile(self, tree: Tree) -> dict[str, Any]:
        statements = [c for c in tree.children if isinstance(c, Tree)]
        self.declare(statements)
        tps: dict[str, dict[str, Any]] = {}
        tp_lines: dict[str, int] = {}
        forbid: dict[str, Token] = {}
        for stmt in statements:
            if stmt.data == "symval":
                self.compile_symval(stmt)
            elif stmt.data == "cdi":
                self.compile_cdi(stmt)
            elif stmt.data in ("ivp", "rp"):
                decl = self.declared.get(str(stmt.children[0]))
                if decl is not None and decl.node is stmt:
                    decl.value = (self.compile_ivp if stmt.data == "ivp" else self.compile_rp)(stmt)
            elif stmt.data == "forbid":
                for name in map(_token, stmt.children):
                    if self.check_function(name, "forbid-ev"):
                        forbid.setdefault(str(name), name)
        for stmt in statements:
            if stmt.data == "tp":
                target = stmt.children[0]
                key = "*" if target.data == "default_target" else str(target.children[0])
                if key != "*" and not self.check_function(_token(target.children[0]), "tp"):
                    continue
                if key in tp_lines:
                    self.error(stmt, f"a second tp for {key} (the first is at line "
                                     f"{tp_lines[key]}); list its ivps and rps in one tp instead")
                    continue
                tp_lines[key] = stmt.meta.line
                tps[key] = self.compile_tp(stmt)
        for declared_name, decl in self.declared.items():
            if decl.kind in ("ivp", "rp") and declared_name not in self.used:
                self.warn(decl.node.children[0], f"{decl.kind} {declared_name} is not used")
        if self.errors:
            raise PolicyError(self.errors)
        default = tps.pop("*", None)
        functions = {name: {**tp, "forbid_ev": name in forbid} for name, tp in tps.items()}
        for forbidden in forbid:
            if forbidden not in functions:
                functions[forbidden] = {**(default or {"ivps": [], "rps": []}), "forbid_ev": True}
        return {
            "format": FORMAT,
            "source": self.filename,
            "sha256": hashlib.sha256(self.text.encode()).hexdigest(),
            "binary": self.binary_name or None,
            "symbols": sorted(self.needed_symbols),
            "functions": functions,
            "default": default,
            "warnings": [str(w) for w in sorted(self.warnings, key=lambda d: (d.line, d.column))],
        }

    def check_function(self, name: Token, where: str) -> bool:
        if self.symbols is None:
            return True
        sym = self.symbols.get(str(name))
        if sym is None:
            functions = [s.name for s in self.symbols.values() if s.is_function]
            self.error(name, f"unknown function {name!s} in {where}: expected a function of "
                             f"{self.binary_name}{self._suggest(str(name), functions)}")
            return False
        if not sym.is_function:
            self.error(name, f"{name!s} in {where} is a data symbol of {self.binary_name}, "
                             "expected a function")
            return False
        return True

    def compile_symval(self, stmt: Tree) -> None:
        name, value = stmt.children
        try:
            compiled = self.expr(value, constant_only=True)
        except _Invalid:
            self.declared[str(name)].value = 0
            return
        constant = _const(compiled)
        if constant is None:
            self.error(value, f"symval {name!s} must be a constant, found {self.source(value)!r}")
            constant = 0
        self.declared[str(name)].value = constant

    def compile_cdi(self, stmt: Tree) -> None:
        name, type_token, address = stmt.children
        try:
            addr = self.expr(address)
        except _Invalid:
            addr = _k(0)
        self.declared[str(name)].value = (str(type_token), addr)

    def compile_tp(self, stmt: Tree) -> dict[str, Any]:
        ivp_refs = stmt.children[1].children
        rp_refs = stmt.children[2:]
        return {"ivps": [self.reference(r, "ivp") for r in ivp_refs],
                "rps": [self.reference(r, "rp") for r in rp_refs]}

    def reference(self, ref: Tree, kind: str) -> dict[str, Any]:
        name = ref.children[0]
        decl = self.declared.get(str(name))
        if decl is None or decl.kind != kind:
            side = "before ':=:'" if kind == "ivp" else "after ':=:'"
            found = f"{decl.kind} {name!s}" if decl else f"{name!s}, which is not defined"
            candidates = [n for n, d in self.declared.items() if d.kind == kind]
            self.error(name, f"expected the name of an {kind} {side}, found {found}"
                             f"{self._suggest(str(name), candidates)}")
            return {}
        self.used.add(str(name))
        return decl.value

    def compile_ivp(self, stmt: Tree) -> dict[str, Any]:
        checks, texts = [], []
        for cond in stmt.children[1:]:
            try:
                checks.append(self.expr(cond))
                texts.append(self.source(cond))
            except _Invalid:
                pass
        return {"name": str(stmt.children[0]), "checks": checks, "text": texts}

    def compile_rp(self, stmt: Tree) -> dict[str, Any]:
        name = stmt.children[0]
        rollback = False
        sets: list[list[Expr]] = []
        asserts: list[Expr] = []
        texts: list[str] = []
        for action in stmt.children[1:]:
            try:
                if action.data == "rollback":
                    rollback = True
                elif action.data == "assertion":
                    asserts.append(self.expr(action.children[0]))
                    texts.append(self.source(action.children[0]))
                else:
                    sets.append([self.lvalue(action.children[0]), self.expr(action.children[1])])
            except _Invalid:
                pass
        if not rollback:
            self.warn(name, f"rp {name!s} has no (rollback): memory is rolled back anyway before "
                            "any repair (write (rollback) to say so)")
        return {"name": str(name), "rollback": rollback, "set": sets, "assert": asserts,
                "assert_text": texts}

    # -- expressions -------------------------------------------------------------------------

    def lvalue(self, node: Tree) -> Expr:
        target = node.children[0] if node.data == "lvalue" else node
        if isinstance(target, Tree) and target.data == "special":
            compiled = self.special(target)
            if compiled[0] not in ("rv", "ra"):
                self.error(target, f"cannot assign to {target.children[0]!s}: only 'rvalue, "
                                   "'raddress, CDIs, globals and TYPE[address] can be assigned")
                raise _Invalid
            return compiled
        if isinstance(target, Tree) and target.data == "memory":
            return ["st", str(target.children[0]), self.expr(target.children[1])]
        loaded = self.name(_token(target), assigning=True)
        return ["st", loaded[1], loaded[2]]

    def expr(self, node: Tree | Token, constant_only: bool = False) -> Expr:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                self.error(node, f"expression nested more than {MAX_DEPTH} levels deep; split it "
                                 "with symvals or cdis")
                raise _Invalid
            return self._expr(node, constant_only)
        finally:
            self.depth -= 1

    def _expr(self, node: Tree | Token, constant_only: bool) -> Expr:
        if isinstance(node, Token):  # a bare token cannot be an expression in this grammar
            self.error(node, f"unexpected {node!s}")
            raise _Invalid
        kind = node.data
        if kind == "number":
            digits = str(node.children[0])
            if len(digits) > 1 and digits[0] == "0" and digits[1] not in "xX":
                self.error(node, f"{digits} would be octal in C: write decimal or 0x hexadecimal")
                raise _Invalid
            return _k(int(digits, 0))
        if kind == "name":
            return self.name(_token(node.children[0]), constant_only=constant_only)
        if constant_only and kind in ("special", "address_of", "memory"):
            self.error(node, f"expected a constant, found {self.source(node)!r}")
            raise _Invalid
        if kind == "special":
            return self.special(node)
        if kind == "address_of":
            return self.address_of(_token(node.children[0]))
        if kind in ("memory", "cast"):
            type_name = str(node.children[0])
            inner = self.expr(node.children[1], constant_only)
            if kind == "cast":
                value = _const(inner)
                if value is not None:
                    return _k(_cast(type_name, value))
                return ["cast", type_name, inner]
            return ["ld", type_name, inner]
        if kind == "unary":
            op = str(node.children[0].children[0])
            inner = self.expr(node.children[1], constant_only)
            value = _const(inner)
            if value is not None:
                return _k(_UNARY[op](value))
            return ["neg" if op == "-" else op, inner]
        # binary operators: compare, arith, shift carry an operator node; the others are implied
        implied = {"logic_or": "||", "logic_and": "&&", "bit_or": "|", "bit_xor": "^",
                   "bit_and": "&"}
        if kind in implied:
            left_node, right_node, op = node.children[0], node.children[1], implied[kind]
        else:
            left_node, op_node, right_node = node.children
            op = str(op_node.children[0])
        left = self.expr(left_node, constant_only)
        right = self.expr(right_node, constant_only)
        a, b = _const(left), _const(right)
        if a is not None and b is not None:
            if op in ("/", "%") and b == 0:
                self.error(node, f"division by zero in {self.source(node)!r}")
                raise _Invalid
            return _k(_BINARY[op](a, b))
        return [op, left, right]

    def special(self, node: Tree) -> Expr:
        token = node.children[0]
        name = str(token)[1:]
        index = node.children[1] if len(node.children) > 1 else None
        if name == "shadowstack":
            if index is None:
                self.error(token, "'shadowstack needs an index: 'shadowstack[0] is the return "
                                  "address saved when the function was entered")
                raise _Invalid
            value = _const(self.expr(index, constant_only=True))
            if value is None or value < 0:
                self.error(index, "expected a constant index >= 0 for 'shadowstack")
                raise _Invalid
            return ["ss", value]
        if index is not None:
            self.error(token, f"'{name} cannot be indexed (only 'shadowstack[i] can)")
            raise _Invalid
        if name == "rvalue":
            return ["rv"]
        if name == "raddress":
            return ["ra"]
        if name.startswith("arg") and name[3:].isdigit() and int(name[3:]) < ARG_COUNT:
            return ["arg", int(name[3:])]
        self.error(token, f"unknown special variable {token!s}: expected 'rvalue, 'raddress, "
                          f"'shadowstack[i] or 'arg0..'arg{ARG_COUNT - 1}")
        raise _Invalid

    def name(self, token: Token, constant_only: bool = False, assigning: bool = False) -> Expr:
        decl = self.declared.get(str(token))
        if decl is not None:
            if decl.kind == "symval":
                if assigning:
                    self.error(token, f"cannot assign to symval {token!s}: it is a constant")
                    raise _Invalid
                if decl.value is None:
                    self.error(token, f"symval {token!s} is used before its definition at line "
                                      f"{decl.line}")
                    raise _Invalid
                return _k(decl.value)
            if decl.kind == "cdi":
                if constant_only:
                    self.error(token, f"expected a constant, found cdi {token!s}")
                    raise _Invalid
                if decl.value is None:
                    self.error(token, f"cdi {token!s} is used before its definition at line "
                                      f"{decl.line}")
                    raise _Invalid
                type_name, address = decl.value
                return ["ld", type_name, address]
            self.error(token, f"{token!s} is an {decl.kind}, expected a value (a symval, a cdi "
                              "or a global variable)")
            raise _Invalid
        if constant_only:
            self.error(token, f"expected a constant, found {token!s} (symvals must be defined "
                              "before they are used)")
            raise _Invalid
        type_name = self.global_type(token)
        self.needed_symbols.add(str(token))
        return ["ld", type_name, ["sym", str(token)]]

    def global_type(self, token: Token) -> str:
        if self.symbols is None:
            return "i32"  # without a binary a global is taken as an int; cdi declares other types
        sym = self.symbols.get(str(token))
        if sym is None:
            candidates = [n for n, d in self.declared.items() if d.kind in ("symval", "cdi")]
            candidates += [s.name for s in self.symbols.values() if not s.is_function]
            hint = self._suggest(str(token), candidates)
            if str(token) in ("rvalue", "raddress", "shadowstack"):
                hint = f"; the special variable is written '{token!s}"
            self.error(token, f"unknown name {token!s}: expected a symval, a cdi or a global "
                              f"variable of {self.binary_name}{hint}")
            raise _Invalid
        if sym.is_function:
            self.error(token, f"{token!s} is a function, expected a value (write &{token!s} for "
                              "its address)")
            raise _Invalid
        if sym.size not in _WIDTH_TYPES:
            self.error(token, f"global {token!s} is {sym.size} bytes, not an integer: read it "
                              f"with a type, e.g. u8[&{token!s} + 0], or declare a cdi")
            raise _Invalid
        return _WIDTH_TYPES[sym.size]

    def address_of(self, token: Token) -> Expr:
        decl = self.declared.get(str(token))
        if decl is not None:
            if decl.kind != "cdi" or decl.value is None:
                self.error(token, f"&{token!s}: expected a cdi or a global symbol, found "
                                  f"{decl.kind} {token!s}")
                raise _Invalid
            return list(decl.value[1])
        if self.symbols is not None and str(token) not in self.symbols:
            self.error(token, f"unknown symbol {token!s} in &{token!s}: expected a symbol of "
                              f"{self.binary_name}"
                              f"{self._suggest(str(token), list(self.symbols))}")
            raise _Invalid
        self.needed_symbols.add(str(token))
        return ["sym", str(token)]


def _token(node: Token | Tree) -> Token:
    if not isinstance(node, Token):  # the grammar puts a token in every place this is called for
        raise TypeError(f"expected a token, found {node!r}")
    return node


def _position(where: Token | Tree) -> tuple[int, int]:
    if isinstance(where, Token):
        return where.line or 1, where.column or 1
    meta = where.meta
    return (meta.line, meta.column) if not meta.empty else (1, 1)


def compile_tree(tree: Tree, text: str, filename: str, symbols: dict[str, Symbol] | None,
                 binary_name: str = "") -> dict[str, Any]:
    """Resolve every name of a parsed policy and compile it.

    Args:
        tree: from healer.policy._syntax.parse.
        text: the source (for positions and the IVP/assertion texts kept for log lines).
        filename: the name diagnostics carry.
        symbols: the binary's symbols, or None to leave global names to the agent.
        binary_name: how diagnostics name the binary.

    Returns:
        The compiled policy (JSON-able dict).

    Error handling:
        Any error raises PolicyError with every problem found; warnings travel in the result.
    """
    return _Compiler(text, filename, symbols, binary_name=binary_name).compile(tree)

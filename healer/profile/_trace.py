"""The SEV paper's trace format (its Figure 1): ``.> f(args...)`` on entry, ``.> f(...) = ret``."""

from __future__ import annotations


def call_line(name: str, args: tuple[int, ...]) -> str:
    """``.> name(0x1, 0x2, ...)``: the arguments as hex, as the paper prints them."""
    return f".> {name}({', '.join(f'0x{a & 0xFFFFFFFFFFFFFFFF:X}' for a in args)}, ...)"


def return_line(name: str, value: int) -> str:
    """``.> name(...) = value`` with the value as a signed decimal."""
    return f".> {name}(...) = {value}"

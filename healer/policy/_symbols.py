"""The ELF symbol table of the protected binary, read with binutils' ``nm`` (no ELF library)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_FUNCTION_KINDS = frozenset("TtWwi")
_DATA_KINDS = frozenset("DdBbRrGgSsVvCu")


class BinaryError(Exception):
    """The binary named for name resolution cannot be read; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str
    address: int
    size: int  # 0 when the symbol table does not say
    is_function: bool


def read_symbols(binary: Path) -> dict[str, Symbol]:
    """The defined symbols of ``binary`` by name: the symbol table, or for a stripped binary its
    dynamic symbols (what ``-rdynamic`` exports, which the agent can resolve too).

    Error handling:
        A missing or unreadable file, a non-ELF file, a binary without any symbols or a missing
        ``nm`` raise BinaryError naming the path and the fix.
    """
    if not binary.is_file():
        raise BinaryError(f"{binary}: no such file; give the path of the protected executable")
    symbols = _nm(binary, dynamic=False) or _nm(binary, dynamic=True)
    if not symbols:
        raise BinaryError(f"{binary}: no symbols (stripped?); use an unstripped build or name CDIs "
                          "by address with 'cdi NAME : TYPE @ 0xADDRESS;'")
    return symbols


def _nm(binary: Path, dynamic: bool) -> dict[str, Symbol]:
    try:
        proc = subprocess.run(["nm", "--defined-only", "-S", *(["-D"] if dynamic else []),
                               str(binary)], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise BinaryError("nm (binutils) is not installed; apt-get install binutils") from None
    except subprocess.TimeoutExpired:
        raise BinaryError(f"{binary}: nm did not finish in 30 s") from None
    if proc.returncode != 0:
        raise BinaryError(f"{binary}: cannot read its symbol table: {proc.stderr.strip()}")
    symbols: dict[str, Symbol] = {}
    for line in proc.stdout.splitlines():
        fields = line.split()
        if len(fields) == 4:
            address, size, kind, name = fields
        elif len(fields) == 3:
            (address, kind, name), size = fields, "0"
        else:
            continue
        if kind in _FUNCTION_KINDS or kind in _DATA_KINDS:
            name = name.split("@", 1)[0]  # dynamic symbols carry versions: stdout@GLIBC_2.2.5
            symbols.setdefault(name, Symbol(name, int(address, 16), int(size, 16),
                                            kind in _FUNCTION_KINDS))
    return symbols

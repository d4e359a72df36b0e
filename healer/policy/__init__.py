"""The repair policy language (STEM/SEAD section 4): parse, check against a binary, compile.

``load(path, binary=None)`` is what the host side calls before handing the policy to the agent::

    compiled = healer.policy.load("policies/figure3.pol", binary="/usr/sbin/login_server")

The grammar is ``repair.lark`` next to this file; the language and the compiled form are described
in docs/repair-policy.md; the agent's interpreter is healer/agent/30_policy.js.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from healer.policy._compile import FORMAT, compile_tree
from healer.policy._errors import Diagnostic, PolicyError
from healer.policy._symbols import BinaryError, read_symbols
from healer.policy._syntax import parse

__all__ = ["FORMAT", "BinaryError", "Diagnostic", "PolicyError", "compile_text", "load"]


def compile_text(text: str, filename: str = "<policy>",
                 binary: str | Path | None = None) -> dict[str, Any]:
    """Parse, check and compile a policy given as text (see ``load``)."""
    symbols = read_symbols(Path(binary)) if binary is not None else None
    tree = parse(text, filename)
    return compile_tree(tree, text, filename, symbols, str(binary) if binary is not None else "")


def load(path: str | Path, binary: str | Path | None = None) -> dict[str, Any]:
    """Read, parse, check and compile the policy file ``path``.

    Args:
        path: the policy file.
        binary: the protected executable; when given, every function, global and ``&symbol`` is
            resolved against its ELF symbol table (and a global's width taken from its size).
            Without it those names are resolved by the agent when it loads the policy.

    Returns:
        The compiled policy, a JSON-able dict (``format`` == FORMAT) for ``Sead.config.policy``.

    Error handling:
        PolicyError (``str()`` is ``file:line:col: message`` lines) for syntax and name errors and
        for an unreadable policy file; BinaryError when the binary cannot be read.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PolicyError([Diagnostic(str(path), 1, 1, f"error: cannot read the policy: {reason}")]
                          ) from None
    return compile_text(text, str(path), binary)

"""C programs the tests, the demo and the benchmarks compile with gcc: servers with planted bugs.

``build("echo_server", opt="-O2", stack_protector=False)`` compiles ``targets/echo_server.c`` into
``.build/targets/`` (cached by source and flags) and returns the executable's path.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_OUT = _HERE.parent / ".build" / "targets"


class BuildError(RuntimeError):
    """gcc failed; the message carries its diagnostics."""


def build(name: str, *, opt: str = "-O2", stack_protector: bool = True,
          extra: tuple[str, ...] = ()) -> Path:
    """Compile ``targets/<name>.c`` and return the executable.

    Args:
        name: the source's base name.
        opt: optimisation flag, e.g. ``-O0`` or ``-O2``.
        stack_protector: ``-fstack-protector-strong`` if True, ``-fno-stack-protector`` if False.
        extra: more gcc flags (e.g. ``-D_FORTIFY_SOURCE=2``).

    Error handling:
        A missing source raises FileNotFoundError; a failed compile raises BuildError carrying
        gcc's output.
    """
    src = _HERE / f"{name}.c"
    # the project's headers too: a header edit rebuilds every target
    text = src.read_bytes() + b"".join(h.read_bytes() for h in sorted(_HERE.glob("*.h")))
    flags = [opt, "-g", "-rdynamic", "-fno-omit-frame-pointer",
             "-fstack-protector-strong" if stack_protector else "-fno-stack-protector", *extra]
    digest = hashlib.sha256(text + " ".join(flags).encode()).hexdigest()[:12]
    out = _OUT / f"{name}-{digest}"
    if out.exists():
        return out
    _OUT.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    proc = subprocess.run(["gcc", *flags, f"-I{_HERE}", "-o", str(tmp), str(src), "-lpthread"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"gcc failed for {src.name} ({' '.join(flags)}):\n{proc.stderr}")
    tmp.rename(out)
    return out

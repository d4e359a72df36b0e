"""Assembles the Frida agent script from ``healer/agent/``.

The agent is plain JavaScript split into files that are concatenated in file-name order (so
``00_core.js`` comes first and ``90_main.js`` last); each ``*.c`` file there is made available to
the script as ``CSOURCE["name.c"]`` for ``new CModule(...)``. See docs/agent.md for the module
contract.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources


@cache
def agent_source() -> str:
    """The complete agent script text (cached: the files do not change while running)."""
    root = resources.files("healer") / "agent"
    files = sorted((f for f in root.iterdir() if f.is_file()), key=lambda f: f.name)
    csources = {f.name: f.read_text() for f in files if f.name.endswith(".c")}
    parts = [f"const CSOURCE = {json.dumps(csources)};\n"]
    for f in files:
        if f.name.endswith(".js"):
            parts.append(f"// ---- {f.name} ----\n{f.read_text()}\n")
    return "".join(parts)

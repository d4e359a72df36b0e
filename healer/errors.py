"""Errors of the healer host side, each with a message that names the cause and the fix.

Frida's exceptions are translated into these where they enter (healer/session.py); the commands
turn them into ``sead.cli.CliError`` lines, never a traceback.
"""

from __future__ import annotations


class HealerError(Exception):
    """The healer cannot do what was asked; ``str()`` says why and what to do."""


class TargetExited(HealerError):
    """The supervised process exited or crashed while the healer was talking to it."""

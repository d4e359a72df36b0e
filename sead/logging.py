"""structlog set-up, called once by each entry point (never at import time).

Console rendering when stderr is a terminal, JSON lines otherwise (files, CI, pipes), so an operator
reads the console and a collector parses the rest.
"""

from __future__ import annotations

import logging
import sys

import structlog


class _StderrLogger:
    """Writes each rendered line to the *current* ``sys.stderr``, looked up per call, so a stream
    replaced after configuration (a test's capture, a daemon's redirect) is honoured instead of a
    stale, possibly closed, file being kept by the cached logger."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    debug = info = warning = warn = error = critical = exception = fatal = msg


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog for this process.

    Args:
        level: one of debug, info, warning, error.
        json: force JSON lines (True) or console (False); None picks by whether stderr is a tty.

    Error handling:
        An unknown level raises ValueError naming the accepted ones.
    """
    try:
        numeric = _LEVELS[level]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(_LEVELS)}") from None
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *args: _StderrLogger(),
        cache_logger_on_first_use=True,
    )

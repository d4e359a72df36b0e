"""Shared helpers for the framer and control-codec tests (pure byte streams: no sockets here
except in the end-to-end test, which starts and kills its own server)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import pytest

from protocols._framing import NEED_DATA
from protocols.http import (
    H11RequestFramer,
    H11ResponseFramer,
    RequestFramer,
    ResponseFramer,
)

# Every drain loop is bounded: a framer that never returned NEED_DATA would fail, not hang.
MAX_EVENTS_PER_DRAIN = 100_000

Drain = Callable[[Any, Iterable[bytes]], list[Any]]


def drain_chunks(framer: Any, chunks: Iterable[bytes],
                 on_event: Callable[[Any], None] | None = None,
                 ) -> list[Any]:
    """Feed ``chunks`` one by one, draining events after each; return every event in order."""
    events: list[Any] = []
    for chunk in chunks:
        framer.receive_data(chunk)
        for _ in range(MAX_EVENTS_PER_DRAIN):
            event = framer.next_event()
            if event is NEED_DATA:
                break
            events.append(event)
            if on_event is not None:
                on_event(event)
        else:
            raise AssertionError("framer produced events without end")
    return events


@pytest.fixture(scope="session")
def drain() -> Callable[..., list[Any]]:
    return drain_chunks


class Engine(NamedTuple):
    """One HTTP engine's pair of framers."""

    name: str
    Request: type
    Response: type


@pytest.fixture(scope="session", params=[Engine("llhttp", RequestFramer, ResponseFramer),
                                         Engine("h11", H11RequestFramer, H11ResponseFramer)],
                ids=lambda e: e.name)
def engine(request: pytest.FixtureRequest) -> Engine:
    """Every HTTP test runs against both engines (session scope: usable with hypothesis)."""
    return request.param  # type: ignore[no-any-return]

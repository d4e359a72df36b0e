"""Fixtures for the profile tests: a real kv_server (killed in teardown) and a trained profile."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from healer.profile import Profile, ProfileSession
from healer.profile._agent import AgentSession
from targets.kv_server import FUNCTIONS, KvServer, training_requests


@pytest.fixture
def kv() -> Iterator[KvServer]:
    server = KvServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sessions() -> Iterator[list[ProfileSession | AgentSession]]:
    """Sessions appended here are detached in teardown, even when the test fails."""
    opened: list[ProfileSession | AgentSession] = []
    try:
        yield opened
    finally:
        for s in opened:
            s.close()


def record(server: KvServer, requests: list[str], width: int = 15) -> Profile:
    """Profile ``server`` while it answers ``requests``."""
    s = ProfileSession(window=width, functions=FUNCTIONS, ret_bits=32)
    s.attach(server.pid)
    try:
        server.exchange(requests)
        return s.profile()
    finally:
        s.close()


@pytest.fixture(name="record")
def record_fixture():
    return record


@pytest.fixture(scope="module")
def trained() -> Profile:
    """kv_server trained on normal and malformed requests (one run, 1200 requests)."""
    server = KvServer.start()
    try:
        return record(server, training_requests(1200, 1))
    finally:
        server.stop()

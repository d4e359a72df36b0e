"""Fixtures for the netns tests: real namespaces (root only), removed even when a test fails."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import netns

pytestmark = pytest.mark.root


@pytest.fixture
def topo() -> Iterator[netns.Topology]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    with netns.topology(netns.unique_name("seadtest")) as t:
        yield t
    assert not netns.existing(t.name), "teardown left namespaces behind"

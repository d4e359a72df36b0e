"""Scenario test fixtures: servers always stopped, namespaces always removed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import netns
from vproxy import scenario as sc


@pytest.fixture
def servers() -> Iterator[sc.Servers]:
    """A process set; leaving the test kills every process started in it."""
    with sc.Servers() as s:
        yield s


@pytest.fixture(scope="module")
def topo() -> Iterator[netns.Topology]:
    """client/gw/server/backend namespaces for one test module; removed even when a test fails."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    with netns.topology(netns.unique_name("seadscn")) as t:
        yield t


@pytest.fixture
def control(tmp_path: Path) -> Path:
    """Where the gateway puts its control socket (and .token)."""
    return tmp_path / "ctl.sock"

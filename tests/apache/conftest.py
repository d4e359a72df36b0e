"""Fixtures for the Apache tests: real namespaces and Debian's apache2 (root only)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import netns
from targets import apache

pytestmark = [pytest.mark.root, pytest.mark.apache]


@pytest.fixture
def needs_apache() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if not os.path.exists(apache.APACHE2) or not apache.MANUAL.is_dir():
        pytest.skip("needs Debian's apache2 and apache2-doc")


@pytest.fixture
def topo(needs_apache: None) -> Iterator[netns.Topology]:
    with netns.topology(netns.unique_name("seadtest")) as t:
        yield t
    assert not netns.existing(t.name), "teardown left namespaces behind"

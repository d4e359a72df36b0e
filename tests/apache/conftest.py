"""Fixtures for the Apache tests: real namespaces and Debian's apache2 (root only)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import netns
from targets import apache

# `demo` (whose stack helpers these tests share) is a top-level directory of the checkout, not an
# installed package; `python -m pytest` finds it from the repo root, a bare `pytest` would not.
_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

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

"""Fixtures for the scenario tests: servers that are always stopped, pass or fail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vproxy import scenario as sc


@pytest.fixture
def servers() -> Iterator[sc.Servers]:
    """A process set; leaving the test kills every process started in it."""
    with sc.Servers() as s:
        yield s

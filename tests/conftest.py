"""Fixtures shared by the test modules, and the marks that let a part of the suite run on its own.

Every test is marked by what it needs (``root``, ``kernel``, ``fuse``, ``containerd``, ``corpus``: see
``tests.markers``), and skipped with the reason when this machine lacks it. A test that runs in this
process alone (no root, no mount, no containerd, no other program) and is not ``slow`` is marked ``unit``.
"""

from __future__ import annotations

import os

import pytest

from .cli import tmpfs
from .markers import NEEDS, NOT_UNIT, lacking, needs_of


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        needs = needs_of(item)
        for need in sorted(needs & set(NEEDS)):
            item.add_marker(need)
            if need in lacking():
                # first, so that its reason is the one reported (before an "empty parameter set" one)
                item.add_marker(pytest.mark.skip(reason=lacking()[need]), append=False)
        if not needs & NOT_UNIT and item.get_closest_marker("slow") is None:
            item.add_marker("unit")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A module-wide tmpfs directory for extracted trees and generated trees."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs (and extracting owners, devices and trusted xattrs) needs root")
    with tmpfs(tmp_path_factory.mktemp("tmpfs")) as path:
        yield path

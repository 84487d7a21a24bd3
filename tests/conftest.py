"""Shared fixtures. Each real stand-in lives in its own plugin under tests/fixtures/."""

from __future__ import annotations

import os
import pathlib

import pytest
from hypothesis import settings

pytest_plugins = sorted(
    f"tests.fixtures.{path.stem}"
    for path in (pathlib.Path(__file__).parent / "fixtures").glob("*.py")
    if path.stem != "__init__"
)
# The plugins import each other (hub.py signs with jwt.py's JwtIssuer): marked before any
# is imported, each has its asserts rewritten whichever imports it first.
pytest.register_assert_rewrite(*pytest_plugins)

# CI replays the same examples on every run: a property test that finds a new bug there
# would block everyone's submission at random. Developers' runs stay random, so the suites
# keep exploring (run with CI=true to reproduce what CI saw).
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


TESTS = pathlib.Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The folder says what kind of test it is, and the marker follows the folder.

    Unit tests mirror the package (the tests of ``tokensidecar/sidecar/refresh.py`` are in
    ``tests/sidecar/test_refresh.py``); ``tests/e2e/`` runs whole commands against the real
    stand-ins; ``tests/faults/`` and ``tests/gateway/faults/`` inject failures at scale.
    ``pytest -m "not e2e and not faults"`` is the quick loop.
    """
    for item in items:
        parts = pathlib.Path(str(item.path)).resolve().relative_to(TESTS).parts
        if parts[0] == "e2e":
            item.add_marker(pytest.mark.e2e)
        if "faults" in parts[:-1]:
            item.add_marker(pytest.mark.faults)

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

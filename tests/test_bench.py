"""The benchmarks still import after a change elsewhere (CI does not run them: they take
minutes and their numbers depend on the machine; ``make bench`` does)."""

from __future__ import annotations

import importlib
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"


# Helpers, and a script kept for its old name that runs propagation.main() on import of __main__.
NOT_BENCHMARKS = {"common", "propagation_secret"}


@pytest.mark.parametrize("script", sorted(path.stem for path in BENCH.glob("*.py")))
def test_every_benchmark_imports(script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import their sibling ``common``
    try:
        module = importlib.import_module(script)
        if script not in NOT_BENCHMARKS:
            assert callable(getattr(module, "main", None)), f"bench/{script}.py has no main()"
    finally:
        sys.modules.pop(script, None)

# The dev loop. `make demo` and `make test` work on a fresh machine: they create .venv.
# VENV picks another virtualenv directory: CI uses `make test VENV=.ci/venv`, so running
# .ci/run on a developer's checkout never touches their .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck bench docs clean

$(BIN)/tokensidecar: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,e2e]'
	@touch $@

demo: $(BIN)/tokensidecar ## run the whole flow locally: OpenBao, Hub stand-in, sidecar, 3 rotations
	$(BIN)/tokensidecar demo --log-format text

test: $(BIN)/tokensidecar ## the test suite CI runs (real OpenBao, kmock, Hub stand-in, kserve-storage)
	$(BIN)/pytest -q

lint: $(BIN)/tokensidecar ## ruff, ruff format, mypy --strict, hadolint, the generated references
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy tokensidecar
	$(BIN)/hadolint Dockerfile
	$(BIN)/python -m tokensidecar.reference --check

bench: $(BIN)/tokensidecar ## every benchmark; each prints one JSON object (also saved to bench/results/)
	$(BIN)/python bench/run_all.py

docs: $(BIN)/tokensidecar ## regenerate docs/configuration.md and docs/metrics.md from the code
	$(BIN)/python -m tokensidecar.reference

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

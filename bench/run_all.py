"""Run every benchmark, one after the other, and keep what each printed.

Each benchmark is its own script that prints ONE JSON object; this runner starts each as
a subprocess (so one benchmark's imports, threads and servers never skew the next),
stores the object in ``bench/results/<name>.json`` and prints it. They run in sequence,
not in parallel: on a 2-core machine, parallel benchmarks would measure each other.

``make bench`` runs the full set with the issue's parameters (footprint for 10 minutes,
fleet with N=100 and N=1000 and a 60 s outage): about 25 minutes. ``--quick`` runs every
script with small parameters (about 2 minutes) to check that they all still work.

    .venv/bin/python bench/run_all.py [--quick] [--only cold_start,propagation]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# name -> (full arguments, quick arguments)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "cold_start": ([], ["--starts", "3"]),
    "propagation": ([], ["--changes", "30", "--vault-changes", "5", "--rotations", "3"]),
    "hub_verify": ([], ["--samples", "20"]),
    "webhook": ([], ["--seconds", "1"]),
    "fleet": ([], ["--sizes", "50", "--outage", "5", "--interval", "2", "--max-backoff", "4"]),
    "footprint": ([], ["--seconds", "15"]),
}


RUNTIME_VENV = HERE / ".runtime-venv"


def runtime_python() -> str:
    """A virtualenv with the project and its runtime dependencies only — what the image
    ships (the Dockerfile pip-installs the wheel) — for the sidecar under test. The
    benchmark harness itself (kmock, the Hub stand-in, OpenBao helpers) stays in .venv."""
    python = RUNTIME_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(RUNTIME_VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(HERE.parent)],
        check=True,
    )
    return str(python)


def run(name: str, arguments: list[str], *, env: dict[str, str]) -> dict[str, object]:
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, str(HERE / f"{name}.py"), *arguments],
        cwd=HERE.parent,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"error: bench/{name}.py exited with {completed.returncode}")
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"error: bench/{name}.py printed no JSON object")
    result: dict[str, object] = json.loads(lines[-1])
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    result["arguments"] = arguments
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small parameters: check the scripts work")
    parser.add_argument("--only", default="", help="comma list of benchmark names")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        raise SystemExit(f"error: unknown benchmark(s): {', '.join(sorted(unknown))}")
    # Quick runs are smoke tests: their numbers must not overwrite the real ones.
    target = RESULTS / "quick" if args.quick else RESULTS
    target.mkdir(parents=True, exist_ok=True)
    # As in the image: the runtime-only install, and glibc limited to 2 malloc arenas.
    env = {**os.environ, "BENCH_SIDECAR_PYTHON": runtime_python(), "MALLOC_ARENA_MAX": "2"}
    for name in names:
        full, quick = BENCHMARKS[name]
        result = run(name, quick if args.quick else full, env=env)
        result["sidecar_install"] = (
            "runtime-only virtualenv (pip install ., as the Dockerfile), MALLOC_ARENA_MAX=2"
        )
        (target / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

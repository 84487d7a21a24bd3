"""What every benchmark shares: the machine description, percentiles, process sampling, output.

Each benchmark prints ONE JSON object (its method, the machine and its numbers), so
``bench/run_all.py`` can store it and ``docs/performance.md`` can quote it. The scripts
reuse the test suite's real stand-ins (OpenBao dev server, the kmock API server, the Hub
stand-in, ``SidecarProcess``), so the repository root goes on ``sys.path`` here.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# One way to stop a child, the demo's; the benchmarks import it from here.
from tokensidecar.demo.harness import stop_process  # noqa: E402, F401

# Before any benchmark pins itself to one CPU (bench/webhook.py does), like `nproc`.
_CPUS_AT_START = len(os.sched_getaffinity(0))

# The comparison points every benchmark quotes (documented defaults, see DESIGN.md).
ANCHORS = {
    "kubelet_secret_volume_propagation_seconds": "60-90",
    "vault_agent_static_secret_rerender_seconds": 300,
    "external_secrets_refresh_interval_seconds": 3600,
}


def machine() -> dict[str, Any]:
    """nproc, CPU model, RAM and Python: what a reader needs to compare numbers."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": _CPUS_AT_START,
        "cpu_model": model,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def percentile(samples: Iterable[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: every reported value was observed)."""
    ordered = sorted(samples)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def distribution(samples: list[float], *, unit: str = "ms") -> dict[str, float | int]:
    """count, p50/p95/p99, min/max/mean of samples already expressed in ``unit``."""
    return {
        "count": len(samples),
        f"p50_{unit}": round(percentile(samples, 0.50), 3),
        f"p95_{unit}": round(percentile(samples, 0.95), 3),
        f"p99_{unit}": round(percentile(samples, 0.99), 3),
        f"min_{unit}": round(min(samples), 3),
        f"max_{unit}": round(max(samples), 3),
        f"mean_{unit}": round(statistics.fmean(samples), 3),
    }


# The interpreter that runs the sidecar under test. `bench/run_all.py` points it at a
# runtime-only virtualenv (`pip install .`, as the Dockerfile installs the wheel), so the
# numbers are the shipped program's and not inflated by test tools that optional imports
# pick up (the kubernetes client imports google-auth and kubernetes_validate when present).
SIDECAR_PYTHON = os.environ.get("BENCH_SIDECAR_PYTHON") or sys.executable


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without any TOKENSIDECAR_/VAULT_/HF_ setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENSIDECAR_", "VAULT_", "HF_"))}
    env.update(extra)
    return env


def spawn_sidecar(
    env: Mapping[str, str], *, command: str = "run", log_path: Path | None = None
) -> subprocess.Popen[bytes]:
    """``python -m tokensidecar <command>`` as kubelet starts it: settings in the environment."""
    sink = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [SIDECAR_PYTHON, "-m", "tokensidecar", command],
            env=dict(env),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    finally:
        if log_path:
            sink.close()  # type: ignore[union-attr]


def wait_for_file_content(path: Path, expected: str, *, timeout: float, interval: float = 0.0005) -> float:
    """Poll ``path`` until it holds ``expected``; return the monotonic time it was seen."""
    deadline = time.perf_counter() + timeout
    while True:
        try:
            if path.read_text().strip() == expected:
                return time.perf_counter()
        except FileNotFoundError:
            pass
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{path} did not hold the expected token within {timeout}s")
        time.sleep(interval)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def process_usage(pid: int) -> tuple[float, float]:
    """(RSS in MiB, CPU seconds user+system) of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return resident_pages * PAGE_SIZE / 1024 / 1024, cpu_seconds


def emit(result: Mapping[str, Any]) -> None:
    """Print the benchmark's one JSON object."""
    print(json.dumps({**result, "machine": machine()}, indent=None))

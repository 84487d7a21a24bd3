"""Secret update → token file propagation through ``tokensidecar run`` (kubernetes-secret source).

Starts the fake Kubernetes API of the test suite (kmock over real HTTP) and the real
sidecar as a subprocess, then updates the Secret N times, each time timing from the write
to the moment the new token is readable in the token file (polled every 0.5 ms).
Prints one JSON object. Usage: ``python bench/propagation_secret.py [--updates 200]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fixtures.kube import KubeApi
from tests.sidecar_process import SidecarProcess


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        (directory / "out").mkdir()
        api = KubeApi(directory=directory).start()
        try:
            api.put_secret("hf-token", {"token": "hf_bench_000000"})
            process = SidecarProcess(
                token_file=directory / "out" / "token",
                env={
                    "TOKENSIDECAR_SOURCE": "kubernetes-secret",
                    "TOKENSIDECAR_SECRET_NAME": "hf-token",
                    "KUBECONFIG": str(api.kubeconfig_path),
                    "TOKENSIDECAR_LOG_LEVEL": "warning",
                },
            )
            with process:
                process.wait_for_token("hf_bench_000000", timeout=15)
                api.wait_for_watches(1)
                delays: list[float] = []
                for number in range(1, args.updates + 1):
                    value = f"hf_bench_{number:06d}"
                    started = time.perf_counter()
                    api.put_secret("hf-token", {"token": value})
                    while process.token() != value:
                        if time.perf_counter() - started > 10:
                            raise TimeoutError(f"update {number} did not reach the file in 10 s")
                        time.sleep(0.0005)
                    delays.append(time.perf_counter() - started)
        finally:
            api.stop()
    millis = [d * 1000 for d in delays]
    print(
        json.dumps(
            {
                "benchmark": "secret_update_to_token_file",
                "updates": len(millis),
                "p50_ms": round(percentile(millis, 0.50), 2),
                "p90_ms": round(percentile(millis, 0.90), 2),
                "p99_ms": round(percentile(millis, 0.99), 2),
                "max_ms": round(max(millis), 2),
                "mean_ms": round(statistics.fmean(millis), 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

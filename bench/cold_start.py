"""Cold start: process start → first token on disk, for ``tokensidecar run``.

Method: for each source, the real command is started ``--starts`` times as a fresh
process (``python -m tokensidecar run``, settings in the environment, a new empty output
directory each time); the clock starts just before ``Popen`` and stops when the token
file holds the expected token (polled every 0.5 ms). The process is then stopped with
SIGTERM. Sources:

* ``vault``: a local OpenBao dev server, KV v2, AppRole login (so the time includes a
  real login, a KV read and the publish), verification off;
* ``kubernetes-secret``: the kmock API server of the test suite over HTTP (the time
  includes loading the kubernetes client, a GET and the watch set-up);
* ``file``: a local file (the floor: no client library, no network).

The interpreter's own start (``python -c pass``) and ``python -c "import tokensidecar.cli"``
are measured the same way, so the share that is ours is visible.

    .venv/bin/python bench/cold_start.py [--starts 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from common import (
    SIDECAR_PYTHON,
    clean_env,
    distribution,
    emit,
    spawn_sidecar,
    stop_process,
    wait_for_file_content,
)

from tests.fixtures.kube import KubeApi
from tests.sidecar_process import free_port
from tokensidecar.demo.openbao import DevServer

GOAL_MS = 400.0
TOKEN = "hf_coldstartbenchtoken0001"


def time_command(argv: list[str], *, runs: int) -> float:
    """Median wall time of a short command, in ms."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True)
        samples.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(samples), 1)


def measure_starts(*, env: Mapping[str, str], starts: int, scratch: Path) -> list[float]:
    samples: list[float] = []
    for number in range(starts):
        out = scratch / f"run-{number}"
        out.mkdir()
        token_file = out / "token"
        process_env = clean_env(
            {
                **env,
                "TOKENSIDECAR_TOKEN_FILE": str(token_file),
                "TOKENSIDECAR_LISTEN": f"127.0.0.1:{free_port()}",
                "TOKENSIDECAR_VERIFY": "none",
                "TOKENSIDECAR_LOG_LEVEL": "warning",
            }
        )
        started = time.perf_counter()
        process = spawn_sidecar(process_env, log_path=scratch / "sidecar.log")
        try:
            seen = wait_for_file_content(token_file, TOKEN, timeout=30)
            samples.append((seen - started) * 1000)
        finally:
            stop_process(process)
    return samples


def vault_starts(*, starts: int, scratch: Path) -> list[float]:
    with DevServer() as server:
        server.put_kv("secret/hf/bench", {"token": TOKEN})
        policy = server.read_policy_for("secret/hf/bench")
        role_id, secret_id = server.create_approle("bench", policies=[policy])
        (scratch / "role-id").write_text(role_id)
        (scratch / "secret-id").write_text(secret_id)
        env = {
            "TOKENSIDECAR_SOURCE": "vault",
            "VAULT_ADDR": server.addr,
            "TOKENSIDECAR_VAULT_PATH": "secret/hf/bench",
            "TOKENSIDECAR_VAULT_AUTH": "approle",
            "TOKENSIDECAR_VAULT_ROLE_ID_FILE": str(scratch / "role-id"),
            "TOKENSIDECAR_VAULT_SECRET_ID_FILE": str(scratch / "secret-id"),
        }
        return measure_starts(env=env, starts=starts, scratch=scratch)


def secret_starts(*, starts: int, scratch: Path) -> list[float]:
    api = KubeApi(directory=scratch).start()
    try:
        api.put_secret("hf-token", {"token": TOKEN})
        env = {
            "TOKENSIDECAR_SOURCE": "kubernetes-secret",
            "TOKENSIDECAR_SECRET_NAME": "hf-token",
            "KUBECONFIG": str(api.kubeconfig_path),
        }
        return measure_starts(env=env, starts=starts, scratch=scratch)
    finally:
        api.stop()


def file_starts(*, starts: int, scratch: Path) -> list[float]:
    source = scratch / "source-token"
    source.write_text(TOKEN)
    env = {"TOKENSIDECAR_SOURCE": "file", "TOKENSIDECAR_SOURCE_FILE": str(source)}
    return measure_starts(env=env, starts=starts, scratch=scratch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=20, help="fresh process starts per source")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as directory:
        for name, measure in (
            ("vault", vault_starts),
            ("kubernetes-secret", secret_starts),
            ("file", file_starts),
        ):
            scratch = Path(directory) / name
            scratch.mkdir()
            samples = measure(starts=args.starts, scratch=scratch)
            summary = distribution(samples)
            results[name] = {**summary, "goal_ms": GOAL_MS, "goal_met": summary["p50_ms"] <= GOAL_MS}
    emit(
        {
            "benchmark": "cold_start",
            "method": (
                "fresh `python -m tokensidecar run` per start; clock from just before Popen to the "
                "token file holding the token (0.5 ms polling); vault: local OpenBao dev server, "
                "KV v2, AppRole login; kubernetes-secret: kmock API server over HTTP; file: a local file; "
                "verify=none"
            ),
            "starts_per_source": args.starts,
            "interpreter_start_ms": time_command([SIDECAR_PYTHON, "-c", "pass"], runs=10),
            "import_cli_ms": time_command([SIDECAR_PYTHON, "-c", "import tokensidecar.cli"], runs=10),
            "by_source": results,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

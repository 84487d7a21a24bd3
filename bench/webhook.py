"""Admission throughput and latency of ``tokensidecar webhook`` over TLS, on one core.

The server is the real command (``python -m tokensidecar webhook``) with a CA and serving
certificate made by ``cryptography``, pinned to one CPU with ``os.sched_setaffinity``.
The load comes from this process, pinned to another CPU when there is one: an aiohttp
client over keep-alive TLS connections (load tool: aiohttp), ``concurrency`` requests in
flight, each an AdmissionReview of a KServe predictor pod that gets injected (the
expensive path: the full patch is computed, serialised and base64-encoded).

Each mode is measured on the same server: ``sidecar`` (the pod gets the native sidecar,
Vault source) and ``gateway`` (``tokensidecar.io/mode: gateway``: a projected identity
volume, ``HF_ENDPOINT`` and ``HF_TOKEN_PATH``, no sidecar).

``--flood`` adds the memory check of issue 11: the peak RSS (``VmHWM``) of a fresh server
process under 16 concurrent AdmissionReviews of 3.5 MiB (refused unread: past what the
API server sends) and of the largest size accepted (parsed in turn).

Prints one JSON object: per mode and concurrency level, admissions/s and p50/p99 latency in ms.

    .venv/bin/python bench/webhook.py [--seconds 5] [--concurrency 1,16,64]
                                      [--modes sidecar,gateway] [--flood]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
from common import SIDECAR_PYTHON, emit, stop_process

from tokensidecar.webhook import certs

GOAL_ADMISSIONS_PER_SECOND = 1000
GOAL_P99_MS = 10.0

GATEWAY_URL = "http://tokensidecar-gateway.tokensidecar-system.svc:8080"
SERVICE = "tokensidecar-webhook"
NAMESPACE = "tokensidecar-system"


def predictor_pod(mode: str = "sidecar") -> dict[str, Any]:
    """A KServe huggingface predictor pod with its storage-initializer, asking for injection."""
    annotations = (
        {"tokensidecar.io/inject": "true", "tokensidecar.io/mode": "gateway"}
        if mode == "gateway"
        else {
            "tokensidecar.io/inject": "true",
            "tokensidecar.io/vault-path": "secret/hf/llama",
            "tokensidecar.io/vault-role": "llama-predictor",
            "tokensidecar.io/vault-addr": "https://vault.vault:8200",
        }
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "llama-predictor-5d8f9c7b6-",
            "namespace": "models",
            "labels": {"serving.kserve.io/inferenceservice": "llama", "component": "predictor"},
            "annotations": annotations,
        },
        "spec": {
            "initContainers": [
                {
                    "name": "storage-initializer",
                    "image": "kserve/storage-initializer:v0.15.0",
                    "args": ["hf://meta-llama/Llama-3.1-8B-Instruct", "/mnt/models"],
                    "env": [
                        {
                            "name": "HF_TOKEN",
                            "valueFrom": {"secretKeyRef": {"name": "hf-secret", "key": "HF_TOKEN"}},
                        }
                    ],
                    "volumeMounts": [{"name": "kserve-provision-location", "mountPath": "/mnt/models"}],
                }
            ],
            "containers": [
                {
                    "name": "kserve-container",
                    "image": "kserve/huggingfaceserver:v0.15.0",
                    "args": ["--model_name=llama", "--model_dir=/mnt/models"],
                    "env": [{"name": "PORT", "value": "8080"}],
                    "volumeMounts": [
                        {"name": "kserve-provision-location", "mountPath": "/mnt/models", "readOnly": True},
                        {
                            "name": "kube-api-access-7xk2p",
                            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                            "readOnly": True,
                        },
                    ],
                }
            ],
            "volumes": [
                {"name": "kserve-provision-location", "emptyDir": {}},
                {"name": "kube-api-access-7xk2p", "projected": {"sources": []}},
            ],
        },
    }


def review_body(uid: int, mode: str = "sidecar") -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": f"00000000-0000-0000-0000-{uid:012d}",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "models",
                "operation": "CREATE",
                "object": predictor_pod(mode),
            },
        }
    ).encode()


def start_server(directory: Path, *, cpu: int) -> tuple[subprocess.Popen[str], int]:
    ca = certs.generate_ca()
    serving = certs.issue_serving_cert(
        ca, dns_names=certs.service_dns_names(service=SERVICE, namespace=NAMESPACE)
    )
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    (directory / "tls.crt").write_bytes(serving.cert_pem)
    key_file = directory / "tls.key"
    key_file.write_bytes(serving.key_pem)
    key_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSIDECAR_")}
    env.update(
        TOKENSIDECAR_WEBHOOK_LISTEN="127.0.0.1:0",
        TOKENSIDECAR_TLS_CERT_FILE=str(directory / "tls.crt"),
        TOKENSIDECAR_TLS_KEY_FILE=str(key_file),
        TOKENSIDECAR_INJECT_VAULT_ADDR="https://vault.vault:8200",
        TOKENSIDECAR_INJECT_GATEWAY_URL=GATEWAY_URL,
    )
    # Default log level (info), as deployed: one JSON line per injected pod is part of the cost.
    process = subprocess.Popen(
        [SIDECAR_PYTHON, "-m", "tokensidecar", "webhook"], env=env, stderr=subprocess.PIPE, text=True
    )
    os.sched_setaffinity(process.pid, {cpu})
    assert process.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            raise RuntimeError(f"webhook exited with {process.returncode}")
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == "webhook listening":
            # Drain the rest of stderr so the pipe never fills and blocks the server.
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, int(entry["port"])
    raise RuntimeError("webhook did not start")


async def load(*, port: int, ca_file: Path, concurrency: int, seconds: float, mode: str) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False  # 127.0.0.1 is not a Service name; the chain is still verified
    bodies = [review_body(i, mode) for i in range(256)]
    latencies: list[float] = []
    url = f"https://127.0.0.1:{port}/mutate"
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm up: open the connections (TLS handshakes are not what is measured).
        await asyncio.gather(*(session.post(url, data=bodies[0]) for _ in range(concurrency)))
        deadline = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            count = offset
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with session.post(url, data=bodies[count % len(bodies)]) as reply:
                    payload = await reply.read()
                    if reply.status != 200 or b'"patchType"' not in payload:
                        raise RuntimeError(f"unexpected reply {reply.status}: {payload[:200]!r}")
                latencies.append(time.perf_counter() - started)
                count += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "admissions_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
        "requests": len(latencies),
    }


def measure_flood() -> dict[str, Any]:
    """Peak RSS of a fresh ``tokensidecar webhook`` under 16 concurrent large reviews."""
    from tests.faults.webhook_flood import MIB, flood, flood_review, webhook_process
    from tokensidecar.webhook.settings import MAX_REVIEW_BYTES

    numbers: dict[str, Any] = {"concurrent": 16, "memory_limit_mib": 192}
    for label, size in (("3.5_mib", int(3.5 * MIB)), ("largest_accepted", MAX_REVIEW_BYTES)):
        with (
            tempfile.TemporaryDirectory() as directory,
            webhook_process(Path(directory), python=SIDECAR_PYTHON) as server,
        ):
            baseline = server.peak_rss_bytes()
            started = time.perf_counter()
            replies = flood(server, [flood_review(size=size, uid=f"flood-{n}") for n in range(16)])
            numbers[label] = {
                "body_bytes": size,
                "baseline_rss_mib": round(baseline / MIB, 1),
                "peak_rss_mib": round(server.peak_rss_bytes() / MIB, 1),
                "statuses": sorted({reply.status for reply in replies}),
                "seconds": round(time.perf_counter() - started, 2),
                "alive": server.alive(),
            }
    return numbers


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per concurrency level")
    parser.add_argument("--concurrency", default="1,16,64", help="comma list of in-flight requests")
    parser.add_argument("--modes", default="sidecar,gateway", help="comma list of injection modes")
    parser.add_argument("--flood", action="store_true", help="also measure peak RSS under 16 x 3.5 MiB")
    args = parser.parse_args()
    levels = [int(part) for part in args.concurrency.split(",")]
    modes = [part.strip() for part in args.modes.split(",") if part.strip()]
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu = cpus[0]
    client_cpus = set(cpus[1:]) or {server_cpu}
    with tempfile.TemporaryDirectory() as directory:
        process, port = start_server(Path(directory), cpu=server_cpu)
        os.sched_setaffinity(0, client_cpus)
        try:
            # Modes interleaved per level, so a change in the machine's load hits both alike.
            results: dict[str, dict[str, Any]] = {mode: {} for mode in modes}
            for level in levels:
                for mode in modes:
                    results[mode][str(level)] = asyncio.run(
                        load(
                            port=port,
                            ca_file=Path(directory) / "ca.crt",
                            concurrency=level,
                            seconds=args.seconds,
                            mode=mode,
                        )
                    )
        finally:
            stop_process(process)
    for by_level in results.values():
        for numbers in by_level.values():
            numbers["goal_met"] = (
                numbers["admissions_per_second"] >= GOAL_ADMISSIONS_PER_SECOND
                and numbers["p99_ms"] <= GOAL_P99_MS
            )
    flood = measure_flood() if args.flood else None
    emit(
        {
            "benchmark": "webhook",
            "what": "tokensidecar webhook admissions over TLS",
            "goal": f">= {GOAL_ADMISSIONS_PER_SECOND} admissions/s with p99 <= {GOAL_P99_MS} ms on one core",
            "load_tool": "aiohttp client (keep-alive TLS connections), separate process",
            "server_cpus": [server_cpu],
            "client_cpus": sorted(client_cpus),
            "seconds_per_level": args.seconds,
            "review": "KServe predictor pod with storage-initializer, injected (sidecar: vault source)",
            "by_mode": {mode: {"by_concurrency": by_level} for mode, by_level in results.items()},
            **({"flood": flood} if flood is not None else {}),
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

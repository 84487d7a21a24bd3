"""The gateway side by side with direct downloads, olah and nginx (issue 14's five benchmarks).

Everything runs on this machine over loopback: the Hub stand-in as the upstream (its LFS
files behind a 302 to its CDN origin, as the real Hub), the real ``tokensidecar gateway``
process (TokenReview through the kmock API server, the policy file, a ``file`` upstream
credential), olah 0.5.4 in front of the same stand-in (online mode, its cache on disk), and
nginx from Debian serving the gateway's own cached blob as a static file (the ceiling).

1. ``upstream_requests``: N = 1, 10, 50 concurrent cold ``snapshot_download``\\ s of an
   F-file repo (N threads of one client process, each its own cache dir), counted in the
   stand-in's request log (Hub API + resolve; CDN GETs separately), then a warm download at
   the pinned commit. Goal: the gateway's count is ``2 + 2F`` whatever N, and 0 warm.
2. ``serving``: a cached file (``--serve-mib``) to 1 and 8 concurrent ``curl -o /dev/null``;
   GB/s = bytes received / wall time. Goal: >= 0.8x nginx and ahead of olah.
3. ``ttfb_miss``: time to the first body byte of a GET on a never-seen 1 MiB LFS file,
   direct (Hub 302 + CDN, as huggingface_hub does it) vs through the gateway. Goal: within 5 ms.
4. ``rss_miss``: the gateway's peak RSS while streaming a cold ``--serve-mib`` file to 20
   clients at once (sampled from /proc every 50 ms). Goal: flat, ≤ 100 MiB.
5. ``authz_hit``: HEAD of a cached file with a cached TokenReview, p50/p99 over
   ``--requests`` sequential requests, against the same HEAD with the Gatekeeper's answer
   taken from the same request path (the HTTP round trip is the floor). Goal: p99 ≤ 2 ms.

    .venv/bin/python bench/gateway.py [--files 4] [--serve-mib 1024] [--skip olah,nginx]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from common import ROOT, distribution, emit, process_usage, stop_process

from tests.fixtures.jwt import JwtIssuer
from tests.fixtures.kube import KubeApi
from tests.gateway.harness import GatewayProcess, olah_process
from tests.sidecar_process import free_port, wait_for
from tokensidecar.demo.hub import HubStandIn, serve_in_thread

REPO = "acme/private-model"
POLICY = "rules:\n  - subjects: [{namespace: team-a, serviceAccount: predictor}]\n    repos: [acme/*]\n"
MIB = 1024 * 1024


def repo_files(count: int, *, salt: int) -> tuple[dict[str, bytes], list[str]]:
    """``count`` files for the snapshot benchmark, half of them LFS (1 MiB each)."""
    files = {f"small-{i}.json": b'{"i": %d, "salt": %d}\n' % (i, salt) for i in range(count - count // 2)}
    files.update(
        {f"weights/shard-{i}.safetensors": bytes([i, salt % 256]) * (MIB // 2) for i in range(count // 2)}
    )
    lfs = [name for name in files if name.endswith(".safetensors")]
    return files, lfs


def snapshot_clients(
    endpoint: str, *, token_path: Path | None, token: str | None, n: int, home: Path, revision: str | None
) -> dict[str, Any]:
    """N concurrent snapshot_downloads (threads of one fresh client process)."""
    code = f"""
import json, sys, threading, time
from huggingface_hub import snapshot_download
errors = []
def one(i):
    try:
        snapshot_download({REPO!r}, cache_dir={str(home)!r} + f"/c{{i}}", revision={revision!r})
    except Exception as exc:
        errors.append(type(exc).__name__ + ": " + str(exc)[:200])
started = time.perf_counter()
threads = [threading.Thread(target=one, args=(i,)) for i in range({n})]
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps({{"seconds": time.perf_counter() - started, "errors": errors[:3], "failed": len(errors)}}))
"""
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        {
            "HF_ENDPOINT": endpoint,
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_XET": "1",
            "PYTHONPATH": str(ROOT),
        }
    )
    if token_path is not None:
        env["HF_TOKEN_PATH"] = str(token_path)
    if token is not None:
        env["HF_TOKEN"] = token
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    try:
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except (IndexError, ValueError):
        return {"failed": n, "errors": [done.stderr[-500:]]}


def count(hub: HubStandIn, endpoint: str, **clients: Any) -> dict[str, Any]:
    """Run the clients; what the upstream saw meanwhile, from its own request log."""
    before_api, before_cdn = len(hub.requests), len(hub.cdn_requests)
    result = snapshot_clients(endpoint, **{"revision": None, **clients})
    return {
        "upstream_requests": len(hub.requests) - before_api,
        "cdn_requests": len(hub.cdn_requests) - before_cdn,
        "seconds": round(result.get("seconds", float("nan")), 2),
        "failed": result.get("failed"),
        **({"errors": result["errors"]} if result.get("errors") else {}),
    }


def curl_throughput(url: str, clients: int, headers: dict[str, str], size: int) -> dict[str, Any]:
    args = [arg for k, v in headers.items() for arg in ("-H", f"{k}: {v}")]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", *args, url], stdout=subprocess.PIPE
        )
        for _ in range(clients)
    ]
    received = sum(int((p.communicate()[0] or b"0").decode() or 0) for p in procs)
    seconds = time.perf_counter() - started
    return {
        "clients": clients,
        "gbytes_per_s": round(received / seconds / 1e9, 3),
        "complete": received == clients * size,
    }


async def ttfb(url: str, headers: dict[str, str]) -> float:
    """HEAD first, untimed, as huggingface_hub does; then the GET it makes, to its first byte.

    Directly, that GET goes to the CDN the HEAD's redirect names (without Authorization);
    through the gateway, to the gateway (which fills from the upstream and streams at once).
    """
    async with aiohttp.ClientSession() as session:
        async with session.head(url, headers=headers, allow_redirects=False) as head:
            location = head.headers.get("Location")
        target, sent = (location, {}) if location else (url, headers)
        started = time.perf_counter()
        async with session.get(target, headers=sent) as response:
            await response.content.readany()
            return (time.perf_counter() - started) * 1000


def start_olah(root: Path, hub: HubStandIn) -> tuple[subprocess.Popen[bytes], str]:
    """olah 0.5.4 online, in front of the stand-in; everything on loopback."""
    port = free_port()
    hub_netloc, cdn_netloc = hub.url.split("//")[1], hub.cdn_url.split("//")[1]
    (root / "olah.toml").write_text(
        "\n".join(
            [
                "[basic]",
                'host = "127.0.0.1"',
                f"port = {port}",
                f'repos-path = "{root / "repos"}"',
                'hf-scheme = "http"',
                f'hf-netloc = "{hub_netloc}"',
                f'hf-lfs-netloc = "{cdn_netloc}"',
                'mirror-scheme = "http"',
                f'mirror-netloc = "127.0.0.1:{port}"',
                f'mirror-lfs-netloc = "127.0.0.1:{port}"',
                "",
            ]
        )
    )
    log = open(root / "olah.log", "wb")  # noqa: SIM115 - the child keeps it
    process = olah_process(config=root / "olah.toml", port=port, root=root, log=log)
    url = f"http://127.0.0.1:{port}"
    import httpx2

    def up() -> bool:
        try:
            return httpx2.get(f"{url}/api/whoami-v2", timeout=2).status_code > 0
        except httpx2.HTTPError:
            return False

    wait_for(up, timeout=60, interval=0.2)
    return process, url


def start_nginx(root: Path, directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    (root / "nginx.conf").write_text(
        f"daemon off; user root; worker_processes auto; pid {root}/nginx.pid; error_log {root}/error.log;\n"
        f"events {{ worker_connections 1024; }}\n"
        f"http {{ access_log off; sendfile on; tcp_nopush on;"
        + "".join(
            f" {kind}_temp_path {root}/tmp;" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + f" server {{ listen 127.0.0.1:{port}; root {directory}; }} }}\n"
    )
    (root / "tmp").mkdir(exist_ok=True)
    process = subprocess.Popen(["nginx", "-p", str(root), "-c", str(root / "nginx.conf")])
    import httpx2

    wait_for(lambda: _reachable(httpx2, f"http://127.0.0.1:{port}/"), timeout=20, interval=0.1)
    return process, f"http://127.0.0.1:{port}"


def _reachable(httpx2: Any, url: str) -> bool:
    try:
        httpx2.get(url, timeout=1)
        return True
    except httpx2.HTTPError:
        return False


@dataclass
class Stack:
    """One upstream (a fresh Hub stand-in), a fresh gateway in front of it, and olah."""

    hub: HubStandIn
    upstream_token: str
    gateway: GatewayProcess
    olah: tuple[subprocess.Popen[bytes], str] | None


@contextlib.contextmanager
def stack(
    root: Path, kube: KubeApi, files: dict[str, bytes], lfs: list[str], *, olah: bool
) -> Iterator[Stack]:
    """Everything cold: a new stand-in, gateway cache and olah cache for each use."""
    root.mkdir(parents=True)
    hub = HubStandIn(files=files, lfs_files=lfs)
    with serve_in_thread(hub):
        token = hub.issue_token()
        gateway = GatewayProcess(
            directory=root / "gw",
            upstream=hub.url,
            upstream_token=token,
            kubeconfig=kube.kubeconfig_path,
            policy=POLICY,
        )
        gateway.start()
        olah_process = None
        try:
            wait_for(lambda: gateway.get("/readyz")[0] == 200, timeout=60)
            if olah:
                (root / "olah").mkdir()
                olah_process = start_olah(root / "olah", hub)
            yield Stack(hub=hub, upstream_token=token, gateway=gateway, olah=olah_process)
        finally:
            gateway.stop()
            if olah_process is not None:
                stop_process(olah_process[0])


def upstream_requests(
    root: Path, kube: KubeApi, token_path: Path, *, files: int, counts: list[int], olah: bool
) -> dict[str, Any]:
    """Benchmark 1: each N against a cold upstream, gateway and olah (and a unique repo content)."""
    rounds = []
    for n in counts:
        content, lfs = repo_files(files, salt=n)
        with stack(root / f"round-{n}", kube, content, lfs, olah=olah) as up:
            as_user = {"token_path": None, "token": up.upstream_token, "n": n}
            as_workload = {"token_path": token_path, "token": None, "n": n}
            row: dict[str, Any] = {"clients": n}
            row["direct"] = count(up.hub, up.hub.url, home=root / f"d{n}", **as_user)
            if up.olah is not None:
                row["olah"] = count(up.hub, up.olah[1], home=root / f"o{n}", **as_user)
            row["gateway"] = count(up.hub, up.gateway.url, home=root / f"g{n}", **as_workload)
            pinned = {"revision": up.hub.commit_sha, "home": root / f"p{n}", **as_workload}
            row["gateway_warm_pinned"] = count(up.hub, up.gateway.url, **pinned)
        rounds.append(row)
    return {"goal_gateway": f"2 + 2F = {2 + 2 * files}, 0 warm", "rounds": rounds}


def peak_rss_while(pid: int, action: Any) -> tuple[float, float, Any]:
    """(idle RSS, peak RSS) in MiB of ``pid`` while ``action()`` runs, sampled every 50 ms."""
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(process_usage(pid)[0])
            time.sleep(0.05)

    idle = process_usage(pid)[0]
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = action()
    finally:
        stop.set()
        sampler.join()
    return idle, max(samples, default=idle), result


def serving_and_latency(
    root: Path, kube: KubeApi, auth: dict[str, str], args: argparse.Namespace, skip: set[str]
) -> dict[str, Any]:
    """Benchmarks 2-5 on one stack holding the big file and the TTFB probes."""
    size = args.serve_mib * MIB
    big, probes = "serve/big.safetensors", [f"probe/{i}.safetensors" for i in range(args.ttfb_samples)]
    files = {"config.json": b"{}\n", big: hashlib.sha256(b"big").digest() * (size // 32)}
    files.update({p: bytes([i]) * MIB for i, p in enumerate(probes)})
    result: dict[str, Any] = {}
    with stack(root / "serving", kube, files, [big, *probes], olah="olah" not in skip) as up:
        gateway, hub = up.gateway, up.hub
        url = f"{gateway.url}/{REPO}/resolve/main/{big}"
        assert gateway.process is not None
        # 4. the first download of the big file: a miss, streamed to 20 clients at once.
        idle, peak, cold = peak_rss_while(gateway.process.pid, lambda: curl_throughput(url, 20, auth, size))
        result["rss_miss"] = {
            "clients": 20,
            "idle_rss_mib": round(idle, 1),
            "peak_rss_mib": round(peak, 1),
            "all_complete": cold["complete"],
            "upstream_body_gets": len(hub.cdn_requests),
            "goal_mib": 100,
        }
        # 2. the cached file to 1 and 8 clients: gateway, nginx (same blob file), olah (its cache).
        serving: dict[str, Any] = {"goal": ">= 0.8x nginx, ahead of olah"}
        serving["gateway"] = [curl_throughput(url, c, auth, size) for c in (1, 8)]
        if "nginx" not in skip and shutil.which("nginx"):
            (root / "nginx").mkdir()
            nginx, nginx_url = start_nginx(root / "nginx", gateway.cache_dir / "blobs")
            etag = hashlib.sha256(files[big]).hexdigest()
            try:
                serving["nginx"] = [curl_throughput(f"{nginx_url}/{etag}", c, {}, size) for c in (1, 8)]
            finally:
                stop_process(nginx)
        if up.olah is not None:
            olah_url, olah_auth = (
                f"{up.olah[1]}/{REPO}/resolve/main/{big}",
                {"Authorization": f"Bearer {up.upstream_token}"},
            )
            warm = curl_throughput(olah_url, 1, olah_auth, size)  # fills olah's cache
            serving["olah"] = (
                [curl_throughput(olah_url, c, olah_auth, size) for c in (1, 8)]
                if warm["complete"]
                else {"error": "olah did not serve the file"}
            )
        result["serving"] = serving
        # 3. time to first byte on a miss: direct (HEAD, then the CDN) vs the gateway (cold).
        half = len(probes) // 2
        user = {"Authorization": f"Bearer {up.upstream_token}"}
        direct = [asyncio.run(ttfb(f"{hub.url}/{REPO}/resolve/main/{p}", user)) for p in probes[:half]]
        through = [asyncio.run(ttfb(f"{gateway.url}/{REPO}/resolve/main/{p}", auth)) for p in probes[half:]]
        result["ttfb_miss"] = {
            "direct": distribution(direct),
            "gateway": distribution(through),
            "goal": "within 5 ms of direct",
        }
        # 5. a cache hit with a cached TokenReview.
        result["authz_hit"] = asyncio.run(head_latency(url, f"{gateway.url}/healthz", auth, args.requests))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--clients", default="1,10,50")
    parser.add_argument("--serve-mib", type=int, default=1024)
    parser.add_argument("--ttfb-samples", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--skip", default="", help="comma list of: olah, nginx")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    result: dict[str, Any] = {"benchmark": "gateway", "files": args.files, "serve_mib": args.serve_mib}
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as scratch:
        root = Path(scratch)
        kube = KubeApi(directory=root).start()
        try:
            cluster = kube.trust_service_account_issuer(JwtIssuer())
            sa_token = cluster.issue(namespace="team-a", service_account="predictor", lifetime=7200)
            token_path = root / "sa-token"
            token_path.write_text(sa_token)
            counts = [int(n) for n in args.clients.split(",")]
            result["upstream_requests"] = upstream_requests(
                root, kube, token_path, files=args.files, counts=counts, olah="olah" not in skip
            )
            result.update(
                serving_and_latency(root, kube, {"Authorization": f"Bearer {sa_token}"}, args, skip)
            )
        finally:
            kube.stop()
    emit(result)


async def head_latency(url: str, floor_url: str, headers: dict[str, str], requests: int) -> dict[str, Any]:
    """HEAD of a cached file (TokenReview cached) vs GET /healthz on the same connection pool:
    the difference is what authorization plus the metadata lookup cost on a hit."""

    async def loop(target: str, method: str) -> list[float]:
        async with aiohttp.ClientSession() as session:
            samples = []
            for i in range(requests + 100):
                started = time.perf_counter()
                async with session.request(method, target, headers=headers) as response:
                    if response.status != 200:
                        raise RuntimeError(f"{method} answered {response.status}: {dict(response.headers)}")
                    await response.read()
                if i >= 100:  # warm-up: connection, TokenReview, metadata in memory
                    samples.append((time.perf_counter() - started) * 1000)
            return samples

    hit, floor = await loop(url, "HEAD"), await loop(floor_url, "GET")
    return {
        "head_hit": distribution(hit),
        "healthz_floor": distribution(floor),
        "overhead_p50_ms": round(distribution(hit)["p50_ms"] - distribution(floor)["p50_ms"], 3),
        "overhead_p99_ms": round(distribution(hit)["p99_ms"] - distribution(floor)["p99_ms"], 3),
        "goal_p99_ms": 2.0,
    }


if __name__ == "__main__":
    main()

"""Fleet: N sidecars against one OpenBao — request rate in steady state, during and after an outage.

Method: one process runs N simulated sidecars, each a real :class:`~tokensidecar.sidecar.refresh.Refresher`
with a real :class:`~tokensidecar.sources.vault.VaultSource` (its own ``VaultSession``, i.e.
its own hvac client and connection pool, token auth) and a real ``Publisher`` writing its own
token file on /dev/shm, all against one local OpenBao dev server. The only addition is
:class:`MeteredSource`, a delegating source that timestamps every fetch attempt; in steady
state one attempt is one HTTP request to OpenBao (a KV v2 metadata read).

Timeline: the sidecars start at uniformly random moments over one refresh interval (pods
are not created in the same millisecond), run in steady state, then OpenBao is **sealed**
for ``--outage`` seconds (a sealed Vault answers every request with 503, as after a restart
until someone unseals it) and unsealed again. Refresh interval and maximum backoff are
settings of the sidecar (defaults here: 5 s interval so that even N=100 gives a
measurable rate, and the sidecar's default 60 s maximum backoff).

Reported per N: attempts per second in 1 s and 5 s bins; steady-state mean and peak;
peak during the outage (retries with backoff) and peak in the window after it ends
(twice the max backoff), each also as a ratio to the steady mean. Full-jitter backoff is what
should keep the after-outage peak near the steady mean instead of N requests at once.

    .venv/bin/python bench/fleet.py [--sizes 100,1000] [--outage 60] [--interval 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from common import emit
from prometheus_client import CollectorRegistry

from tokensidecar.backends.vault import KvPath, VaultLogin, VaultSession
from tokensidecar.demo.openbao import DevServer
from tokensidecar.redact import remember
from tokensidecar.sidecar.metrics import SidecarMetrics
from tokensidecar.sidecar.publish import Publisher
from tokensidecar.sidecar.refresh import Refresher
from tokensidecar.sources import Source
from tokensidecar.sources.vault import VaultSource
from tokensidecar.token import Token

GOAL_PEAK_TO_MEAN = 2.0
SECRET_PATH = "secret/hf/fleet"


class MeteredSource(Source):
    """Delegates to a real source and records the monotonic time of every fetch attempt."""

    kind: ClassVar[str] = "vault"

    def __init__(self, *, inner: Source, attempts: list[float]) -> None:
        self.inner = inner
        self.attempts = attempts

    async def fetch(self) -> Token:
        self.attempts.append(time.monotonic())
        return await self.inner.fetch()

    async def aclose(self) -> None:
        await self.inner.aclose()


def unseal_key(server: DevServer, *, timeout: float = 10.0) -> str:
    """The dev server prints its single unseal key a moment after it is ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.log_path.read_text(errors="replace").splitlines():
            if line.startswith("Unseal Key:"):
                key = line.split(":", 1)[1].strip()
                remember(key)
                return key
        time.sleep(0.1)
    raise TimeoutError("the dev server did not print its unseal key")


def rate_bins(attempts: list[float], *, start: float, end: float, width: float) -> list[float]:
    """Attempts per second in consecutive bins of ``width`` seconds over [start, end)."""
    count = int((end - start) // width)
    bins = [0] * count
    for moment in attempts:
        index = int((moment - start) // width)
        if 0 <= index < count:
            bins[index] += 1
    return [b / width for b in bins]


async def run_fleet(
    *,
    server: DevServer,
    unseal: str,
    size: int,
    interval: float,
    max_backoff: float,
    outage: float,
    scratch: Path,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    # hvac is synchronous: every request runs in a worker thread. The default pool (cores+4)
    # would make the pool, not OpenBao or the sidecar logic, the bottleneck of N sidecars.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=64))
    vault_token, _ = server.create_token(policies=[server.read_policy_for(SECRET_PATH)], ttl="24h")
    attempts: list[float] = []
    refreshers: list[Refresher] = []
    for number in range(size):
        session = VaultSession(
            addr=server.addr, login=VaultLogin(method="token", mount="token", token=vault_token)
        )
        source = MeteredSource(
            inner=VaultSource(session=session, path=KvPath.parse(SECRET_PATH), key="token"), attempts=attempts
        )
        refreshers.append(
            Refresher(
                source=source,
                publisher=Publisher(token_path=scratch / f"sidecar-{number:04d}" / "token"),
                metrics=SidecarMetrics(source="vault", registry=CollectorRegistry()),
                refresh_interval=interval,
                max_backoff=max_backoff,
            )
        )
    for refresher in refreshers:
        refresher.publisher.prepare()

    async def start_later(refresher: Refresher) -> None:
        await asyncio.sleep(random.uniform(0, interval))
        await refresher.run()

    began = time.monotonic()
    tasks = [asyncio.create_task(start_later(r)) for r in refreshers]
    try:
        # Ramp-up (one interval), then a steady window of at least 6 intervals / 30 s.
        await asyncio.sleep(interval * 1.5)
        steady_start = time.monotonic()
        await asyncio.sleep(max(30.0, 6 * interval))
        steady_end = time.monotonic()
        ready_before = sum(1 for r in refreshers if r.state.last_good is not None)

        await asyncio.to_thread(server.admin.sys.seal)
        outage_start = time.monotonic()
        await asyncio.sleep(outage)
        await asyncio.to_thread(server.admin.sys.submit_unseal_key, key=unseal)
        outage_end = time.monotonic()
        after = 2 * max_backoff
        await asyncio.sleep(after)
        failing_after = sum(1 for r in refreshers if r.state.consecutive_failures > 0)
        end = time.monotonic()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for refresher in refreshers:
            with contextlib.suppress(Exception):
                await refresher.source.aclose()

    def window(start: float, stop: float, width: float) -> list[float]:
        return rate_bins(attempts, start=start, end=stop, width=width)

    steady = window(steady_start, steady_end, 1.0)
    steady_mean = statistics.fmean(steady)
    during = window(outage_start, outage_end, 1.0)
    post = window(outage_end, end, 1.0)
    post5 = window(outage_end, end, 5.0)
    steady5 = window(steady_start, steady_end, 5.0)
    timeline = window(began, end, 1.0)
    return {
        "sidecars": size,
        "ready_before_outage": ready_before,
        "still_failing_at_end": failing_after,
        "steady_mean_per_s": round(steady_mean, 1),
        "expected_steady_per_s": round(size / interval, 1),
        "steady_peak_per_s_1s": max(steady),
        "steady_peak_to_mean_1s": round(max(steady) / steady_mean, 2),
        "steady_peak_to_mean_5s": round(max(steady5) / steady_mean, 2),
        "outage_peak_per_s_1s": max(during),
        "outage_mean_per_s": round(statistics.fmean(during), 1),
        "outage_peak_to_steady_mean_1s": round(max(during) / steady_mean, 2),
        "after_outage_peak_per_s_1s": max(post),
        "after_outage_peak_to_steady_mean_1s": round(max(post) / steady_mean, 2),
        "after_outage_peak_to_steady_mean_5s": round(max(post5) / steady_mean, 2),
        "goal_after_outage_peak_to_mean": GOAL_PEAK_TO_MEAN,
        "goal_met": max(post5) / steady_mean <= GOAL_PEAK_TO_MEAN,
        "timeline_per_s": [round(v) for v in timeline],
        "timeline_marks_s": {
            "steady_start": round(steady_start - began, 1),
            "outage_start": round(outage_start - began, 1),
            "outage_end": round(outage_end - began, 1),
            "end": round(end - began, 1),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--interval", type=float, default=5.0, help="TOKENSIDECAR_REFRESH_INTERVAL, seconds")
    parser.add_argument("--max-backoff", type=float, default=60.0, help="TOKENSIDECAR_MAX_BACKOFF, seconds")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds OpenBao stays sealed")
    args = parser.parse_args()
    # N sidecars would print N warnings per failed round; the numbers are the output here.
    logging.getLogger("tokensidecar").setLevel(logging.ERROR)
    results = []
    for size in (int(part) for part in args.sizes.split(",")):
        with DevServer() as server, tempfile.TemporaryDirectory(prefix="bench-fleet-", dir="/dev/shm") as out:
            server.put_kv(SECRET_PATH, {"token": "hf_fleet_bench_token_0001"})
            results.append(
                asyncio.run(
                    run_fleet(
                        server=server,
                        unseal=unseal_key(server),
                        size=size,
                        interval=args.interval,
                        max_backoff=args.max_backoff,
                        outage=args.outage,
                        scratch=Path(out),
                    )
                )
            )
    emit(
        {
            "benchmark": "fleet",
            "method": (
                "N real Refresher+VaultSource (own hvac session each, token auth) in one process "
                "against one OpenBao dev server; starts spread over one interval; OpenBao sealed "
                "(503 to everything) for the outage, then unsealed; fetch attempts timestamped "
                "(1 attempt = 1 KV metadata request in steady state)"
            ),
            "refresh_interval_s": args.interval,
            "max_backoff_s": args.max_backoff,
            "outage_s": args.outage,
            "by_size": results,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Hub verification: what one costs in time, and how long a stalled Hub holds the sidecar.

Method: :class:`~tokensidecar.backends.hub.HubVerifier`, in this process, against the Hub
stand-in on loopback (its own thread and event loop), as ``tokensidecar run`` uses it:

* ``repo`` — ``--samples`` sequential verifications of one token in ``repo`` mode (whoami,
  then the auth-check of the model), after one to warm the connection pool; the tests pin
  that each is exactly one whoami and one auth-check (tests/backends/test_hub.py);
* ``whoami`` — the same in ``whoami`` mode (one request);
* ``stalled`` — the stand-in holds whoami for ``--stall`` seconds; the time until
  ``verify`` gives up with "did not answer" (``HubUnavailable``), for a ``request_timeout``
  of ``--timeout`` seconds, ``--stalls`` times. The goal: the timeout, not the stall.

    .venv/bin/python bench/hub_verify.py [--samples 200] [--stalls 5] [--timeout 0.3] [--stall 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from common import distribution, emit

from tokensidecar.backends.hub import HubVerifier
from tokensidecar.backends.hub_errors import HubUnavailable
from tokensidecar.demo.hub import DEFAULT_REPO, HubStandIn, serve_in_thread
from tokensidecar.token import Token


async def _latency(hub: HubStandIn, *, mode: str, samples: int) -> list[float]:
    token = Token(value=hub.issue_token(), source="bench")
    verifier = HubVerifier(endpoint=hub.url, mode=mode, model_id=DEFAULT_REPO if mode == "repo" else None)
    await verifier.verify(token)  # warm the connection pool
    timings: list[float] = []
    for _ in range(samples):
        started = time.perf_counter()
        await verifier.verify(token)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


async def _stalled(hub: HubStandIn, *, request_timeout: float, stall: float, stalls: int) -> list[float]:
    token = Token(value=hub.issue_token(), source="bench")
    timings: list[float] = []
    for _ in range(stalls):
        hub.stall_next(1, delay=stall, path_prefix="/api/whoami-v2")
        started = time.perf_counter()
        try:
            await HubVerifier(endpoint=hub.url, request_timeout=request_timeout).verify(token)
        except HubUnavailable:
            timings.append(time.perf_counter() - started)
        else:
            raise RuntimeError("a stalled Hub was not an outage")
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--stalls", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=0.3, help="request_timeout, seconds")
    parser.add_argument("--stall", type=float, default=3.0, help="how long the stand-in holds whoami")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with serve_in_thread(HubStandIn()) as hub:
        for mode in ("repo", "whoami"):
            results[mode] = distribution(asyncio.run(_latency(hub, mode=mode, samples=args.samples)))
        stalled = asyncio.run(
            _stalled(hub, request_timeout=args.timeout, stall=args.stall, stalls=args.stalls)
        )
    results["stalled"] = {
        "request_timeout_s": args.timeout,
        "stall_s": args.stall,
        **distribution(stalled, unit="s"),
    }
    emit(
        {
            "benchmark": "hub_verify",
            "method": "HubVerifier in-process against the Hub stand-in on loopback, sequential calls",
            "by_mode": results,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

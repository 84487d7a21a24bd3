"""The one retry schedule: exponential backoff with full jitter, and jittered intervals.

Full jitter (sleep a uniform random time between 0 and the exponential cap) is what
spreads a fleet of sidecars apart after a shared outage ends: with a fixed or
equal-jitter backoff they would all come back in lock-step and hammer Vault together.
See https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/.
"""

from __future__ import annotations

import random

__all__ = ["Backoff", "jittered"]

# ±10% on every scheduled refresh (docs/behaviour.md, refreshing), so sidecars started together drift apart.
SCHEDULE_JITTER = 0.10


def jittered(seconds: float, *, spread: float = SCHEDULE_JITTER) -> float:
    return seconds * random.uniform(1.0 - spread, 1.0 + spread)  # noqa: S311 - not crypto


class Backoff:
    """Delays after consecutive failures: uniform(0, min(cap, base * 2**(n-1))).

    A floor of 10% of the current step keeps a failing client from spinning at zero delay.
    """

    def __init__(self, *, base: float = 1.0, cap: float = 60.0) -> None:
        self.base = base
        self.cap = max(cap, base)
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        step = min(self.cap, self.base * 2 ** min(self.failures - 1, 32))
        return random.uniform(step * 0.1, step)  # noqa: S311 - not crypto

    def reset(self) -> None:
        self.failures = 0

"""Prometheus metrics of the sidecar. Names are part of the public contract (docs/metrics.md).

Each sidecar instance owns its own :class:`~prometheus_client.CollectorRegistry`, so
several can live in one process (tests, the fleet benchmark) without clashing, and the
exposition holds only tokensidecar's series plus the process collector.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

from tokensidecar.metrics import build_info

__all__ = ["SidecarMetrics"]

# Fetches are local-network calls: most finish in milliseconds, a slow Vault in seconds.
FETCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class SidecarMetrics:
    def __init__(self, *, source: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.rotations = Counter(
            "tokensidecar_rotations",
            "Attempts to obtain and publish a token, by result.",
            ["result"],
            registry=self.registry,
        )
        for result in ("success", "failure"):
            self.rotations.labels(result=result)
        self.fetch_duration = Histogram(
            "tokensidecar_fetch_duration_seconds",
            "Time to fetch a token from the source.",
            ["source"],
            buckets=FETCH_BUCKETS,
            registry=self.registry,
        ).labels(source=source)
        self.last_success = Gauge(
            "tokensidecar_last_success_timestamp_seconds",
            "Unix time of the last successful fetch and publish.",
            registry=self.registry,
        )
        self.token_expiry = Gauge(
            "tokensidecar_token_expiry_timestamp_seconds",
            "Unix time at which the published token expires (NaN when unknown).",
            registry=self.registry,
        )
        self.token_expiry.set(float("nan"))
        self.consecutive_failures = Gauge(
            "tokensidecar_consecutive_failures",
            "Failures since the last success.",
            registry=self.registry,
        )
        self.ready = Gauge(
            "tokensidecar_ready",
            "1 when a valid, unexpired token is published.",
            registry=self.registry,
        )
        self.verify = Counter(
            "tokensidecar_verify",
            "Verifications of new tokens at the Hub, by result "
            "(ok, rejected, hub_unavailable_published, hub_unavailable_held, misconfigured: HF_ENDPOINT "
            "does not exist or is not a Hub).",
            ["result"],
            registry=self.registry,
        )
        for result in (
            "ok",
            "rejected",
            "hub_unavailable_published",
            "hub_unavailable_held",
            "misconfigured",
        ):
            self.verify.labels(result=result)
        self.publishes = Counter(
            "tokensidecar_publishes",
            "Tokens written to the token file (a new value, or new metadata).",
            registry=self.registry,
        )
        self.notify_failures = Counter(
            "tokensidecar_notify_failures",
            "Failed post-publish notifications, by kind (signal, http).",
            ["kind"],
            registry=self.registry,
        )
        for kind in ("signal", "http"):
            self.notify_failures.labels(kind=kind)
        self.build_info = build_info(self.registry, source=source)

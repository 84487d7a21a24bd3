"""Prometheus metrics of the gateway (names fixed by docs/gateway.md).

The gateway owns its registry, like the sidecar and the webhook do. The control plane's
authorization counter and the credentials' refresh metrics (§6, labelled by ``credential``)
are registered on this same registry, so one ``/metrics`` page carries them all.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

from tokensidecar.metrics import build_info

__all__ = ["GatewayMetrics"]

# A cache hit's metadata answers in a millisecond; a cold 10 GB file takes minutes.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0)


class GatewayMetrics:
    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "tokensidecar_gateway_requests",
            "Requests answered, by route and HTTP status.",
            ["route", "code"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "tokensidecar_gateway_request_duration_seconds",
            "Time from a request's arrival to the last byte of its answer, by route.",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.bytes_served = Counter(
            "tokensidecar_gateway_bytes_served",
            "File bytes sent to clients, from a complete cached file (hit) or a fill (miss).",
            ["cache"],
            registry=self.registry,
        )
        for cache in ("hit", "miss"):
            self.bytes_served.labels(cache=cache)
        self.upstream_requests = Counter(
            "tokensidecar_gateway_upstream_requests",
            "Requests sent upstream, by route and HTTP status (error: no answer).",
            ["route", "code"],
            registry=self.registry,
        )
        self.upstream_bytes = Counter(
            "tokensidecar_gateway_upstream_bytes",
            "File bytes received from the upstream.",
            registry=self.registry,
        )
        self.cache_bytes = Gauge(
            "tokensidecar_gateway_cache_bytes",
            "Bytes of complete files in the cache.",
            registry=self.registry,
        )
        self.cache_evictions = Counter(
            "tokensidecar_gateway_cache_evictions",
            "Files evicted from the cache (least recently used first).",
            registry=self.registry,
        )
        self.fills = Counter(
            "tokensidecar_gateway_fills",
            "Upstream downloads into the cache, by result (complete, short, corrupt, upstream, local).",
            ["result"],
            registry=self.registry,
        )
        self.build_info = build_info(self.registry, component="gateway")

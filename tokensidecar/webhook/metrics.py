"""Prometheus metrics of the webhook (names fixed: docs/metrics.md).

The webhook owns its registry, like each sidecar does, so tests can run several in one
process and the exposition holds only the webhook's series plus the process collector.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.process_collector import ProcessCollector

from tokensidecar.metrics import build_info

__all__ = ["DURATION_BUCKETS", "RESULTS", "WebhookMetrics"]

# Admission latency is sub-millisecond in-process; the API server gives up at seconds.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
RESULTS = ("injected", "skipped", "error")


class WebhookMetrics:
    """The webhook's own registry: admissions by result, their duration, build info."""

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.admissions = Counter(
            "tokensidecar_webhook_admissions",
            "AdmissionReviews answered, by result (injected, skipped, error).",
            ["result"],
            registry=self.registry,
        )
        for result in RESULTS:
            self.admissions.labels(result=result)
        self.duration = Histogram(
            "tokensidecar_webhook_duration_seconds",
            "Time to answer one AdmissionReview, from the first byte read to the reply.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.certificate_reloads = Counter(
            "tokensidecar_webhook_certificate_reloads",
            "Serving certificate loads after start, by result (success, failure).",
            ["result"],
            registry=self.registry,
        )
        self.build_info = build_info(self.registry, component="webhook")

    def count_certificate_reload(self, result: str) -> None:
        """One load of the serving certificate after start (``success`` or ``failure``):
        the :class:`tokensidecar.serving.CertificateReloader`'s ``on_reload``."""
        self.certificate_reloads.labels(result=result).inc()

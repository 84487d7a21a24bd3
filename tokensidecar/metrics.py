"""What every command's metrics share: the exposition, and ``tokensidecar_build_info``.

The sidecar (:mod:`tokensidecar.sidecar.metrics`), the webhook and the gateway each own a
:class:`~prometheus_client.CollectorRegistry` of their own, so several can live in one
process (tests, the fleet benchmark) without clashing. Names are part of the public
contract (docs/metrics.md).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from tokensidecar import __version__

__all__ = ["CONTENT_TYPE_LATEST", "build_info", "exposition"]

# The *_created series double the exposition and no dashboard or alert of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]


def build_info(registry: CollectorRegistry, **labels: str) -> Gauge:
    """``tokensidecar_build_info{version, ...} 1``: which build runs, and as what.

    The sidecar labels it with its ``source``, the webhook and the gateway with their
    ``component``; dashboards join on ``version``.
    """
    gauge = Gauge(
        "tokensidecar_build_info",
        "Always 1; the version is in the label.",
        ["version", *labels],
        registry=registry,
    )
    gauge.labels(version=__version__, **labels).set(1)
    return gauge


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)

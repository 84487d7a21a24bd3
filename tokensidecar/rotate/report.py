"""The job's outcome as a node-exporter textfile (``--metrics-file``).

A CronJob has no ``/metrics`` endpoint to scrape and nothing to push to by default, so
the outcome goes to a file that node-exporter's textfile collector (or a sidecar that
serves it) exposes. The stored token's scope summary (kind, role, write access, scoped entities — never the
token) is written beside the outcome. The file is rewritten whole and atomically (temp file + rename, what
``prometheus_client.write_to_textfile`` does) so the collector never reads half of it.
Each run starts a fresh process, so the two series that must outlive a run — the run
counters and the last success time — are carried over from the file the previous run left.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import write_to_textfile
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from tokensidecar.rotate.job import Outcome

__all__ = ["RESULTS", "write_metrics_file"]

RESULTS = ("rotated", "skipped", "unchanged", "superseded", "dry_run", "failed")

_RUNS = "tokensidecar_rotate_runs_total"
_LAST_SUCCESS = "tokensidecar_rotate_last_success_timestamp_seconds"


def _carried_over(path: Path) -> tuple[dict[str, float], float]:
    """Run counters by result and the last success time from the previous file, if any."""
    runs: dict[str, float] = {}
    last_success = math.nan
    try:
        text = path.read_text(encoding="utf-8")
        families = list(text_string_to_metric_families(text))
    except (OSError, ValueError):
        return runs, last_success
    for family in families:
        for sample in family.samples:
            if sample.name == _RUNS and "result" in sample.labels:
                runs[sample.labels["result"]] = sample.value
            elif sample.name == _LAST_SUCCESS:
                last_success = sample.value
    return runs, last_success


def _scope_gauges(registry: CollectorRegistry, *, labels: dict[str, str], outcome: Outcome) -> None:
    """What the stored token may do, as the Hub said at verification (docs/rotation.md): one
    info-style series with its kind, role and write access, and its scoped entity count.
    Absent when the run verified nothing, so a dashboard never shows a stale scope as current."""
    scope = outcome.scope
    if scope is None:
        return
    Gauge(
        "tokensidecar_rotate_token_scope_info",
        "1, labelled with what the stored token may do: kind (classic, fine-grained, oauth, "
        "trusted-publisher-repo), role, fine_grained, can_write (true, false, unknown).",
        [*labels, "kind", "role", "fine_grained", "can_write"],
        registry=registry,
    ).labels(
        **labels,
        kind=scope.kind,
        role=scope.role or "",
        fine_grained=str(scope.fine_grained).lower(),
        can_write="unknown" if scope.can_write is None else str(scope.can_write).lower(),
    ).set(1)
    _gauge(
        registry,
        name="tokensidecar_rotate_token_scoped_entities",
        documentation="Entities (users, orgs, repositories) a fine-grained stored token is scoped to; "
        "0 otherwise.",
        labels=labels,
        value=scope.scoped_entities,
    )


def write_metrics_file(path: str, *, outcome: Outcome, now: float | None = None) -> None:
    """Write the outcome of this run, carrying the counters of earlier runs forward."""
    import time

    finished = time.time() if now is None else now
    target = Path(path)
    runs, last_success = _carried_over(target)
    if outcome.succeeded:
        last_success = finished

    registry = CollectorRegistry(auto_describe=True)
    labels = {"issuer": outcome.issuer, "target": outcome.target}
    # The series are registered, and so written, in this order.
    _result_gauges(registry, labels=labels, outcome=outcome, runs=runs)
    _time_gauges(registry, labels=labels, finished=finished, last_success=last_success)
    _stored_token_gauges(registry, labels=labels, outcome=outcome)
    _revocation_gauges(registry, labels=labels, outcome=outcome)
    _scope_gauges(registry, labels=labels, outcome=outcome)
    _gauge_by(
        registry,
        name="tokensidecar_rotate_duration_seconds",
        documentation="Time the last run spent in each phase (read, mint, verify, store, revoke, total).",
        labels=labels,
        by="phase",
        values=outcome.durations,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(target), registry)


def _gauge(
    registry: CollectorRegistry, *, name: str, documentation: str, labels: dict[str, str], value: float
) -> None:
    """One series labelled with the run's issuer and target: the shape most of the file has."""
    Gauge(name, documentation, list(labels), registry=registry).labels(**labels).set(value)


def _gauge_by(
    registry: CollectorRegistry,
    *,
    name: str,
    documentation: str,
    labels: dict[str, str],
    by: str,
    values: Mapping[str, float],
) -> None:
    """One series per key of ``values``, labelled ``by=<key>`` beside the issuer and target."""
    gauge = Gauge(name, documentation, [*labels, by], registry=registry)
    for key, value in values.items():
        gauge.labels(**labels, **{by: key}).set(value)


def _result_gauges(
    registry: CollectorRegistry, *, labels: dict[str, str], outcome: Outcome, runs: dict[str, float]
) -> None:
    """How this run ended, and the run counters carried over from earlier runs (gauges, not
    counters: the values are carried between processes, and a counter cannot be set)."""
    _gauge_by(
        registry,
        name=_RUNS,
        documentation="Rotation job runs by result, across runs.",
        labels=labels,
        by="result",
        values={
            result: runs.get(result, 0.0) + (1.0 if result == outcome.result else 0.0) for result in RESULTS
        },
    )
    _gauge(
        registry,
        name="tokensidecar_rotate_success",
        documentation="1 when the last run succeeded (rotated, skipped, unchanged, superseded or dry run).",
        labels=labels,
        value=1 if outcome.succeeded else 0,
    )
    _gauge_by(
        registry,
        name="tokensidecar_rotate_last_result",
        documentation="1 for the result of the last run.",
        labels=labels,
        by="result",
        values={result: 1 if result == outcome.result else 0 for result in RESULTS},
    )


def _time_gauges(
    registry: CollectorRegistry, *, labels: dict[str, str], finished: float, last_success: float
) -> None:
    """When the last run finished, and the last success carried over when this run failed."""
    _gauge(
        registry,
        name="tokensidecar_rotate_last_run_timestamp_seconds",
        documentation="Unix time the last run finished.",
        labels=labels,
        value=finished,
    )
    _gauge(
        registry,
        name=_LAST_SUCCESS,
        documentation="Unix time of the last successful run.",
        labels=labels,
        value=last_success,
    )


def _stored_token_gauges(registry: CollectorRegistry, *, labels: dict[str, str], outcome: Outcome) -> None:
    """When the stored token expires and its rotation counter; NaN when unknown."""
    _gauge(
        registry,
        name="tokensidecar_rotate_token_expiry_timestamp_seconds",
        documentation="Unix time the stored token expires (NaN when unknown).",
        labels=labels,
        value=outcome.expires_at.timestamp() if outcome.expires_at else math.nan,
    )
    _gauge(
        registry,
        name="tokensidecar_rotate_version",
        documentation="Rotation counter of the stored token.",
        labels=labels,
        value=outcome.version if outcome.version is not None else math.nan,
    )


def _revocation_gauges(registry: CollectorRegistry, *, labels: dict[str, str], outcome: Outcome) -> None:
    """What became of the tokens this run retired, and how many of its writes were refused."""
    _gauge_by(
        registry,
        name="tokensidecar_rotate_revocations",
        documentation="Tokens the last run revoked, failed to revoke, or left to expire "
        "(neither stored nor revoked).",
        labels=labels,
        by="result",
        values={
            "revoked": len(outcome.revoked),
            "failed": outcome.revoke_failures,
            # Valid tokens this run neither stored nor revoked (the log names each one).
            "left_to_expire": len(outcome.left_to_expire),
        },
    )
    _gauge(
        registry,
        name="tokensidecar_rotate_conflicts",
        documentation="Conditional writes of the last run refused because another writer got there first.",
        labels=labels,
        value=outcome.conflicts,
    )

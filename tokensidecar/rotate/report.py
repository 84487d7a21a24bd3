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
    Gauge(
        "tokensidecar_rotate_token_scoped_entities",
        "Entities (users, orgs, repositories) a fine-grained stored token is scoped to; 0 otherwise.",
        list(labels),
        registry=registry,
    ).labels(**labels).set(scope.scoped_entities)


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
    label_names = list(labels)

    # Gauges, not counters: the values are carried between processes, and a counter cannot be set.
    runs_total = Gauge(
        _RUNS, "Rotation job runs by result, across runs.", [*label_names, "result"], registry=registry
    )
    for result in RESULTS:
        value = runs.get(result, 0.0) + (1.0 if result == outcome.result else 0.0)
        runs_total.labels(**labels, result=result).set(value)
    Gauge(
        "tokensidecar_rotate_success",
        "1 when the last run succeeded (rotated, skipped, unchanged, superseded or dry run).",
        label_names,
        registry=registry,
    ).labels(**labels).set(1 if outcome.succeeded else 0)
    last_result = Gauge(
        "tokensidecar_rotate_last_result", "1 for the result of the last run.", [*label_names, "result"],
        registry=registry,
    )  # fmt: skip
    for result in RESULTS:
        last_result.labels(**labels, result=result).set(1 if result == outcome.result else 0)
    Gauge(
        "tokensidecar_rotate_last_run_timestamp_seconds", "Unix time the last run finished.", label_names,
        registry=registry,
    ).labels(**labels).set(finished)  # fmt: skip
    Gauge(_LAST_SUCCESS, "Unix time of the last successful run.", label_names, registry=registry).labels(
        **labels
    ).set(last_success)
    Gauge(
        "tokensidecar_rotate_token_expiry_timestamp_seconds",
        "Unix time the stored token expires (NaN when unknown).",
        label_names,
        registry=registry,
    ).labels(**labels).set(outcome.expires_at.timestamp() if outcome.expires_at else math.nan)
    Gauge(
        "tokensidecar_rotate_version", "Rotation counter of the stored token.", label_names, registry=registry
    ).labels(**labels).set(outcome.version if outcome.version is not None else math.nan)
    revocations = Gauge(
        "tokensidecar_rotate_revocations",
        "Tokens the last run revoked, failed to revoke, or left to expire (neither stored nor revoked).",
        [*label_names, "result"],
        registry=registry,
    )
    revocations.labels(**labels, result="revoked").set(len(outcome.revoked))
    revocations.labels(**labels, result="failed").set(outcome.revoke_failures)
    # Valid tokens this run neither stored nor revoked (the log names each one).
    revocations.labels(**labels, result="left_to_expire").set(len(outcome.left_to_expire))
    Gauge(
        "tokensidecar_rotate_conflicts",
        "Conditional writes of the last run refused because another writer got there first.",
        label_names,
        registry=registry,
    ).labels(**labels).set(outcome.conflicts)
    _scope_gauges(registry, labels=labels, outcome=outcome)
    durations = Gauge(
        "tokensidecar_rotate_duration_seconds",
        "Time the last run spent in each phase (read, mint, verify, store, revoke, total).",
        [*label_names, "phase"],
        registry=registry,
    )
    for phase, seconds in outcome.durations.items():
        durations.labels(**labels, phase=phase).set(seconds)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(target), registry)

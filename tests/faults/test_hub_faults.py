"""Verification while the Hub stand-in answers 429 and 5xx, stalls past the timeout, and
is handed forged and revoked tokens.

Two promises hold here (docs/kserve-huggingface.md, "Verification"). A token the Hub
*rejected* (401/403) is never published, whatever else is going on. A Hub outage never
displaces a verified token: a token the Hub could not *judge* (429, 5xx, timeout) waits
while a valid token is published, under both ``TOKENSIDECAR_VERIFY_ON_HUB_OUTAGE``
policies; ``publish`` puts it out unverified only when nothing valid is published. A
sampler reads the token file every millisecond, so a bad token that was on disk for even
a moment is caught.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.faults.sampler import FileSampler
from tests.sidecar_process import SidecarProcess, hub_file_sidecar, wait_for
from tokensidecar.backends.hub import HubVerifier
from tokensidecar.demo.hub import HubStandIn
from tokensidecar.metrics import exposition
from tokensidecar.redact import fingerprint
from tokensidecar.sidecar.metrics import SidecarMetrics
from tokensidecar.sidecar.publish import Publisher
from tokensidecar.sidecar.refresh import Refresher
from tokensidecar.sources.file import FileSource

WHOAMI = "/api/whoami-v2"


def _write(path: Path, value: str) -> None:
    staged = path.with_name(path.name + ".staged")
    staged.write_text(value)
    staged.replace(path)


def _forged(label: str) -> str:
    return "hf_" + hashlib.sha256(label.encode()).hexdigest()[:34]


def _verify_count(sidecar: SidecarProcess, result: str) -> float:
    return sidecar.metric("tokensidecar_verify_total", f'result="{result}"') or 0.0


@pytest.mark.parametrize("policy", ["publish", "hold"])
def test_flapping_hub_never_lets_a_rejected_token_out_and_follows_the_outage_policy(
    hub: HubStandIn, tmp_path: Path, policy: str
) -> None:
    sidecar, source_file = hub_file_sidecar(
        hub_url=hub.url, directory=tmp_path, TOKENSIDECAR_VERIFY_ON_HUB_OUTAGE=policy
    )
    canary = hub.issue_token()
    _write(source_file, canary)
    rejected: list[str] = []
    published = [canary]
    with sidecar, FileSampler(sidecar.token_file) as sampler:
        sidecar.wait_for_token(canary)
        for round_number, status in enumerate((429, 500, 502, 503, 429)):
            # 1. The Hub is down for a few requests when a good new token arrives.
            good = hub.issue_token()
            published.append(good)
            hub.fail_next(3, status=status, path_prefix=WHOAMI)
            before = sidecar.token()
            held_before = _verify_count(sidecar, "hub_unavailable_held")
            _write(source_file, good)
            # Both policies: the verified token stays while the Hub cannot judge the new one.
            wait_for(lambda n=held_before: _verify_count(sidecar, "hub_unavailable_held") > n)
            assert sidecar.token() == before
            sidecar.wait_for_token(good, timeout=15)
            hub.clear_faults()

            # 2. A forged token, and a revoked one, arrive while the Hub answers again.
            forged = _forged(f"{policy}-{round_number}")
            revoked = hub.issue_token()
            hub.revoke(revoked)
            for bad in (forged, revoked):
                rejected.append(bad)
                seen_rejections = _verify_count(sidecar, "rejected")
                if policy == "hold":
                    hub.fail_next(2, status=status, path_prefix=WHOAMI)  # held first, then judged
                _write(source_file, bad)
                wait_for(lambda n=seen_rejections: _verify_count(sidecar, "rejected") > n, timeout=15)
                assert sidecar.token() == good
        assert sidecar.get("/readyz")[0] == 200
        outage_verdicts = _verify_count(sidecar, "hub_unavailable_held")
        published_unverified = _verify_count(sidecar, "hub_unavailable_published")
        text = sidecar.get("/metrics")[1] + sidecar.get("/status")[1]
    assert not set(sampler.seen) & set(rejected), "a token the Hub rejected reached the file"
    sampler.assert_only(published, in_order=False)
    # Every round met the outage at least once, and a valid token was always published.
    assert outage_verdicts >= 5
    assert published_unverified == 0
    for secret in (canary, *rejected):
        assert secret not in sidecar.logs + text


async def test_hub_stalling_past_the_timeout_is_an_outage_under_both_policies(
    hub: HubStandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tokensidecar")
    outcomes = {}
    for policy in ("publish", "hold"):
        directory = tmp_path / policy
        (directory / "source").mkdir(parents=True)
        source_file = directory / "source" / "token"
        first, second = hub.issue_token(), hub.issue_token()
        _write(source_file, first)
        registry = CollectorRegistry()
        refresher = Refresher(
            source=FileSource(path=source_file, poll_seconds=0.02),
            publisher=Publisher(token_path=directory / "out" / "token"),
            metrics=SidecarMetrics(source="file", registry=registry),
            verifier=HubVerifier(endpoint=hub.url, request_timeout=0.3),
            max_backoff=0.5,
            on_hub_outage=policy,
        )
        refresher.publisher.prepare()
        loop_task = asyncio.create_task(refresher.run())
        try:
            token_path = directory / "out" / "token"
            await _until(lambda p=token_path, v=first: p.exists() and p.read_text() == v)
            # The next whoami calls hang for 3 s: each attempt times out after 0.3 s.
            hub.stall_next(3, delay=3.0, path_prefix=WHOAMI)
            started = time.monotonic()
            _write(source_file, second)
            # The state, not the file: last_good is the token exactly as it was published.
            second_fp = fingerprint(second)
            await _until(
                lambda r=refresher, f=second_fp: (
                    r.state.last_good is not None and r.state.last_good.fingerprint == f
                ),
                timeout=15,
            )
            outcomes[policy] = {
                "seconds": time.monotonic() - started,
                "verified": refresher.state.last_good.verified if refresher.state.last_good else None,
                "metrics": exposition(registry).decode(),
            }
        finally:
            hub.clear_faults()  # stalls this policy did not use must not reach the next one
            loop_task.cancel()
            await asyncio.gather(loop_task, return_exceptions=True)
            await refresher.source.aclose()
        for secret in (first, second):
            assert secret not in caplog.text
            assert secret not in outcomes[policy]["metrics"]
    # Both policies: the verified first token stayed through the stalled attempts, and the
    # second went out only once the Hub answered — verified. Nothing went out unverified.
    summary = {policy: (o["seconds"], o["verified"]) for policy, o in outcomes.items()}
    for policy in ("publish", "hold"):
        assert outcomes[policy]["verified"] is True, summary
        assert 'result="hub_unavailable_held"' in str(outcomes[policy]["metrics"])
        assert 'tokensidecar_verify_total{result="hub_unavailable_published"} 0.0' in str(
            outcomes[policy]["metrics"]
        )


async def _until(predicate: Callable[[], bool], *, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)

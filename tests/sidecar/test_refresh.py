"""The refresher: validate → verify once per new token → publish → count, through its real
collaborators (the on-disk Publisher, the Prometheus registry, the aiohttp app).

The sources and the verifier below are small, complete implementations of the
:class:`~tokensidecar.sources.Source` interface and the ``Verifier`` protocol whose answers
a test scripts — not mocks of a client. Single attempts go through ``Refresher._attempt``
(the unit the loop repeats, returning the delay it would sleep); the loop itself is run for
what only the loop does: the first publish, watch events, restarting a broken watch.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.fixtures.jwt import unsigned_jwt
from tokensidecar.backends.hub_errors import HubUnavailable, TokenRejected
from tokensidecar.backoff import Backoff, jittered
from tokensidecar.sidecar.metrics import SidecarMetrics
from tokensidecar.sidecar.publish import Publisher
from tokensidecar.sidecar.refresh import MIN_REFRESH_SECONDS, Refresher
from tokensidecar.sidecar.server import build_app
from tokensidecar.sources import Source, SourceError
from tokensidecar.token import Token, format_time

GOOD = "hf_refreshgood000001"
NEXT = "hf_refreshnext000002"
THIRD = "hf_refreshthird00003"


def _token(value: str, *, expires_in: float | None = None, version: str = "1") -> Token:
    expires_at = None if expires_in is None else datetime.now(UTC) + timedelta(seconds=expires_in)
    return Token(value=value, source="scripted", version=version, expires_at=expires_at)


def _jwt(exp: float) -> str:
    return "hf_jwt_" + unsigned_jwt({"sub": "u", "exp": exp})


class ScriptedSource(Source):
    """A polled source whose current answer (a token or an error) the test sets."""

    kind: ClassVar[str] = "scripted"

    def __init__(self, current: Token | SourceError) -> None:
        self.current = current
        self.fetches = 0

    async def fetch(self) -> Token:
        self.fetches += 1
        if isinstance(self.current, SourceError):
            raise self.current
        return self.current


class WatchedSource(ScriptedSource):
    """A watchable source: the test pushes events; ``break_watch`` makes the watch raise."""

    watchable: ClassVar[bool] = True

    def __init__(self, current: Token | SourceError) -> None:
        super().__init__(current)
        self.events: asyncio.Queue[Token | SourceError | Exception] = asyncio.Queue()
        self.watches_started = 0

    async def watch(self) -> AsyncIterator[Token | SourceError]:
        self.watches_started += 1
        while True:
            event = await self.events.get()
            if isinstance(event, SourceError | Token):
                if isinstance(event, Token):
                    self.current = event
                yield event
            else:
                raise event


class ScriptedVerifier:
    """A Verifier whose verdict per token value the test sets: ok, rejected or unavailable."""

    def __init__(self, *, hub_expiry: datetime | None = None) -> None:
        self.verdicts: dict[str, str] = {}
        self.calls: list[str] = []
        self.hub_expiry = hub_expiry

    async def verify(self, token: Token) -> Token:
        self.calls.append(token.value)
        verdict = self.verdicts.get(token.value, "ok")
        if verdict == "rejected":
            raise TokenRejected("401 Unauthorized from whoami")
        if verdict == "unavailable":
            raise HubUnavailable("503 Service Unavailable from whoami")
        return replace(token, verified=True, expires_at=token.expires_at or self.hub_expiry)

    async def aclose(self) -> None:
        pass


def _refresher(
    tmp_path: Path,
    source: Source,
    *,
    verifier: ScriptedVerifier | None = None,
    refresh_interval: float = 60.0,
    max_backoff: float = 60.0,
    on_hub_outage: str = "publish",
) -> Refresher:
    return Refresher(
        source=source,
        publisher=Publisher(token_path=tmp_path / "token"),
        metrics=SidecarMetrics(source=source.kind),
        verifier=verifier,
        refresh_interval=refresh_interval,
        max_backoff=max_backoff,
        on_hub_outage=on_hub_outage,
    )


def _sample(refresher: Refresher, name: str, **labels: str) -> float | None:
    return refresher.metrics.registry.get_sample_value(name, labels)


def _published(tmp_path: Path) -> str | None:
    try:
        return (tmp_path / "token").read_text()
    except FileNotFoundError:
        return None


async def _eventually(predicate: Callable[[], object], *, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)


# -- last good token, failures, backoff ----------------------------------------------


async def test_first_success_publishes_and_reports_ready(tmp_path: Path) -> None:
    refresher = _refresher(tmp_path, ScriptedSource(_token(GOOD)))
    assert refresher.update_ready() is False
    before = time.time()
    delay = await refresher._attempt(None)
    assert _published(tmp_path) == GOOD
    assert delay is not None and 54 <= delay <= 66
    assert refresher.state.readiness() == (True, "token published")
    assert _sample(refresher, "tokensidecar_ready") == 1
    assert _sample(refresher, "tokensidecar_rotations_total", result="success") == 1
    assert _sample(refresher, "tokensidecar_rotations_total", result="failure") == 0
    assert _sample(refresher, "tokensidecar_consecutive_failures") == 0
    last_success = _sample(refresher, "tokensidecar_last_success_timestamp_seconds")
    assert last_success is not None and before <= last_success <= time.time()
    expiry = _sample(refresher, "tokensidecar_token_expiry_timestamp_seconds")
    assert expiry is not None and math.isnan(expiry)  # unknown expiry
    assert _sample(refresher, "tokensidecar_fetch_duration_seconds_count", source="scripted") == 1


async def test_source_outage_keeps_last_good_token(tmp_path: Path) -> None:
    source = ScriptedSource(_token(GOOD, expires_in=3600))
    refresher = _refresher(tmp_path, source)
    await refresher._attempt(None)
    source.current = SourceError("vault at http://127.0.0.1:1 is unreachable")
    for expected in (1, 2, 3):
        await refresher._attempt(None)
        assert _published(tmp_path) == GOOD
        assert refresher.state.consecutive_failures == expected
        assert _sample(refresher, "tokensidecar_consecutive_failures") == expected
        assert _sample(refresher, "tokensidecar_rotations_total", result="failure") == expected
    status = refresher.state.status()
    assert status["last_error"] == "vault at http://127.0.0.1:1 is unreachable"
    assert status["consecutive_failures"] == 3
    assert status["fingerprint"] == Token(value=GOOD, source="x").fingerprint
    # The token is still valid, so the pod stays ready through the outage.
    assert refresher.state.readiness()[0] is True
    assert _sample(refresher, "tokensidecar_ready") == 1


async def test_recovery_resets_failures_and_backoff(tmp_path: Path) -> None:
    source = ScriptedSource(SourceError("down"))
    refresher = _refresher(tmp_path, source, max_backoff=60)
    for _ in range(5):
        await refresher._attempt(None)
    assert refresher.backoff.failures == 5
    source.current = _token(GOOD)
    await refresher._attempt(None)
    assert refresher.state.consecutive_failures == 0
    assert refresher.state.last_error is None
    assert _sample(refresher, "tokensidecar_consecutive_failures") == 0
    source.current = SourceError("down again")
    delay = await refresher._attempt(None)
    assert delay is not None and delay <= 1.0  # the backoff starts again from 1 s


async def test_failure_delays_double_from_1s_up_to_max_backoff(tmp_path: Path) -> None:
    refresher = _refresher(tmp_path, ScriptedSource(SourceError("down")), max_backoff=8)
    ceilings = [1, 2, 4, 8, 8, 8]
    for _ in range(30):
        refresher.backoff.reset()
        for ceiling in ceilings:
            delay = await refresher._attempt(None)
            assert delay is not None
            assert 0 < delay <= ceiling, (delay, ceiling)


def test_backoff_is_full_jitter_below_a_doubling_ceiling() -> None:
    backoff = Backoff(base=1.0, cap=60.0)
    by_attempt: dict[int, list[float]] = {n: [] for n in range(1, 10)}
    for _ in range(400):
        backoff.reset()
        for attempt in range(1, 10):
            by_attempt[attempt].append(backoff.next_delay())
    for attempt, delays in by_attempt.items():
        ceiling = min(60.0, 2.0 ** (attempt - 1))
        assert all(0 < d <= ceiling for d in delays), attempt
        # Full jitter: the delays spread over the whole range, not clustered at the ceiling.
        assert min(delays) < 0.3 * ceiling, attempt
        assert max(delays) > 0.9 * ceiling, attempt
        assert 0.4 * ceiling < statistics.mean(delays) < 0.7 * ceiling, attempt


def test_backoff_never_exceeds_the_cap_even_after_many_failures() -> None:
    backoff = Backoff(base=1.0, cap=5.0)
    delays = [backoff.next_delay() for _ in range(200)]
    assert max(delays) <= 5.0
    assert max(delays[10:]) > 4.0


def test_backoff_cap_below_base_is_raised_to_base() -> None:
    assert all(Backoff(base=1.0, cap=0.2).next_delay() <= 1.0 for _ in range(50))


async def test_expired_token_from_the_source_is_a_failure(tmp_path: Path) -> None:
    source = ScriptedSource(_token(GOOD))
    refresher = _refresher(tmp_path, source)
    await refresher._attempt(None)
    source.current = _token(NEXT, expires_in=-5)
    await refresher._attempt(None)
    assert _published(tmp_path) == GOOD
    assert refresher.state.consecutive_failures == 1
    assert "already expired" in (refresher.state.last_error or "")
    source.current = _token(_jwt(time.time() - 60))  # expiry from the JWT's own exp
    await refresher._attempt(None)
    assert _published(tmp_path) == GOOD
    assert refresher.state.consecutive_failures == 2


@pytest.mark.parametrize(
    ("value", "reason"), [("hf_has space", "whitespace"), ("", "empty"), ("hf_ünicode", "printable")]
)
async def test_invalid_token_is_a_counted_failure_and_never_published(
    tmp_path: Path, value: str, reason: str
) -> None:
    source = ScriptedSource(_token(GOOD))
    refresher = _refresher(tmp_path, source)
    await refresher._attempt(None)
    source.current = _token(value)
    await refresher._attempt(None)
    assert _published(tmp_path) == GOOD
    assert reason in (refresher.state.last_error or "")
    assert _sample(refresher, "tokensidecar_rotations_total", result="failure") == 1


async def test_a_new_token_replaces_the_old_and_counts_one_rotation(tmp_path: Path) -> None:
    source = ScriptedSource(_token(GOOD))
    refresher = _refresher(tmp_path, source)
    await refresher._attempt(None)
    await refresher._attempt(None)  # same token polled again: not a rotation
    assert _sample(refresher, "tokensidecar_rotations_total", result="success") == 1
    source.current = _token(NEXT, version="2")
    await refresher._attempt(None)
    assert _published(tmp_path) == NEXT
    assert _sample(refresher, "tokensidecar_rotations_total", result="success") == 2
    metadata = json.loads((tmp_path / "token.json").read_text())
    assert metadata["version"] == "2"


async def test_unexpected_exception_from_a_source_is_a_redacted_failure(tmp_path: Path) -> None:
    class BrokenSource(ScriptedSource):
        async def fetch(self) -> Token:
            raise KeyError(f"data lacks key near {GOOD}")

    source = ScriptedSource(_token(GOOD))
    refresher = _refresher(tmp_path, source)
    await refresher._attempt(None)  # GOOD is now a known secret
    refresher.source = BrokenSource(_token(GOOD))
    delay = await refresher._attempt(None)
    assert delay is not None
    assert refresher.state.consecutive_failures == 1
    assert GOOD not in (refresher.state.last_error or "")
    assert "KeyError" in (refresher.state.last_error or "")


# -- schedule ------------------------------------------------------------------------


def _delays(refresher: Refresher, count: int = 300) -> list[float]:
    return [refresher.next_poll_delay() for _ in range(count)]


async def test_poll_delay_is_the_interval_with_10_percent_jitter(tmp_path: Path) -> None:
    refresher = _refresher(tmp_path, ScriptedSource(_token(GOOD)), refresh_interval=60)
    await refresher._attempt(None)
    delays = _delays(refresher)
    assert all(54 <= d <= 66 for d in delays)
    assert min(delays) < 56 and max(delays) > 64  # the jitter spans the whole ±10%


async def test_poll_delay_is_two_thirds_of_remaining_lifetime_when_sooner(tmp_path: Path) -> None:
    refresher = _refresher(tmp_path, ScriptedSource(_token(GOOD, expires_in=30)), refresh_interval=60)
    await refresher._attempt(None)
    delays = _delays(refresher)
    assert all(18 * 0.999 <= d <= 22 for d in delays)
    assert min(delays) < 19 and max(delays) > 21


async def test_poll_delay_keeps_the_interval_when_the_token_lives_long(tmp_path: Path) -> None:
    refresher = _refresher(tmp_path, ScriptedSource(_token(GOOD, expires_in=3600)), refresh_interval=10)
    await refresher._attempt(None)
    assert all(9 <= d <= 11 for d in _delays(refresher))


async def test_poll_delay_uses_the_jwt_exp_when_the_source_gives_no_expiry(tmp_path: Path) -> None:
    refresher = _refresher(tmp_path, ScriptedSource(_token(_jwt(time.time() + 90))), refresh_interval=300)
    await refresher._attempt(None)
    # 2/3 of the ~90 s left (a little less by the time it is computed), ±10%.
    assert all(54 * 0.99 <= d <= 66 for d in _delays(refresher))
    expiry = _sample(refresher, "tokensidecar_token_expiry_timestamp_seconds")
    assert expiry is not None and abs(expiry - (time.time() + 90)) < 5


async def test_poll_delay_never_drops_below_the_minimum(tmp_path: Path) -> None:
    refresher = _refresher(tmp_path, ScriptedSource(_token(GOOD, expires_in=0.6)), refresh_interval=60)
    await refresher._attempt(None)
    assert all(d >= MIN_REFRESH_SECONDS for d in _delays(refresher, 50))


def test_jittered_stays_within_ten_percent() -> None:
    values = [jittered(100.0) for _ in range(500)]
    assert all(90 <= v <= 110 for v in values)
    assert min(values) < 92 and max(values) > 108


async def test_next_refresh_at_follows_the_schedule(tmp_path: Path) -> None:
    refresher = _refresher(tmp_path, ScriptedSource(_token(GOOD, expires_in=30)), refresh_interval=60)
    task = asyncio.create_task(refresher.run())
    try:
        await _eventually(lambda: refresher.state.last_good is not None and refresher.state.next_refresh_at)
        await asyncio.sleep(0.05)
        next_at = refresher.state.next_refresh_at
        assert next_at is not None
        seconds = (next_at - datetime.now(UTC)).total_seconds()
        assert 17 <= seconds <= 22
        assert refresher.state.status()["next_refresh_at"] == format_time(next_at)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- verification --------------------------------------------------------------------


async def test_verifier_is_called_once_per_new_token_never_per_poll(tmp_path: Path) -> None:
    source = ScriptedSource(_token(GOOD))
    verifier = ScriptedVerifier()
    refresher = _refresher(tmp_path, source, verifier=verifier)
    for _ in range(5):
        await refresher._attempt(None)
    assert verifier.calls == [GOOD]
    source.current = _token(NEXT)
    for _ in range(5):
        await refresher._attempt(None)
    assert verifier.calls == [GOOD, NEXT]
    assert _sample(refresher, "tokensidecar_verify_total", result="ok") == 2
    assert refresher.state.status()["verified"] is True


async def test_hub_expiry_is_kept_across_polls_of_a_verified_token(tmp_path: Path) -> None:
    hub_expiry = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    refresher = _refresher(
        tmp_path, ScriptedSource(_token(GOOD)), verifier=ScriptedVerifier(hub_expiry=hub_expiry)
    )
    for _ in range(3):
        await refresher._attempt(None)
    assert refresher.state.status()["expires_at"] == format_time(hub_expiry)
    assert _sample(refresher, "tokensidecar_token_expiry_timestamp_seconds") == hub_expiry.timestamp()


async def test_returning_to_a_verified_token_keeps_its_own_hub_expiry(tmp_path: Path) -> None:
    """A (verified, Hub expiry in 1 h) → B (Hub down: held, A stays) → A again:
    A must not inherit B's expiry."""
    in_an_hour = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    source = ScriptedSource(_token(GOOD))
    verifier = ScriptedVerifier(hub_expiry=in_an_hour)
    refresher = _refresher(tmp_path, source, verifier=verifier)
    await refresher._attempt(None)
    verifier.verdicts[NEXT] = "unavailable"
    source.current = _token(NEXT, expires_in=120)
    await refresher._attempt(None)
    assert _published(tmp_path) == GOOD
    source.current = _token(GOOD)
    await refresher._attempt(None)
    assert _published(tmp_path) == GOOD
    assert refresher.state.status()["expires_at"] == format_time(in_an_hour)


async def test_rejected_token_is_never_published_and_counted(tmp_path: Path) -> None:
    source = ScriptedSource(_token(GOOD))
    verifier = ScriptedVerifier()
    verifier.verdicts[NEXT] = "rejected"
    refresher = _refresher(tmp_path, source, verifier=verifier)
    await refresher._attempt(None)
    source.current = _token(NEXT)
    await refresher._attempt(None)
    assert _published(tmp_path) == GOOD
    assert _sample(refresher, "tokensidecar_verify_total", result="rejected") == 1
    assert _sample(refresher, "tokensidecar_rotations_total", result="failure") == 1
    assert "rejected" in (refresher.state.last_error or "")
    assert refresher.state.status()["fingerprint"] == Token(value=GOOD, source="x").fingerprint


async def test_rejected_first_token_leaves_nothing_published_and_not_ready(tmp_path: Path) -> None:
    verifier = ScriptedVerifier()
    verifier.verdicts[GOOD] = "rejected"
    refresher = _refresher(tmp_path, ScriptedSource(_token(GOOD)), verifier=verifier)
    await refresher._attempt(None)
    assert _published(tmp_path) is None
    ready, reason = refresher.state.readiness()
    assert not ready
    assert reason.startswith("no token published yet; last error: the Hub rejected")


@pytest.mark.parametrize("policy", ["publish", "hold"])
async def test_hub_outage_never_displaces_a_verified_token(tmp_path: Path, policy: str) -> None:
    source = ScriptedSource(_token(GOOD))
    verifier = ScriptedVerifier()
    verifier.verdicts[NEXT] = "unavailable"
    refresher = _refresher(tmp_path, source, verifier=verifier, on_hub_outage=policy)
    await refresher._attempt(None)
    source.current = _token(NEXT)
    delay = await refresher._attempt(None)
    # The verified, unexpired token stays whatever the policy; the candidate waits.
    assert _published(tmp_path) == GOOD
    assert refresher.state.status()["verified"] is True
    assert refresher.state.readiness() == (True, "token published")
    assert refresher.state.consecutive_failures == 1
    assert delay is not None and delay <= 1.0  # retried on the backoff schedule
    assert _sample(refresher, "tokensidecar_verify_total", result="hub_unavailable_held") == 1
    assert _sample(refresher, "tokensidecar_verify_total", result="hub_unavailable_published") == 0
    # The Hub answers again: the candidate is verified on the next attempt and goes out.
    verifier.verdicts[NEXT] = "ok"
    await refresher._attempt(None)
    assert _published(tmp_path) == NEXT
    assert refresher.state.status()["verified"] is True
    assert verifier.calls == [GOOD, NEXT, NEXT]


async def test_hub_outage_with_publish_policy_publishes_unverified_when_nothing_is_published(
    tmp_path: Path,
) -> None:
    source = ScriptedSource(_token(GOOD))
    verifier = ScriptedVerifier()
    verifier.verdicts[GOOD] = "unavailable"
    refresher = _refresher(tmp_path, source, verifier=verifier, on_hub_outage="publish")
    await refresher._attempt(None)
    assert _published(tmp_path) == GOOD
    assert refresher.state.status()["verified"] is False
    assert refresher.state.consecutive_failures == 0
    assert _sample(refresher, "tokensidecar_verify_total", result="hub_unavailable_published") == 1
    # Still down at the next attempt: the unverified token stays, and the attempt says so.
    await refresher._attempt(None)
    assert _published(tmp_path) == GOOD
    assert "still unverified" in (refresher.state.last_error or "")
    verifier.verdicts[GOOD] = "ok"
    await refresher._attempt(None)
    assert refresher.state.status()["verified"] is True
    assert refresher.state.consecutive_failures == 0


async def test_hub_outage_with_publish_policy_replaces_an_expired_token_unverified(tmp_path: Path) -> None:
    source = ScriptedSource(_token(GOOD, expires_in=0.3))
    verifier = ScriptedVerifier()
    verifier.verdicts[NEXT] = "unavailable"
    refresher = _refresher(tmp_path, source, verifier=verifier, on_hub_outage="publish")
    await refresher._attempt(None)
    published = refresher.state.last_good
    assert published is not None
    await _eventually(published.is_expired)
    source.current = _token(NEXT)
    await refresher._attempt(None)
    assert _published(tmp_path) == NEXT
    assert refresher.state.status()["verified"] is False
    assert refresher.state.readiness() == (True, "token published")


async def test_token_published_unverified_then_rejected_is_reported_unready(tmp_path: Path) -> None:
    source = ScriptedSource(_token(GOOD))
    verifier = ScriptedVerifier()
    verifier.verdicts[GOOD] = "unavailable"
    refresher = _refresher(tmp_path, source, verifier=verifier, on_hub_outage="publish")
    await refresher._attempt(None)
    assert refresher.state.readiness()[0] is True
    verifier.verdicts[GOOD] = "rejected"
    await refresher._attempt(None)
    ready, reason = refresher.state.readiness()
    assert not ready
    assert reason.startswith("the published token was rejected by the Hub")
    assert _sample(refresher, "tokensidecar_ready") == 0
    # A good token replaces it at once, even while the Hub is down: nothing valid is out.
    verifier.verdicts[NEXT] = "unavailable"
    source.current = _token(NEXT)
    await refresher._attempt(None)
    assert _published(tmp_path) == NEXT
    assert refresher.state.readiness() == (True, "token published")


async def test_hub_outage_with_hold_policy_keeps_the_old_token(tmp_path: Path) -> None:
    source = ScriptedSource(_token(GOOD))
    verifier = ScriptedVerifier()
    verifier.verdicts[NEXT] = "unavailable"
    refresher = _refresher(tmp_path, source, verifier=verifier, on_hub_outage="hold")
    await refresher._attempt(None)
    source.current = _token(NEXT)
    await refresher._attempt(None)
    assert _published(tmp_path) == GOOD
    assert refresher.state.consecutive_failures == 1
    assert "holding" in (refresher.state.last_error or "")
    assert _sample(refresher, "tokensidecar_verify_total", result="hub_unavailable_held") == 1
    verifier.verdicts[NEXT] = "ok"
    await refresher._attempt(None)
    assert _published(tmp_path) == NEXT


# -- readiness -----------------------------------------------------------------------


async def test_not_ready_before_any_token_with_a_reason(tmp_path: Path) -> None:
    refresher = _refresher(tmp_path, ScriptedSource(SourceError("secret/hf/a not found")))
    assert refresher.state.readiness() == (False, "no token published yet")
    await refresher._attempt(None)
    ready, reason = refresher.state.readiness()
    assert not ready
    assert reason == "no token published yet; last error: secret/hf/a not found"
    assert _sample(refresher, "tokensidecar_ready") == 0


async def test_published_token_that_expires_makes_the_sidecar_unready(tmp_path: Path) -> None:
    refresher = _refresher(tmp_path, ScriptedSource(_token(GOOD, expires_in=0.3)))
    await refresher._attempt(None)
    assert refresher.update_ready() is True
    await asyncio.sleep(0.4)
    ready, reason = refresher.state.readiness()
    assert not ready
    assert reason.startswith("published token expired at ")
    assert refresher.update_ready() is False
    assert _sample(refresher, "tokensidecar_ready") == 0


async def test_http_surface_reports_readiness_and_a_dead_loop(tmp_path: Path) -> None:
    source = ScriptedSource(SourceError("not yet"))
    refresher = _refresher(tmp_path, source)
    dead_loop: asyncio.Task[None] = asyncio.create_task(asyncio.sleep(0))
    await dead_loop
    async with TestClient(TestServer(build_app(refresher=refresher, loop_task=dead_loop))) as client:
        response = await client.get("/readyz")
        assert response.status == 503
        assert await response.json() == {"ready": False, "reason": "no token published yet"}
        assert (await client.get("/healthz")).status == 500
        source.current = _token(GOOD)
        await refresher._attempt(None)
        response = await client.get("/readyz")
        assert response.status == 200
        assert (await response.json())["ready"] is True
        status = await (await client.get("/status")).json()
        assert GOOD not in json.dumps(status)
        response = await client.get("/metrics")
        assert response.headers["Content-Type"].startswith("text/plain")
        assert "tokensidecar_ready 1.0" in await response.text()


async def test_healthz_is_ok_while_the_loop_runs(tmp_path: Path) -> None:
    refresher = _refresher(tmp_path, ScriptedSource(_token(GOOD)))
    loop_task = asyncio.create_task(refresher.run())
    try:
        async with TestClient(TestServer(build_app(refresher=refresher, loop_task=loop_task))) as client:
            assert (await client.get("/healthz")).status == 200
    finally:
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)


# -- the loop with a watched source --------------------------------------------------


async def test_watched_source_publishes_events_as_they_come(tmp_path: Path) -> None:
    source = WatchedSource(_token(GOOD))
    refresher = _refresher(tmp_path, source)
    task = asyncio.create_task(refresher.run())
    try:
        await _eventually(lambda: _published(tmp_path) == GOOD)
        await _eventually(lambda: source.watches_started == 1)
        for value in (NEXT, THIRD):
            # Published on the event, not on a schedule (how fast: bench/propagation.py).
            source.events.put_nowait(_token(value))
            await _eventually(lambda value=value: _published(tmp_path) == value)  # type: ignore[misc]
        assert refresher.state.next_refresh_at is None  # nothing polled: it waits for the watch
        assert source.fetches == 1  # only the first fetch; the rest came from the watch
        # The file is renamed into place before the counter moves: wait for the bookkeeping.
        await _eventually(lambda: _sample(refresher, "tokensidecar_rotations_total", result="success") == 3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_watched_token_published_during_a_hub_outage_is_verified_when_the_hub_returns(
    tmp_path: Path,
) -> None:
    source = WatchedSource(_token(GOOD))
    verifier = ScriptedVerifier()
    verifier.verdicts[GOOD] = "unavailable"
    refresher = _refresher(tmp_path, source, verifier=verifier, on_hub_outage="publish")
    # Published unverified: a watched source polls until the Hub has vouched for it...
    delay = await refresher._attempt(None)
    assert _published(tmp_path) == GOOD and refresher.state.status()["verified"] is False
    assert delay is not None
    verifier.verdicts[GOOD] = "ok"
    # ...and goes back to waiting for the watch once it has.
    assert await refresher._attempt(None) is None
    assert refresher.state.status()["verified"] is True
    assert verifier.calls == [GOOD, GOOD]


def test_token_json_write_failure_keeps_the_published_token(tmp_path: Path) -> None:
    publisher = Publisher(token_path=tmp_path / "token")
    publisher.publish(_token(GOOD))
    # token.json cannot be replaced (a directory stands in its way): the token still is.
    (tmp_path / "token.json").unlink()
    (tmp_path / "token.json").mkdir()
    assert publisher.publish(_token(NEXT)) is True
    assert _published(tmp_path) == NEXT


async def test_watch_errors_are_counted_and_the_last_good_token_kept(tmp_path: Path) -> None:
    source = WatchedSource(_token(GOOD))
    refresher = _refresher(tmp_path, source)
    task = asyncio.create_task(refresher.run())
    try:
        await _eventually(lambda: _published(tmp_path) == GOOD and source.watches_started == 1)
        source.current = SourceError("Secret hf-token was deleted")
        source.events.put_nowait(SourceError("Secret hf-token was deleted"))
        await _eventually(lambda: refresher.state.consecutive_failures >= 1)
        assert _published(tmp_path) == GOOD
        assert refresher.state.last_error == "Secret hf-token was deleted"
        assert _sample(refresher, "tokensidecar_rotations_total", result="failure") >= 1  # type: ignore[operator]
        source.events.put_nowait(_token(NEXT))
        await _eventually(lambda: _published(tmp_path) == NEXT)
        await _eventually(lambda: refresher.state.consecutive_failures == 0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_watch_that_raises_is_restarted(tmp_path: Path) -> None:
    source = WatchedSource(_token(GOOD))
    refresher = _refresher(tmp_path, source)
    task = asyncio.create_task(refresher.run())
    try:
        await _eventually(lambda: _published(tmp_path) == GOOD and source.watches_started == 1)
        source.events.put_nowait(aiohttp.ServerDisconnectedError())
        await _eventually(lambda: source.watches_started == 2, timeout=3)
        # The broken watch was reported as a failure (then a fetch recovered).
        assert (_sample(refresher, "tokensidecar_rotations_total", result="failure") or 0) >= 1
        source.events.put_nowait(_token(NEXT))
        await _eventually(lambda: _published(tmp_path) == NEXT)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_polled_loop_keeps_last_good_through_an_outage_and_recovers(tmp_path: Path) -> None:
    source = ScriptedSource(_token(GOOD, expires_in=3600))
    refresher = _refresher(tmp_path, source, refresh_interval=1, max_backoff=1)
    task = asyncio.create_task(refresher.run())
    try:
        await _eventually(lambda: _published(tmp_path) == GOOD)
        source.current = SourceError("connection refused")
        await _eventually(lambda: refresher.state.consecutive_failures >= 2, timeout=6)
        assert _published(tmp_path) == GOOD
        next_at, failed_at = refresher.state.next_refresh_at, refresher.state.last_error_at
        assert next_at is not None and failed_at is not None
        assert (next_at - failed_at).total_seconds() <= 1.05  # max_backoff bounds the retry
        source.current = _token(NEXT, expires_in=3600)
        await _eventually(lambda: _published(tmp_path) == NEXT, timeout=3)
        await _eventually(lambda: refresher.state.consecutive_failures == 0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- notification --------------------------------------------------------------------


class FreshTokenSource(ScriptedSource):
    """Returns a new Token object (new fetched_at) for the same value at every poll, as a
    source without a cheap version check does (Vault KV v1, or KV v2 without metadata read)."""

    def __init__(self, value: str) -> None:
        super().__init__(_token(value))
        self.value = value

    async def fetch(self) -> Token:
        self.fetches += 1
        fetched_at = datetime.now(UTC) + timedelta(seconds=self.fetches)
        return Token(value=self.value, source=self.kind, version="1", fetched_at=fetched_at)


async def test_polling_an_unchanged_token_notifies_only_once(tmp_path: Path) -> None:
    from tests.sidecar.test_notify import NotifyEndpoint
    from tokensidecar.sidecar.notify import Notifier

    endpoint = NotifyEndpoint()
    await endpoint.start()
    try:
        source = FreshTokenSource(GOOD)
        refresher = _refresher(tmp_path, source)
        refresher.notifier = Notifier(metrics=refresher.metrics, url=endpoint.url)
        for _ in range(3):
            await refresher._attempt(None)
        source.value = NEXT
        await refresher._attempt(None)
        fingerprints = [body["fingerprint"] for body in endpoint.bodies]
        assert fingerprints == [
            Token(value=GOOD, source="x").fingerprint,
            Token(value=NEXT, source="x").fingerprint,
        ]
    finally:
        await endpoint.stop()


# -- what a failure means ----------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (SourceError("permission denied reading secret/hf/model-a", retryable=False), "refused"),
        (SourceError("Vault at http://vault:8200 is unreachable"), "unavailable"),
    ],
)
async def test_status_says_whether_the_source_refused_or_could_not_answer(
    tmp_path: Path, failure: SourceError, kind: str
) -> None:
    refresher = _refresher(tmp_path, ScriptedSource(failure))
    await refresher._attempt(None)
    status = refresher.state.status()
    assert status["last_error"] == str(failure)
    assert status["last_error_kind"] == kind


@pytest.mark.parametrize(("verdict", "kind"), [("rejected", "refused"), ("unavailable", "unavailable")])
async def test_status_says_whether_the_hub_refused_the_token_or_could_not_answer(
    tmp_path: Path, verdict: str, kind: str
) -> None:
    source = ScriptedSource(_token(GOOD))
    verifier = ScriptedVerifier()
    refresher = _refresher(tmp_path, source, verifier=verifier)
    await refresher._attempt(None)  # GOOD verified and published
    source.current = _token(NEXT)
    verifier.verdicts[NEXT] = verdict
    await refresher._attempt(None)
    assert refresher.state.status()["last_error_kind"] == kind
    assert _published(tmp_path) == GOOD


async def test_a_token_that_fails_validation_is_a_refusal_and_success_clears_the_kind(tmp_path: Path) -> None:
    source = ScriptedSource(_token("hf_has a space"))
    refresher = _refresher(tmp_path, source)
    await refresher._attempt(None)
    assert refresher.state.status()["last_error_kind"] == "refused"
    source.current = _token(GOOD)
    await refresher._attempt(None)
    status = refresher.state.status()
    assert (status["last_error"], status["last_error_kind"]) == (None, None)

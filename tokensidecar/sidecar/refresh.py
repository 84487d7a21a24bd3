"""The refresher: turns a source into a published, verified, fresh token — and keeps it so.

One loop per sidecar. Every candidate token, whether fetched on schedule or seen by a
watch, goes through the same steps: validate → (if new) verify at the Hub → publish →
notify. Whatever fails, the last good token stays published, the failure is counted
and reported, and the loop retries with full-jitter backoff.

Scheduling (docs/behaviour.md, refreshing):

* polled sources are fetched every ``refresh_interval``, or at 2/3 of the token's
  remaining lifetime when that is sooner, with ±10% jitter;
* watched sources publish each change as it is seen and are only fetched again after
  a failure (to retry) — no polling;
* after a failure the next attempt comes after ``Backoff`` (1 s doubling to
  ``max_backoff``, full jitter).

A Hub outage never displaces a verified token (docs/behaviour.md). When the Hub cannot judge a
new candidate (5xx, 429, timeout), the candidate is published unverified only under the
``publish`` outage policy *and* only when no valid token is published (none yet, or the
published one has expired); otherwise the published token stays and the candidate is
fetched and verified again on the next attempt. A token that went out unverified and that
the Hub later rejects is replaced by the last verified token while that one is still valid;
when there is none, the rejected token stays on disk (there is nothing better to serve) but
readiness says it was rejected.

The Hub rate-limits ``whoami``, so a token is verified once, when its fingerprint is new,
never on every poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from tokensidecar.backends.hub_errors import HubMisconfigured, HubUnavailable, TokenRejected
from tokensidecar.backoff import Backoff, jittered
from tokensidecar.redact import redact, safe_error
from tokensidecar.sidecar.publish import PublishError
from tokensidecar.sources import SourceError
from tokensidecar.token import InvalidToken, Token, format_time, utcnow, validate

if TYPE_CHECKING:
    from tokensidecar.backends.verify import Verifier
    from tokensidecar.sidecar.metrics import SidecarMetrics
    from tokensidecar.sidecar.notify import Notifier
    from tokensidecar.sidecar.publish import Publisher
    from tokensidecar.sources import Source

__all__ = ["RefreshFailed", "RefreshState", "Refresher", "close_upstreams"]

log = logging.getLogger(__name__)

# Refreshing more often than this buys nothing and would hammer a source whose tokens
# live only seconds (or whose expiry metadata is wrong).
MIN_REFRESH_SECONDS = 1.0


#: What a failed attempt means, as /status reports it (``last_error_kind``).
ErrorKind = Literal["unavailable", "refused", "unexpected"]


class RefreshFailed(Exception):
    """One attempt failed; the message is redacted and says what to look at.

    Messages often quote an upstream's error text, which can echo what it was sent, so
    they go through the redactor here, before /status, /readyz or stderr can show them.
    """

    def __init__(self, message: str, *, kind: ErrorKind = "unavailable", config_error: bool = False) -> None:
        super().__init__(redact(message))
        #: What the failure means (:mod:`tokensidecar.backends.errors`): ``unavailable``
        #: (an upstream could not answer; the same attempt can succeed later), ``refused``
        #: (a verdict: a token the Hub or validation refused, a login or path denied), or
        #: ``unexpected`` (a bug). /status reports it as ``last_error_kind``.
        self.kind: ErrorKind = kind
        #: The Hub endpoint is misconfigured: ``once`` exits 2, as for any bad setting.
        self.config_error = config_error


@dataclass
class RefreshState:
    """What /status, /readyz and the metrics report. Never holds the token value itself
    except inside ``last_good``, whose ``repr`` hides it."""

    source: str
    last_good: Token | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_error_kind: ErrorKind | None = None
    consecutive_failures: int = 0
    next_refresh_at: datetime | None = None
    started_at: datetime = field(default_factory=utcnow)
    #: Set when the published token went out unverified and the Hub has since rejected it
    #: with no verified token left to fall back to: the reason, redacted.
    published_rejected: str | None = None

    def has_valid_token(self, now: datetime | None = None) -> bool:
        """A token is published, unexpired and not rejected by the Hub."""
        good = self.last_good
        return good is not None and not good.is_expired(now) and self.published_rejected is None

    def readiness(self, now: datetime | None = None) -> tuple[bool, str]:
        if self.last_good is None:
            reason = "no token published yet"
            if self.last_error:
                reason += f"; last error: {self.last_error}"
            return False, reason
        if self.published_rejected is not None:
            return False, f"the published token was rejected by the Hub: {self.published_rejected}"
        if self.last_good.is_expired(now):
            return False, f"published token expired at {format_time(self.last_good.expiry())}"
        return True, "token published"

    def status(self) -> dict[str, Any]:
        good = self.last_good
        return {
            "source": self.source,
            "version": good.version if good else None,
            "fingerprint": good.fingerprint if good else None,
            "fetched_at": format_time(good.fetched_at) if good else None,
            "expires_at": format_time(good.expiry()) if good else None,
            "verified": good.verified if good else None,
            "scope": good.scope.summary() if good and good.scope else None,
            "next_refresh_at": format_time(self.next_refresh_at),
            "last_error": self.last_error,
            "last_error_at": format_time(self.last_error_at),
            "last_error_kind": self.last_error_kind,
            "consecutive_failures": self.consecutive_failures,
            "ready": self.readiness()[0],
        }


async def close_upstreams(*, source: Source, verifier: Verifier | None) -> None:
    """Close a refresher's source, then its verifier, at shutdown. Each close is best
    effort: a failure to release one (a Vault login already expired, a dropped
    connection) must not keep the other open or fail the shutdown."""
    with contextlib.suppress(Exception):
        await source.aclose()
    if verifier is not None:
        with contextlib.suppress(Exception):
            await verifier.aclose()


class Refresher:
    def __init__(
        self,
        *,
        source: Source,
        publisher: Publisher,
        metrics: SidecarMetrics,
        verifier: Verifier | None = None,
        notifier: Notifier | None = None,
        refresh_interval: float = 60.0,
        max_backoff: float = 60.0,
        on_hub_outage: str = "publish",
    ) -> None:
        self.source = source
        self.publisher = publisher
        self.metrics = metrics
        self.verifier = verifier
        self.notifier = notifier
        self.refresh_interval = refresh_interval
        self.on_hub_outage = on_hub_outage
        self.backoff = Backoff(base=1.0, cap=max_backoff)
        self.state = RefreshState(source=source.kind)
        # The last token the Hub accepted, with the expiry the Hub gave it: a token polled
        # again (or coming back after another) keeps its own verdict and expiry.
        self._verified: Token | None = None
        #: Set once the first refresh has finished, successfully or not.
        self.first_attempt = asyncio.Event()

    # -- one candidate ---------------------------------------------------------------

    async def fetch_and_publish(self) -> Token:
        """Fetch once and run the candidate through validate → verify → publish."""
        started = time.perf_counter()
        try:
            token = await self.source.fetch()
        except SourceError as exc:
            raise RefreshFailed(str(exc), kind=_source_error_kind(exc)) from None
        finally:
            self.metrics.fetch_duration.observe(time.perf_counter() - started)
        return await self.accept(token)

    async def accept(self, candidate: Token) -> Token:
        """Validate, verify (when new) and publish a candidate; raise RefreshFailed."""
        try:
            token = replace(candidate, value=validate(candidate.value), verified=False)
        except InvalidToken as exc:
            raise RefreshFailed(f"token from {candidate.source} rejected: {exc}", kind="refused") from None
        if token.is_expired():
            raise RefreshFailed(
                f"token from {candidate.source} already expired at {format_time(token.expiry())}",
                kind="refused",
            )
        token = await self._verify(token)
        try:
            changed = await asyncio.to_thread(self.publisher.publish, token)
        except PublishError as exc:
            raise RefreshFailed(str(exc)) from None
        previous = self.state.last_good
        self.state.last_good = token
        self.state.published_rejected = None
        is_new = previous is None or previous.fingerprint != token.fingerprint
        if is_new:
            self.metrics.rotations.labels(result="success").inc()
            log.info(
                "published a new token",
                extra={
                    "fingerprint": token.fingerprint,
                    "version": token.version,
                    "expires_at": format_time(token.expiry()),
                    "verified": token.verified,
                    "previous_fingerprint": previous.fingerprint if previous else None,
                },
            )
        if changed:
            self.metrics.publishes.inc()
        # Only a new token is worth waking the model server for; token.json also changes
        # when only fetched_at or the expiry moved.
        if is_new and self.notifier is not None:
            await self.notifier.notify(token.metadata())
        return token

    async def _verify(self, token: Token) -> Token:
        if self.verifier is None:
            return token
        verified_before = self._verified
        if verified_before is not None and token.fingerprint == verified_before.fingerprint:
            # Already accepted by the Hub: keep its verdict and the expiry it gave.
            again = replace(
                token,
                expires_at=token.expires_at or verified_before.expires_at,
                verified=True,
                scope=verified_before.scope,
            )
            self._verified = again
            return again
        try:
            verified = await self.verifier.verify(token)
        except HubMisconfigured as exc:
            self.metrics.verify.labels(result="misconfigured").inc()
            raise RefreshFailed(f"configuration error: {exc}", kind="refused", config_error=True) from None
        except TokenRejected as exc:
            self.metrics.verify.labels(result="rejected").inc()
            message = f"the Hub rejected the new token: {exc}"
            if self._is_published_unverified(token):
                await self._withdraw_rejected(redact(str(exc)))
            raise RefreshFailed(message, kind="refused") from None
        except HubUnavailable as exc:
            if self.on_hub_outage == "publish" and not self.state.has_valid_token():
                self.metrics.verify.labels(result="hub_unavailable_published").inc()
                log.warning(
                    "the Hub is unavailable and no valid token is published; "
                    "publishing the new token unverified",
                    extra={"fingerprint": token.fingerprint, "error": redact(str(exc))},
                )
                return token
            self.metrics.verify.labels(result="hub_unavailable_held").inc()
            if self._is_published_unverified(token):
                # The token on disk is this one, still waiting for a verdict: it stays.
                raise RefreshFailed(
                    f"the Hub is unavailable, the published token is still unverified: {exc}"
                ) from None
            raise RefreshFailed(
                f"the Hub is unavailable, holding the new token until it can be verified: {exc}"
            ) from None
        self.metrics.verify.labels(result="ok").inc()
        self._verified = verified
        return verified

    def _is_published_unverified(self, token: Token) -> bool:
        published = self.state.last_good
        return published is not None and not published.verified and published.fingerprint == token.fingerprint

    async def _withdraw_rejected(self, reason: str) -> None:
        """The published token went out unverified and the Hub has now rejected it: put the
        last verified token back while it is valid; otherwise say so in readiness."""
        fallback = self._verified
        if fallback is not None and not fallback.is_expired():
            try:
                await asyncio.to_thread(self.publisher.publish, fallback)
            except PublishError as exc:
                log.warning("could not restore the last verified token", extra={"error": str(exc)})
            else:
                rejected = self.state.last_good
                self.state.last_good = fallback
                self.state.published_rejected = None
                log.warning(
                    "the Hub rejected the token published unverified; restored the last verified token",
                    extra={
                        "fingerprint": fallback.fingerprint,
                        "rejected_fingerprint": rejected.fingerprint if rejected else None,
                    },
                )
                if self.notifier is not None:
                    await self.notifier.notify(fallback.metadata())
                return
        self.state.published_rejected = reason
        log.error(
            "the Hub rejected the token published unverified and no verified token is left to restore",
            extra={"fingerprint": self.state.last_good.fingerprint if self.state.last_good else None},
        )

    # -- bookkeeping -------------------------------------------------------------------

    def _record_success(self) -> None:
        token = self.state.last_good
        self.state.consecutive_failures = 0
        self.state.last_error = None
        self.state.last_error_kind = None
        self.backoff.reset()
        self.metrics.consecutive_failures.set(0)
        self.metrics.last_success.set(time.time())
        expiry = token.expiry() if token else None
        self.metrics.token_expiry.set(expiry.timestamp() if expiry else float("nan"))
        self.update_ready()

    def _record_failure(self, message: str, *, kind: ErrorKind) -> float:
        message = redact(message)
        self.state.consecutive_failures += 1
        self.state.last_error = message
        self.state.last_error_at = utcnow()
        self.state.last_error_kind = kind
        self.metrics.rotations.labels(result="failure").inc()
        self.metrics.consecutive_failures.set(self.state.consecutive_failures)
        self.update_ready()
        delay = self.backoff.next_delay()
        log.warning(
            "refresh failed; keeping the last good token",
            extra={
                "error": message,
                "error_kind": kind,
                "consecutive_failures": self.state.consecutive_failures,
                "retry_in_seconds": round(delay, 3),
                "last_good_fingerprint": self.state.last_good.fingerprint if self.state.last_good else None,
            },
        )
        return delay

    def update_ready(self) -> bool:
        ready, _ = self.state.readiness()
        self.metrics.ready.set(1 if ready else 0)
        return ready

    def next_poll_delay(self) -> float:
        """Refresh interval, or 2/3 of the remaining lifetime when sooner; ±10% jitter."""
        delay = self.refresh_interval
        token = self.state.last_good
        expiry = token.expiry() if token else None
        if expiry is not None:
            remaining = (expiry - utcnow()).total_seconds()
            delay = min(delay, remaining * 2 / 3)
        return max(MIN_REFRESH_SECONDS, jittered(delay))

    # -- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Refresh until cancelled. Watched sources feed a queue; timeouts trigger fetches."""
        events: asyncio.Queue[Token | SourceError] = asyncio.Queue()
        pump = asyncio.create_task(self._pump_watch(events)) if self.source.watchable else None
        delay: float | None = 0.0
        try:
            while True:
                self._schedule(delay)
                candidate: Token | SourceError | None = None
                try:
                    if delay is None:
                        candidate = await events.get()
                    elif delay > 0:
                        candidate = await asyncio.wait_for(events.get(), timeout=delay)
                except TimeoutError:
                    candidate = None
                delay = await self._attempt(candidate)
        finally:
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump

    async def _attempt(self, candidate: Token | SourceError | None) -> float | None:
        """One refresh; return the delay before the next fetch (None: wait for the watch)."""
        try:
            return await self._attempt_once(candidate)
        finally:
            self.first_attempt.set()

    async def _attempt_once(self, candidate: Token | SourceError | None) -> float | None:
        try:
            if candidate is None:
                await self.fetch_and_publish()
            elif isinstance(candidate, SourceError):
                raise RefreshFailed(str(candidate), kind=_source_error_kind(candidate))
            else:
                await self.accept(candidate)
        except RefreshFailed as exc:
            return self._record_failure(str(exc), kind=exc.kind)
        except Exception as exc:  # a bug or an unexpected client error: report, keep going
            log.exception("unexpected error during refresh")
            return self._record_failure(safe_error(exc), kind="unexpected")
        self._record_success()
        if not self._is_settled():
            # Out unverified during a Hub outage: ask the Hub again on the backoff schedule.
            return min(self.next_poll_delay(), self.backoff.next_delay())
        if self.source.watchable:
            return None  # the watch brings the next change
        return self.next_poll_delay()

    def _is_settled(self) -> bool:
        """Nothing to come back for: no verifier, or the Hub has vouched for the token.
        A token published unverified during a Hub outage is fetched (and so verified)
        again on the backoff schedule, even from a watched source."""
        token = self.state.last_good
        return self.verifier is None or (token is not None and token.verified)

    def _schedule(self, delay: float | None) -> None:
        self.state.next_refresh_at = None if delay is None else utcnow() + timedelta(seconds=delay)

    async def _pump_watch(self, events: asyncio.Queue[Token | SourceError]) -> None:
        """Feed watch events to the loop; restart the watch (with backoff) when it breaks."""
        backoff = Backoff(base=1.0, cap=self.backoff.cap)
        while True:
            try:
                async for event in self.source.watch():
                    backoff.reset()
                    await events.put(event)
                delay = backoff.next_delay()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await events.put(SourceError(f"watch failed: {safe_error(exc)}"))
                delay = backoff.next_delay()
            await asyncio.sleep(delay)


def _source_error_kind(error: SourceError) -> ErrorKind:
    """A source's failure in the refresher's words: its upstream refused, or could not answer.

    Both are retried on the same backoff (a refusal is usually fixed outside the pod: a
    policy edited, a new subject token); the kind tells the operator which one to chase."""
    return "unavailable" if error.retryable else "refused"

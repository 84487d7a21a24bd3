"""Who is calling: a Kubernetes service-account token, checked by the API server (TokenReview).

Workloads send ``Authorization: Bearer <projected service-account token>`` whose audience
is the gateway's (``TOKENSIDECAR_GATEWAY_AUDIENCE``). The gateway never verifies the JWT
itself — it holds no cluster signing key and would miss revocation of bound tokens (a
deleted pod's token stops being valid at once) — it asks the API server with a
``TokenReview`` (``authentication.k8s.io/v1``, ``spec.audiences = [audience]``), the way
kube-rbac-proxy and Vault's Kubernetes auth do. The answer is trusted only when
``status.authenticated`` is true, ``status.audiences`` contains the audience (an
authenticator that does not support audiences answers with none: see the TokenReview API
reference, "audiences ... an authenticator that does not support audience validation
returns an empty list") and ``status.user.username`` is a service account
(``system:serviceaccount:<namespace>:<name>``).

A model download is hundreds of requests with the same token, so answers are cached:

* a positive answer until the token's ``exp``, read from the JWT payload *only* to know
  how long to keep the answer (its signature is the API server's business, and nothing
  else in it is believed); a token without ``exp`` (a legacy Secret-based token) for
  ``UNKNOWN_EXPIRY_TTL``;
* a negative answer for ``NEGATIVE_TTL`` seconds, in a separate, smaller cache, so a
  client spraying garbage tokens cannot evict the answers of real workloads;
* both bounded (LRU) and keyed by the token's sha256, never by the token.

The API server unreachable (connection refused, timeout, 5xx, 429, or 401/403 to the
gateway's own credentials) fails closed: a token with no cached answer raises
:class:`IdentityUnavailable` (the data plane answers 503), while cached answers keep
working until their tokens expire. Concurrent requests with the same unknown token share
one TokenReview. The official client is synchronous, so reviews run in a small dedicated
thread pool (the default executor is the data plane's, for file I/O) with an explicit
(connect, read) timeout on every request.

Interface shared with the data plane (tokensidecar/gateway/server.py): :class:`Identity`,
:class:`IdentityUnavailable`, :meth:`TokenReviewer.review`, :meth:`TokenReviewer.aclose`.
Extend, don't change.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from tokensidecar.backends import kube
from tokensidecar.backends.errors import UpstreamUnavailable
from tokensidecar.backends.settings import KubernetesSettings
from tokensidecar.redact import redact
from tokensidecar.token import jwt_exp

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

__all__ = ["Identity", "IdentityMetrics", "IdentityUnavailable", "TokenReviewer", "parse_service_account"]

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"

# (connect, read) seconds for one TokenReview. It sits on the request path of a download:
# an API server that takes longer is treated as unreachable (503), and the client retries.
REVIEW_TIMEOUT = (2.0, 5.0)
# Kubernetes' own webhook token authenticator caches failures for 10 s by default
# (--authentication-token-webhook-cache-ttl applies to both; kube-apiserver caches
# failed webhook reviews briefly): long enough to absorb a retry storm from a pod with a
# bad token, short enough that a fixed RoleBinding or a fresh token works at once.
NEGATIVE_TTL = 10.0
# A token without ``exp`` (legacy, Secret-based) is re-reviewed this often, so a deleted
# Secret stops working within minutes.
UNKNOWN_EXPIRY_TTL = 300.0
# Threads for TokenReviews: enough to overlap a few slow reviews, few enough that a flood
# of new tokens cannot open hundreds of connections to the API server.
REVIEW_THREADS = 4
# Distinct new tokens being reviewed at once, past which a new one is answered 503 at once:
# a flood of garbage tokens (each needs its own review) must not queue without bound in
# front of the API server while real workloads wait behind it.
MAX_PENDING_REVIEWS = 256
# During an API server outage every request with a new token fails; one warning per this
# many seconds says so (tokensidecar_gateway_tokenreviews_total{result="error"} counts them all).
OUTAGE_LOG_INTERVAL = 10.0


@dataclass(frozen=True)
class Identity:
    """A workload, as the API server vouched for it."""

    namespace: str
    service_account: str
    username: str  # system:serviceaccount:<ns>:<sa>
    expires_at: datetime | None

    @property
    def subject(self) -> str:
        """``<namespace>/<service account>``: how audit lines and metrics name a caller."""
        return f"{self.namespace}/{self.service_account}"


class IdentityUnavailable(UpstreamUnavailable):
    """The API server could not answer and there is no cached answer for this token."""


def parse_service_account(username: str) -> tuple[str, str] | None:
    """``system:serviceaccount:<ns>:<sa>`` → ``(ns, sa)``; None for any other user."""
    if not username.startswith(SERVICE_ACCOUNT_PREFIX):
        return None
    parts = username[len(SERVICE_ACCOUNT_PREFIX) :].split(":")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


@dataclass(frozen=True)
class _Answer:
    identity: Identity | None
    until: float  # epoch seconds: fresh until then


class IdentityMetrics:
    """TokenReviews and the identity cache."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.reviews = Counter(
            "tokensidecar_gateway_tokenreviews",
            "TokenReviews sent to the API server, by result (authenticated, rejected, error).",
            ["result"],
            registry=registry,
        )
        for result in ("authenticated", "rejected", "error"):
            self.reviews.labels(result=result)
        self.cache = Counter(
            "tokensidecar_gateway_identity_cache",
            "Identity lookups, by whether a cached TokenReview answered (hit) or not (miss).",
            ["result"],
            registry=registry,
        )
        # Bound once: labels() costs a lock and a dict lookup, on the path of every request.
        self.hits = self.cache.labels(result="hit")
        self.misses = self.cache.labels(result="miss")
        self.entries = Gauge(
            "tokensidecar_gateway_identity_cache_entries",
            "TokenReview answers held in memory.",
            registry=registry,
        )


class TokenReviewer:
    """Turns a bearer token into an :class:`Identity` (or None), caching the API server's answers.

    ``kube`` is an ``ApiClient`` from :func:`tokensidecar.backends.kube.api_client`; the reviewer owns
    it and closes it in :meth:`aclose`. Metrics go to ``registry`` when one is given (the
    gateway's); ``clock`` is wall-clock epoch seconds (token ``exp`` is wall-clock).
    """

    def __init__(
        self,
        *,
        audience: str,
        kube: ApiClient,
        cache_size: int = 10_000,
        negative_ttl: float = NEGATIVE_TTL,
        unknown_expiry_ttl: float = UNKNOWN_EXPIRY_TTL,
        timeout: tuple[float, float] = REVIEW_TIMEOUT,
        max_pending: int = MAX_PENDING_REVIEWS,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        from kubernetes.client import AuthenticationV1Api

        self.audience = audience
        self.api = kube
        self._authentication = AuthenticationV1Api(kube)
        self.cache_size = cache_size
        self.negative_cache_size = max(100, cache_size // 10)
        self.negative_ttl = negative_ttl
        self.unknown_expiry_ttl = unknown_expiry_ttl
        self.timeout = timeout
        self.max_pending = max_pending
        self.clock = clock
        self._positive: OrderedDict[bytes, _Answer] = OrderedDict()
        self._negative: OrderedDict[bytes, _Answer] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future[_Answer]] = {}
        self._executor = ThreadPoolExecutor(max_workers=REVIEW_THREADS, thread_name_prefix="tokenreview")
        self._metrics = IdentityMetrics(registry)
        #: TokenReviews sent (answered or not): what the cache saves is visible in tests.
        self.reviews_sent = 0
        self._last_warning = -OUTAGE_LOG_INTERVAL

    @classmethod
    def from_kubeconfig(
        cls,
        *,
        audience: str,
        kubeconfig: str | None,
        cache_size: int = 10_000,
        registry: CollectorRegistry | None = None,
    ) -> TokenReviewer:
        """In-cluster config, or ``KUBECONFIG`` (a ConfigError naming it when neither works)."""
        return cls(
            audience=audience,
            kube=kube.api_client(configuration=KubernetesSettings.for_kubeconfig(kubeconfig).configuration),
            cache_size=cache_size,
            registry=registry,
        )

    # -- the one public question ----------------------------------------------------------

    async def review(self, token: str) -> Identity | None:
        """The workload behind ``token``, or None when it is not a valid token for the audience.

        Raises :class:`IdentityUnavailable` when the API server cannot answer and nothing
        is cached for this token.
        """
        token = token.strip()
        if not token:
            return None
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        now = self.clock()
        cached = self._lookup(key, now)
        if cached is not None:
            self._metrics.hits.inc()
            return cached.identity
        self._metrics.misses.inc()
        pending = self._inflight.get(key)
        if pending is None:
            if len(self._inflight) >= self.max_pending:
                self._metrics.reviews.labels(result="error").inc()
                raise IdentityUnavailable(f"more than {self.max_pending} TokenReviews in flight")
            pending = asyncio.get_running_loop().create_future()
            self._inflight[key] = pending
            try:
                answer = await self._ask(key, token)
            except BaseException as exc:
                if isinstance(exc, IdentityUnavailable):
                    pending.set_exception(exc)
                else:
                    pending.cancel()
                # Nobody may be waiting on the future; mark its exception as retrieved.
                with contextlib.suppress(BaseException):
                    pending.exception()
                raise
            else:
                pending.set_result(answer)
                return answer.identity
            finally:
                self._inflight.pop(key, None)
        # Another request is already asking about this token: share its answer.
        try:
            answer = await asyncio.shield(pending)
        except asyncio.CancelledError:
            if pending.cancelled():  # the request that asked was cancelled: ask again
                return await self.review(token)
            raise
        return answer.identity

    def _lookup(self, key: bytes, now: float) -> _Answer | None:
        answer = self._positive.get(key)
        if answer is not None:
            if answer.until > now:
                self._positive.move_to_end(key)
                return answer
            del self._positive[key]  # the token expired: the API server decides again
            self._update_size()
        answer = self._negative.get(key)
        if answer is not None and answer.until > now:
            self._negative.move_to_end(key)
            return answer
        return None

    async def _ask(self, key: bytes, token: str) -> _Answer:
        loop = asyncio.get_running_loop()
        self.reviews_sent += 1
        try:
            review = await loop.run_in_executor(self._executor, self._create_review, token)
        except Exception as exc:
            self._metrics.reviews.labels(result="error").inc()
            stale = self._negative.get(key)
            if stale is not None:
                # A token the API server refused before stays refused while it cannot
                # answer: 401, not 503. Fail closed either way.
                return stale
            raise IdentityUnavailable(self._describe(exc)) from None
        answer = self._judge(review, token)
        self._store(key, answer)
        return answer

    def _create_review(self, token: str) -> dict[str, Any]:
        body: Any = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.audience]},
        }
        response: Any = self._authentication.create_token_review(
            body, _preload_content=False, _request_timeout=self.timeout
        )
        review: Any = json.loads(response.data)
        if not isinstance(review, dict):
            raise ValueError("the TokenReview answer is not a JSON object")
        return review

    def _judge(self, review: dict[str, Any], token: str) -> _Answer:
        now = self.clock()
        status = review.get("status") or {}
        refused = _Answer(identity=None, until=now + self.negative_ttl)
        if status.get("authenticated") is not True:
            self._metrics.reviews.labels(result="rejected").inc()
            log.debug(
                "token refused by the API server",
                extra={"error": redact(str(status.get("error") or ""))[:300]},
            )
            return refused
        audiences = status.get("audiences") or []
        if self.audience not in audiences:
            # The authenticator did not confirm our audience (it may not support audiences,
            # or the token is for another one): a token meant for someone else.
            self._metrics.reviews.labels(result="rejected").inc()
            log.info("token authenticated without the gateway's audience; refused")
            return refused
        username = str((status.get("user") or {}).get("username") or "")
        account = parse_service_account(username)
        if account is None:
            self._metrics.reviews.labels(result="rejected").inc()
            log.info("token is not a service account's; refused", extra={"username": username[:200]})
            return refused
        self._metrics.reviews.labels(result="authenticated").inc()
        exp = jwt_exp(token)  # only how long to cache; the TokenReview decides
        until = exp if exp is not None else now + self.unknown_expiry_ttl
        identity = Identity(
            namespace=account[0],
            service_account=account[1],
            username=username,
            expires_at=datetime.fromtimestamp(exp, UTC) if exp is not None else None,
        )
        return _Answer(identity=identity, until=until)

    def _store(self, key: bytes, answer: _Answer) -> None:
        if answer.identity is None:
            self._negative[key] = answer
            self._negative.move_to_end(key)
            while len(self._negative) > self.negative_cache_size:
                self._negative.popitem(last=False)
        elif answer.until > self.clock():
            self._negative.pop(key, None)
            self._positive[key] = answer
            self._positive.move_to_end(key)
            while len(self._positive) > self.cache_size:
                self._positive.popitem(last=False)
        self._update_size()

    def _update_size(self) -> None:
        self._metrics.entries.set(len(self._positive) + len(self._negative))

    def _describe(self, exc: BaseException) -> str:
        message = kube.describe_error(exc, action="create tokenreview")
        now = time.monotonic()
        if now - self._last_warning >= OUTAGE_LOG_INTERVAL:  # one line per interval, not per request
            self._last_warning = now
            log.warning(
                "TokenReview failed; unknown tokens are refused until it answers", extra={"error": message}
            )
        return message

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.api.close)

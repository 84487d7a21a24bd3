"""The Gatekeeper: one verdict per request — who is calling (identity), may they (policy) —
counted, and written to the audit log.

Every route of the data plane asks :meth:`Gatekeeper.check` before it reads any metadata or
byte, cache hits included (docs/gateway.md). The four outcomes and what the data plane answers:

* ``allowed`` — serve, fetching upstream with ``verdict.decision.credential``;
* ``unauthenticated`` — no bearer token, or one the API server does not vouch for: 401, as
  the Hub answers an invalid token;
* ``denied`` — a valid workload the policy does not allow: exactly what the Hub answers
  for a repo the caller cannot see (404 ``RepoNotFound``), so a denied caller learns
  nothing a Hub would not tell it;
* ``unavailable`` — the API server cannot answer for an uncached token: 503 (fail closed).

Audit: one JSON line per decision (logger ``tokensidecar.gateway.audit``) with the subject,
repo, revision, decision, rule, credential, reason and policy version — never a token. A
``snapshot_download`` is hundreds of requests with the same answer, so lines are
rate-bounded: the first decision for a (subject, repo, revision, decision) is logged at
once, identical ones within ``AUDIT_INTERVAL`` are only counted, and the next line for that
key carries ``suppressed``: how many were not logged since the previous one. The keys are
bounded (LRU); a key pushed out with a count still pending writes its line then, so no
decision goes uncounted in the log.

Metric: ``tokensidecar_gateway_authz_total{result}`` (allowed, denied, unauthenticated,
unavailable) is created here, on the registry the data plane passes in
(``GatewayMetrics.registry``), so one ``/metrics`` page carries it.

Interface shared with the data plane (tokensidecar/gateway/server.py): :class:`Verdict`,
:class:`Gatekeeper` (``check``). Extend, don't change.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter

from tokensidecar.gateway.identity import Identity, IdentityMetrics, IdentityUnavailable, TokenReviewer
from tokensidecar.gateway.policy import Decision, PolicyFile, PolicyMetrics

__all__ = [
    "AUDIT_LOGGER",
    "AuditLog",
    "AuthzMetrics",
    "ControlPlaneMetrics",
    "Gatekeeper",
    "Outcome",
    "Verdict",
    "bearer_token",
]

AUDIT_LOGGER = "tokensidecar.gateway.audit"
audit_log = logging.getLogger(AUDIT_LOGGER)

# Long enough that a model download (minutes) writes a handful of lines, not thousands;
# short enough that a denial that keeps happening shows up again within a minute.
AUDIT_INTERVAL = 60.0
# Distinct (subject, repo, revision, decision) keys remembered for rate-bounding.
AUDIT_KEYS = 10_000

Outcome = Literal["allowed", "unauthenticated", "denied", "unavailable"]
OUTCOMES: tuple[Outcome, ...] = ("allowed", "unauthenticated", "denied", "unavailable")


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    identity: Identity | None
    decision: Decision | None


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


@dataclass
class _Pending:
    logged_at: float
    suppressed: int = 0


_AuditKey = tuple[str | None, str, str, str]


class AuditLog:
    """Rate-bounded audit lines: one per key per ``interval``, the rest counted."""

    def __init__(
        self,
        *,
        interval: float = AUDIT_INTERVAL,
        max_keys: int = AUDIT_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self.clock = clock
        self._keys: OrderedDict[_AuditKey, _Pending] = OrderedDict()

    def record(
        self,
        *,
        verdict: Verdict,
        repo: str,
        revision: str,
        policy_version: str | None,
        known_as: frozenset[str] = frozenset(),
    ) -> None:
        subject = verdict.identity.subject if verdict.identity is not None else None
        key: _AuditKey = (subject, repo, revision, verdict.outcome)
        now = self.clock()
        pending = self._keys.get(key)
        if pending is not None and now - pending.logged_at < self.interval:
            pending.suppressed += 1
            self._keys.move_to_end(key)
            return
        suppressed = pending.suppressed if pending is not None else 0
        self._keys[key] = _Pending(logged_at=now)
        self._keys.move_to_end(key)
        self._write(
            verdict,
            repo=repo,
            revision=revision,
            policy_version=policy_version,
            suppressed=suppressed,
            known_as=known_as,
        )
        while len(self._keys) > self.max_keys:
            (old_subject, old_repo, old_revision, old_outcome), old = self._keys.popitem(last=False)
            if old.suppressed:
                audit_log.info(
                    "authorization",
                    extra={
                        "audit": True,
                        "subject": old_subject,
                        "repo": old_repo,
                        "revision": old_revision,
                        "decision": old_outcome,
                        "suppressed": old.suppressed,
                    },
                )

    def _write(
        self,
        verdict: Verdict,
        *,
        repo: str,
        revision: str,
        policy_version: str | None,
        suppressed: int,
        known_as: frozenset[str],
    ) -> None:
        identity, decision = verdict.identity, verdict.decision
        audit_log.info(
            "authorization",
            extra={
                # For a commit: the branches and tags the gateway saw resolve to it.
                **({"known_as": sorted(known_as)} if known_as else {}),
                "audit": True,
                "subject": identity.subject if identity is not None else None,
                "namespace": identity.namespace if identity is not None else None,
                "service_account": identity.service_account if identity is not None else None,
                "repo": repo,
                "revision": revision,
                "decision": verdict.outcome,
                "rule": decision.rule if decision is not None else None,
                "credential": decision.credential if decision is not None else None,
                "reason": decision.reason if decision is not None else _REASONS[verdict.outcome],
                "policy_version": policy_version,
                "suppressed": suppressed,
            },
        )


_REASONS: dict[str, str] = {
    "allowed": "allowed",
    "unauthenticated": "no valid service-account token for the gateway's audience",
    "denied": "no rule matches",
    "unavailable": "the API server cannot review the token",
}


class AuthzMetrics:
    """Authorization decisions (docs/gateway.md)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.authz = Counter(
            "tokensidecar_gateway_authz",
            "Authorization decisions, by result (allowed, denied, unauthenticated, unavailable).",
            ["result"],
            registry=registry,
        )
        # Bound once: labels() costs a lock and a dict lookup, on the path of every request.
        self.counted = {result: self.authz.labels(result=result) for result in OUTCOMES}


class ControlPlaneMetrics:
    """Every metric of the control plane on one registry, as attributes: what the generated
    metrics reference lists (``tokensidecar.reference``). The running gateway creates the
    same metrics through its TokenReviewer, PolicyFile and Gatekeeper."""

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        identity = IdentityMetrics(registry)
        policy = PolicyMetrics(registry)
        self.authz = AuthzMetrics(registry).authz
        self.tokenreviews = identity.reviews
        self.identity_cache = identity.cache
        self.identity_cache_entries = identity.entries
        self.policy_reloads = policy.reloads
        self.policy_rules = policy.rules
        self.policy_last_load_ok = policy.last_load_ok


class Gatekeeper:
    """Identity, then policy, for every request; counted and audited."""

    def __init__(
        self,
        *,
        reviewer: TokenReviewer,
        policy: PolicyFile,
        registry: CollectorRegistry | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.reviewer = reviewer
        self.policy = policy
        self.audit = audit or AuditLog()
        self.metrics = AuthzMetrics(registry)

    async def authenticate(self, authorization: str | None) -> Verdict:
        """Identity only (``/api/whoami-v2``): allowed, unauthenticated or unavailable; not audited."""
        token = bearer_token(authorization)
        if token is None:
            return Verdict(outcome="unauthenticated", identity=None, decision=None)
        try:
            identity = await self.reviewer.review(token)
        except IdentityUnavailable:
            return Verdict(outcome="unavailable", identity=None, decision=None)
        if identity is None:
            return Verdict(outcome="unauthenticated", identity=None, decision=None)
        return Verdict(outcome="allowed", identity=identity, decision=None)

    async def check(
        self,
        *,
        authorization: str | None,
        repo: str,
        revision: str,
        known_as: frozenset[str] = frozenset(),
    ) -> Verdict:
        """May the caller behind ``authorization`` read ``repo`` at ``revision``?

        ``revision`` as requested, URL-decoded (``refs/pr/1``, not ``refs%2Fpr%2F1``);
        ``known_as``: for a commit, the branch and tag names seen resolving to it.
        """
        verdict = await self.authenticate(authorization)
        policy = self.policy.current
        if verdict.outcome == "allowed" and verdict.identity is not None:
            decision = policy.decide(verdict.identity, repo=repo, revision=revision, known_as=known_as)
            verdict = Verdict(
                outcome="allowed" if decision.allowed else "denied",
                identity=verdict.identity,
                decision=decision,
            )
        self.metrics.counted[verdict.outcome].inc()
        self.audit.record(
            verdict=verdict, repo=repo, revision=revision, policy_version=policy.version, known_as=known_as
        )
        return verdict

"""The rotation job's order of work: read → (skip when fresh) → mint → validate → verify → store → revoke.

The order is the safety argument. A token is verified at the Hub *before* it is stored, so
sidecars never see a token the Hub refuses; it is stored with a conditional write, so of
two jobs racing on one target exactly one rotates and the other stands down (it re-reads,
sees the target rotated since its read, and does not write on top: writing on top would
push the token that was live a moment ago out of ``previous`` before its overlap, unrevoked);
and a token is revoked only after it has sat under ``previous`` for the whole overlap, so
every sidecar and every reader of ``previous`` had time to move on.

No token is lost track of. Every token this run mints or displaces ends in one of three
states, and the job says which (a progress line, a log record with its fingerprint, and
the summary's ``revoked=`` / ``left_to_expire=`` counts):

* **stored** — under the target's current key, or kept as ``previous``;
* **revoked** — at the Hub (``POST /api/credentials/revoke``): a minted token this run does
  not store (dry run, a concurrent run rotated first, a failed write or verification), and
  a stored one past its overlap;
* **left to expire** — still valid and no longer stored: revocation failed (nothing retries
  a token that is stored nowhere, so the log says so and names it), ``--revoke-after`` is
  unset, it left ``previous`` before its overlap ended, or the issuer copies tokens it does
  not own (``vault``; ``command`` unless ``TOKENSIDECAR_ISSUER_COMMAND_MINTS``).

The job talks to people on stdout (one progress line per step and a summary line, with
fingerprints — never tokens), to collectors through JSON logs on stderr, and optionally
to node-exporter through ``--metrics-file``. Exit status: 0 rotated / skipped / unchanged
/ superseded / dry run, 1 on failure (one ``error:`` line on stderr), 2 on configuration
errors (raised as :class:`~tokensidecar.config.ConfigError` for the CLI).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

from tokensidecar.backends.hub_errors import HubUnavailable, TokenRejected
from tokensidecar.backoff import Backoff
from tokensidecar.redact import fingerprint, safe_error
from tokensidecar.rotate.issuers import Issuer, IssuerError, build_issuer
from tokensidecar.rotate.report import write_metrics_file
from tokensidecar.rotate.settings import RotationSettings
from tokensidecar.rotate.targets import StoreConflict, StoredToken, Target, TargetError, build_target
from tokensidecar.sidecar.verify import build_verifier
from tokensidecar.token import InvalidToken, Token, format_time, jwt_expiry, utcnow, validate

if TYPE_CHECKING:
    from tokensidecar.backends.hub_scope import TokenScope
    from tokensidecar.config import Config
    from tokensidecar.sidecar.verify import Verifier

__all__ = ["Outcome", "Progress", "RotationFailed", "RotationPolicy", "main", "rotate"]

log = logging.getLogger(__name__)

#: Revocation attempts for a token stored nowhere (nothing later can retry it), with the
#: project's backoff between them; a token still under 'previous' gets one per run.
UNSTORED_REVOKE_ATTEMPTS = 3

#: Conditional writes retried after a conflict before giving up. Each retry re-reads, so
#: this bounds a pathological writer storm, not normal races (which settle in one retry).
MAX_STORE_ATTEMPTS = 8

Revoke = Callable[[str], Awaitable[None]]


class RotationFailed(Exception):
    """The job cannot finish; the message is the one line printed as ``error: ...``."""


@dataclass(frozen=True)
class RotationPolicy:
    min_remaining: float | None = None
    revoke_after: float | None = None
    dry_run: bool = False
    #: Store a token that could not be verified because the Hub was unreachable.
    store_unverified_on_outage: bool = False


@dataclass
class Outcome:
    """What one run did. Fingerprints only; the summary line and the metrics file read it."""

    result: str = "failed"  # rotated | skipped | unchanged | superseded | dry_run | failed
    issuer: str = ""
    target: str = ""
    minted: str | None = None
    verified: str | None = None  # ok | skipped | unverified
    stored: str | None = None
    replaced: str | None = None
    version: int | None = None
    expires_at: datetime | None = None
    revoked: list[str] = field(default_factory=list)
    #: Fingerprints of tokens still valid that this run neither stored nor revoked.
    left_to_expire: list[str] = field(default_factory=list)
    revoke_failures: int = 0
    conflicts: int = 0
    error: str | None = None
    #: What the Hub says the stored token may do (set by verification; never the token).
    scope: TokenScope | None = None
    durations: dict[str, float] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.result != "failed"

    def summary(self) -> str:
        parts = [f"result={self.result}", f"issuer={self.issuer}", f"target={self.target}"]
        if self.minted:
            parts.append(f"minted={self.minted}")
        if self.verified:
            parts.append(f"verified={self.verified}")
        if self.stored:
            parts.append(f"stored={self.stored}")
        if self.replaced:
            parts.append(f"replaced={self.replaced}")
        if self.version is not None:
            parts.append(f"version={self.version}")
        parts.append(f"expires_at={format_time(self.expires_at) or 'unknown'}")
        if self.scope is not None:
            parts.append(f"kind={self.scope.kind} role={self.scope.role} can_write={self.scope.can_write}")
        parts.append(f"revoked={len(self.revoked)}")
        if self.left_to_expire:
            parts.append(f"left_to_expire={len(self.left_to_expire)}")
        if self.revoke_failures:
            parts.append(f"revoke_failures={self.revoke_failures}")
        if self.conflicts:
            parts.append(f"conflicts={self.conflicts}")
        parts.extend(f"{phase}={seconds:.3f}s" for phase, seconds in self.durations.items())
        return "summary " + " ".join(parts)


class Progress:
    """One line per step on stdout, for the person reading ``kubectl logs job/...``."""

    def __init__(self, *, stream: TextIO | None = None) -> None:
        self.stream = stream

    def say(self, text: str) -> None:
        stream = self.stream or sys.stdout
        stream.write(f"rotate: {text}\n")
        stream.flush()


def _describe_expiry(expires_at: datetime | None, *, now: datetime) -> str:
    if expires_at is None:
        return "expiry unknown"
    remaining = (expires_at - now).total_seconds()
    if remaining <= 0:
        return f"expired at {format_time(expires_at)}"
    return f"expires at {format_time(expires_at)} (in {_human(remaining)})"


def _human(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def stored_expiry(stored: StoredToken) -> datetime | None:
    """The stored token's expiry: the target's metadata first, then the token's own ``exp``."""
    if stored.expires_at is not None:
        return stored.expires_at
    return jwt_expiry(stored.current) if stored.current else None


class _Phase:
    """Times one step into ``Outcome.durations``."""

    def __init__(self, outcome: Outcome, name: str) -> None:
        self.outcome, self.name = outcome, name

    def __enter__(self) -> _Phase:
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        spent = time.monotonic() - self.started
        self.outcome.durations[self.name] = self.outcome.durations.get(self.name, 0.0) + spent


class _Superseded(Exception):
    """A concurrent writer stored another token since this run read the target."""

    def __init__(self, now_stored: StoredToken) -> None:
        super().__init__(now_stored.where)
        self.now_stored = now_stored


async def rotate(
    *,
    issuer: Issuer,
    target: Target,
    verifier: Verifier | None,
    revoke: Revoke | None,
    policy: RotationPolicy,
    progress: Progress,
    outcome: Outcome,
) -> Outcome:
    """Run one rotation; fills and returns ``outcome`` or raises :class:`RotationFailed`
    (``outcome`` then says how far it got). Every token minted here is stored or disposed
    of (:func:`_dispose_unstored`) before this returns or raises."""
    started = time.monotonic()
    outcome.issuer, outcome.target = issuer.kind, target.kind
    disposal = _Disposal(issuer=issuer, target=target, revoke=revoke, progress=progress, outcome=outcome)
    try:
        with _Phase(outcome, "read"):
            try:
                stored = await target.read()
            except TargetError as exc:
                raise RotationFailed(f"cannot read the {target.kind} target: {exc}") from None
        now = utcnow()
        outcome.version, outcome.expires_at = stored.version, stored_expiry(stored)
        if stored.current:
            progress.say(
                f"read {stored.where}: version {stored.version}, fingerprint {stored.current_fingerprint}, "
                f"{_describe_expiry(outcome.expires_at, now=now)}"
            )
        else:
            progress.say(f"read {stored.where}: no token stored yet")

        if _fresh_enough(stored, policy=policy, now=now, progress=progress):
            outcome.result = "skipped"
            await _revoke_past_overlap(
                stored=stored, replaced=None, new_token=None, target=target, revoke=revoke,
                policy=policy, progress=progress, outcome=outcome,
            )  # fmt: skip
            return outcome

        token = await _mint(issuer=issuer, progress=progress, outcome=outcome)
        if stored.current is not None and token.value == stored.current:
            # A copying issuer (vault, command) can hand back what is already stored. Storing
            # it again would make current == previous, and revoking previous would then
            # revoke the live token.
            progress.say("the issuer returned the token already stored; nothing to store")
            outcome.result = "unchanged"
            await _revoke_past_overlap(
                stored=stored, replaced=None, new_token=token, target=target, revoke=revoke,
                policy=policy, progress=progress, outcome=outcome,
            )  # fmt: skip
            return outcome
        disposal.pending = token
        try:
            token = await _verify(
                token=token, verifier=verifier, policy=policy, progress=progress, outcome=outcome
            )
        except RotationFailed:
            await disposal.dispose(reason="it failed verification")
            raise
        disposal.pending = token
        outcome.expires_at = token.expiry()

        if policy.dry_run:
            progress.say(
                f"dry run: would store {token.fingerprint} in {stored.where} replacing "
                f"{stored.current_fingerprint or 'nothing'} "
                f"(version {stored.version} -> {stored.version + 1})"
            )
            outcome.result = "dry_run"
            outcome.stored, outcome.replaced = token.fingerprint, stored.current_fingerprint
            after = StoredToken(
                where=stored.where,
                revision=stored.revision,
                current=token.value,
                previous=stored.current,
                rotated_at=now,
                version=stored.version + 1,
            )
            await _revoke_past_overlap(
                stored=after, replaced=stored, new_token=token, target=target, revoke=revoke,
                policy=policy, progress=progress, outcome=outcome,
            )  # fmt: skip
            await disposal.dispose(reason="this is a dry run")
            return outcome

        try:
            replaced, after = await _store(
                token=token, stored=stored, target=target, progress=progress, outcome=outcome
            )
        except _Superseded as superseded:
            now_stored = superseded.now_stored
            outcome.result = "superseded"
            outcome.version, outcome.expires_at = now_stored.version, stored_expiry(now_stored)
            progress.say(
                f"another run stored {now_stored.current_fingerprint or 'nothing'} in {now_stored.where} "
                f"(version {now_stored.version}) since this run read it: not writing on top"
            )
            await disposal.dispose(reason="a concurrent run rotated first")
            return outcome
        except RotationFailed:
            await disposal.dispose(reason="the write failed", confirm_absent=True)
            raise
        disposal.pending = None
        outcome.result = "rotated"
        await _revoke_past_overlap(
            stored=after, replaced=replaced, new_token=token, target=target, revoke=revoke,
            policy=policy, progress=progress, outcome=outcome,
        )  # fmt: skip
        return outcome
    except RotationFailed as exc:
        outcome.result, outcome.error = "failed", str(exc)
        raise
    except Exception:
        # A bug or an unexpected client error: still account for the token minted here.
        await disposal.dispose(reason="the run failed unexpectedly", confirm_absent=True)
        raise
    finally:
        outcome.durations["total"] = time.monotonic() - started


def _fresh_enough(stored: StoredToken, *, policy: RotationPolicy, now: datetime, progress: Progress) -> bool:
    if policy.min_remaining is None or not stored.current:
        return False
    expires_at = stored_expiry(stored)
    if expires_at is None:
        progress.say("the stored token's expiry is unknown; rotating (--min-remaining needs an expiry)")
        return False
    remaining = (expires_at - now).total_seconds()
    if remaining > policy.min_remaining:
        progress.say(
            f"skip: the stored token has {_human(remaining)} left, more than "
            f"--min-remaining {_human(policy.min_remaining)}"
        )
        return True
    return False


async def _mint(*, issuer: Issuer, progress: Progress, outcome: Outcome) -> Token:
    with _Phase(outcome, "mint"):
        try:
            token = await issuer.issue()
        except IssuerError as exc:
            raise RotationFailed(f"issuer {issuer.kind} failed: {exc}") from None
        try:
            value = validate(token.value)
        except InvalidToken as exc:
            raise RotationFailed(f"issuer {issuer.kind} returned an invalid token: {exc}") from None
    if value != token.value:
        token = replace(token, value=value)
    outcome.minted = token.fingerprint
    progress.say(
        f"minted {token.fingerprint} with {issuer.kind} in {outcome.durations['mint']:.3f}s, "
        f"{_describe_expiry(token.expiry(), now=utcnow())}"
    )
    return token


async def _verify(
    *, token: Token, verifier: Verifier | None, policy: RotationPolicy, progress: Progress, outcome: Outcome
) -> Token:
    if verifier is None:
        outcome.verified = "skipped"
        progress.say("verification is off (--verify=none); storing without asking the Hub")
        return token
    with _Phase(outcome, "verify"):
        try:
            verified = await verifier.verify(token)
        except TokenRejected as exc:
            outcome.verified = "rejected"
            raise RotationFailed(
                f"the Hub rejected the new token {token.fingerprint}: {safe_error(exc)}; nothing was stored"
            ) from None
        except HubUnavailable as exc:
            if not policy.store_unverified_on_outage:
                outcome.verified = "hub_unavailable"
                raise RotationFailed(
                    f"the Hub could not verify the new token {token.fingerprint} ({safe_error(exc)}); "
                    "nothing was stored "
                    "(set TOKENSIDECAR_VERIFY_ON_HUB_OUTAGE=publish to store it unverified)"
                ) from None
            outcome.verified = "unverified"
            progress.say(
                f"the Hub is unreachable ({safe_error(exc)}); storing {token.fingerprint} unverified"
            )
            return token
    outcome.verified = "ok"
    outcome.scope = verified.scope
    scope = f": {verified.scope.describe()}" if verified.scope is not None else ""
    progress.say(f"verified {token.fingerprint} at the Hub in {outcome.durations['verify']:.3f}s{scope}")
    return verified


async def _store(
    *, token: Token, stored: StoredToken, target: Target, progress: Progress, outcome: Outcome
) -> tuple[StoredToken, StoredToken]:
    """Conditional write; returns (the state replaced, the new state).

    On a conflict the target is read again. If its current token is still the one this
    run read (someone changed only metadata: an annotation, a revocation mark), the write
    is retried on top. If another token is current now, a concurrent run rotated first:
    :class:`_Superseded` is raised and nothing is written, so the token it displaced stays
    under ``previous`` for its overlap instead of being pushed out unrevoked.
    """
    read_current = stored.current
    with _Phase(outcome, "store"):
        for attempt in range(1, MAX_STORE_ATTEMPTS + 1):
            try:
                after = await target.store(token=token, replacing=stored, rotated_at=utcnow())
            except StoreConflict as exc:
                outcome.conflicts += 1
                progress.say(f"{stored.where} changed while rotating ({exc}); reading it again")
                if attempt == MAX_STORE_ATTEMPTS:
                    break
                try:
                    stored = await target.read()
                except TargetError as read_exc:
                    raise RotationFailed(f"cannot read {stored.where} again: {read_exc}") from None
                if stored.current == token.value:
                    # Our own write landed after all (an answer lost on the way back).
                    return stored, stored
                if stored.current != read_current:
                    raise _Superseded(stored) from None
                continue
            except TargetError as exc:
                raise RotationFailed(f"cannot store the new token in {stored.where}: {exc}") from None
            outcome.stored, outcome.replaced, outcome.version = (
                token.fingerprint,
                stored.current_fingerprint,
                after.version,
            )
            progress.say(
                f"stored {token.fingerprint} in {after.where} as version {after.version}, previous "
                f"{stored.current_fingerprint or 'none'}, in {outcome.durations.get('store', 0.0):.3f}s"
            )
            return stored, after
    raise RotationFailed(
        f"{stored.where} kept changing: gave up after {MAX_STORE_ATTEMPTS} conflicting writes"
    )


def _until(token_expiry: datetime | None) -> str:
    return f"until {format_time(token_expiry)}" if token_expiry else "until it expires (expiry unknown)"


def _left_to_expire(
    *, shown: str, expires_at: datetime | None, why: str, progress: Progress, outcome: Outcome
) -> None:
    """Record, truthfully and loudly, a valid token that is stored nowhere and not revoked."""
    outcome.left_to_expire.append(shown)
    progress.say(f"left {shown} to expire: {why}; it stays valid {_until(expires_at)}")
    log.warning(
        "token left to expire: not stored and not revoked",
        extra={"fingerprint": shown, "reason": why, "expires_at": format_time(expires_at)},
    )


async def _revoke_with_retries(*, revoke: Revoke, value: str, attempts: int) -> BaseException | None:
    """Revoke ``value``; None on success, else the last error."""
    backoff = Backoff(base=1.0, cap=4.0)
    error: BaseException | None = None
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(backoff.next_delay())
        try:
            await revoke(value)
        except Exception as exc:
            error = exc
            continue
        return None
    return error


@dataclass
class _Disposal:
    """What happens to a token this run minted but does not store."""

    issuer: Issuer
    target: Target
    revoke: Revoke | None
    progress: Progress
    outcome: Outcome
    pending: Token | None = None

    async def dispose(self, *, reason: str, confirm_absent: bool = False) -> None:
        token, self.pending = self.pending, None
        if token is None:
            return
        shown, expires_at = token.fingerprint, token.expiry()
        if not self.issuer.mints:
            hint = (
                " (set TOKENSIDECAR_ISSUER_COMMAND_MINTS=true if the command mints a new token each run)"
                if self.issuer.kind == "command"
                else ""
            )
            self.progress.say(
                f"not storing {shown}: {reason}; the {self.issuer.kind} issuer does not mint it, "
                f"so it is not revoked{hint}"
            )
            if self.issuer.kind == "command":
                _left_to_expire(
                    shown=shown,
                    expires_at=expires_at,
                    why=f"not stored ({reason}), and the command issuer is not marked as minting",
                    progress=self.progress,
                    outcome=self.outcome,
                )
            return
        if confirm_absent:
            # A write that failed on the way back may still have landed: never revoke a
            # token that is stored. Unsure (the target cannot be read) means not revoking.
            try:
                now_stored = await self.target.read()
            except TargetError as exc:
                _left_to_expire(
                    shown=shown,
                    expires_at=expires_at,
                    why=f"not stored ({reason}), and whether it is cannot be checked ({exc})",
                    progress=self.progress,
                    outcome=self.outcome,
                )
                return
            if token.value in (now_stored.current, now_stored.previous):
                self.progress.say(f"{shown} is in {now_stored.where} after all; keeping it")
                return
        if self.revoke is None:
            _left_to_expire(
                shown=shown,
                expires_at=expires_at,
                why=f"not stored ({reason}), and no revoker is configured",
                progress=self.progress,
                outcome=self.outcome,
            )
            return
        with _Phase(self.outcome, "revoke"):
            error = await _revoke_with_retries(
                revoke=self.revoke, value=token.value, attempts=UNSTORED_REVOKE_ATTEMPTS
            )
        if error is not None:
            self.outcome.revoke_failures += 1
            _left_to_expire(
                shown=shown,
                expires_at=expires_at,
                why=f"not stored ({reason}) and revocation failed ({safe_error(error)}); nothing will retry, "
                "revoke it by hand",
                progress=self.progress,
                outcome=self.outcome,
            )
            return
        self.outcome.revoked.append(shown)
        self.progress.say(f"revoked {shown}, minted by this run and not stored: {reason}")
        log.info(
            "revoked a token this run minted and did not store",
            extra={"fingerprint": shown, "reason": reason},
        )


async def _revoke_past_overlap(
    *,
    stored: StoredToken,
    replaced: StoredToken | None,
    new_token: Token | None,
    target: Target,
    revoke: Revoke | None,
    policy: RotationPolicy,
    progress: Progress,
    outcome: Outcome,
) -> None:
    """Revoke tokens that left the current slot longer than ``--revoke-after`` ago.

    Two candidates: the token now under ``previous`` (marked revoked in the target so the
    next run does not revoke it again), and, when this run stored a token, the one that
    was under ``previous`` before and has just been dropped from the target. A dropped one
    that is not revoked is stored nowhere any more, so it is reported as left to expire.
    """
    now = utcnow()
    live = {value for value in (stored.current, new_token.value if new_token else None) if value}
    candidates: list[tuple[str, datetime | None, bool]] = []
    if replaced is not None and replaced.previous and not replaced.previous_revoked:
        candidates.append((replaced.previous, replaced.rotated_at, False))
    if stored.previous and not stored.previous_revoked:
        candidates.append((stored.previous, stored.rotated_at, True))

    with _Phase(outcome, "revoke"):
        for value, rotated_out_at, still_stored in candidates:
            shown = fingerprint(value)
            if value in live:
                continue  # never the current token, whatever the bookkeeping says
            dropped = not still_stored and not policy.dry_run
            expires_at = jwt_expiry(value)
            if policy.revoke_after is None or revoke is None:
                if dropped:
                    _left_to_expire(
                        shown=shown,
                        expires_at=expires_at,
                        why="it left 'previous' and --revoke-after is unset",
                        progress=progress,
                        outcome=outcome,
                    )
                continue
            if rotated_out_at is None:
                if dropped:
                    _left_to_expire(
                        shown=shown,
                        expires_at=expires_at,
                        why="it left 'previous', and when it was rotated out is unknown",
                        progress=progress,
                        outcome=outcome,
                    )
                else:
                    progress.say(f"not revoking {shown}: when it was rotated out is unknown")
                continue
            # Seconds, not datetime arithmetic: a stored rotated-at near year 9999 must not overflow.
            overlap_left = (rotated_out_at - now).total_seconds() + policy.revoke_after
            if overlap_left > 0:
                if dropped:
                    _left_to_expire(
                        shown=shown,
                        expires_at=expires_at,
                        why=f"it left 'previous' {_human(overlap_left)} before its overlap ended "
                        "(rotating more often than --revoke-after)",
                        progress=progress,
                        outcome=outcome,
                    )
                continue
            if policy.dry_run:
                progress.say(f"dry run: would revoke {shown} (rotated out at {format_time(rotated_out_at)})")
                continue
            error = await _revoke_with_retries(
                revoke=revoke, value=value, attempts=1 if still_stored else UNSTORED_REVOKE_ATTEMPTS
            )
            if error is not None:
                outcome.revoke_failures += 1
                if still_stored:
                    progress.say(
                        f"could not revoke {shown}: {safe_error(error)}; it stays under 'previous', "
                        "and the next run tries again"
                    )
                    log.warning(
                        "revocation failed; the token stays under 'previous' for the next run to revoke",
                        extra={"fingerprint": shown, "error": safe_error(error)},
                    )
                else:
                    _left_to_expire(
                        shown=shown,
                        expires_at=expires_at,
                        why=f"it left 'previous' and revocation failed ({safe_error(error)}); nothing will "
                        "retry, revoke it by hand",
                        progress=progress,
                        outcome=outcome,
                    )
                continue
            outcome.revoked.append(shown)
            progress.say(f"revoked {shown} (rotated out at {format_time(rotated_out_at)})")
            if still_stored:
                try:
                    await target.mark_previous_revoked(stored=stored, revoked_at=now)
                except TargetError as exc:
                    # Harmless: the next run revokes it again, which the Hub accepts.
                    log.warning(
                        "could not record the revocation", extra={"fingerprint": shown, "error": str(exc)}
                    )


def rotation_revoker(endpoint: str | None) -> Revoke | None:
    """Revocation at the Hub, used for stored tokens past ``--revoke-after`` and for tokens
    this run minted and did not store (whatever ``--revoke-after`` says)."""
    if not endpoint:
        return None
    from tokensidecar.backends import hub

    async def revoke(token: str) -> None:
        await hub.revoke(endpoint=endpoint, token=token)

    return revoke


def policy_from_settings(settings: RotationSettings) -> RotationPolicy:
    return RotationPolicy(
        min_remaining=settings.min_remaining,
        revoke_after=settings.revoke_after,
        dry_run=settings.dry_run,
        # A Hub outage holds by default here, unlike the sidecar: the stored token is still
        # good and the CronJob runs again, so waiting costs nothing.
        store_unverified_on_outage=settings.store_unverified_on_outage,
    )


async def _run(settings: RotationSettings, *, outcome: Outcome, progress: Progress) -> Outcome:
    issuer = build_issuer(settings.issuer)
    target: Target | None = None
    verifier: Verifier | None = None
    try:
        target = build_target(settings.target)
        verifier = build_verifier(settings.verify)
        return await rotate(
            issuer=issuer,
            target=target,
            verifier=verifier,
            revoke=rotation_revoker(settings.revoke_endpoint),
            policy=policy_from_settings(settings),
            progress=progress,
            outcome=outcome,
        )
    except (TargetError, IssuerError) as exc:
        raise RotationFailed(str(exc)) from None
    finally:
        for closeable in (verifier, target, issuer):
            if closeable is not None:
                try:
                    await closeable.aclose()
                except Exception as exc:
                    log.warning("cleanup failed", extra={"error": safe_error(exc)})


def main(config: Config) -> int:
    """``tokensidecar rotate``: one rotation, then exit (0 ok, 1 failed; ConfigError → 2)."""
    settings = RotationSettings.resolve(config)
    progress = Progress()
    outcome = Outcome(issuer=settings.issuer.kind, target=settings.target.kind)
    try:
        asyncio.run(_run(settings, outcome=outcome, progress=progress))
    except RotationFailed as exc:
        # One line, whatever the upstream's message looked like (Vault's are multi-line).
        outcome.result, outcome.error = "failed", " ".join(str(exc).split())
    progress.say(outcome.summary())
    if settings.metrics_file:
        try:
            write_metrics_file(settings.metrics_file, outcome=outcome)
        except OSError as exc:
            log.warning(
                "cannot write the metrics file", extra={"path": settings.metrics_file, "error": str(exc)}
            )
    if outcome.error:
        sys.stderr.write(f"error: {outcome.error}\n")
        return 1
    return 0

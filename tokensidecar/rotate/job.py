"""The rotation job's order of work: read → (skip when fresh) → mint → validate → verify → store → revoke.

The order is the safety argument. A token is verified at the Hub *before* it is stored, so
sidecars never see a token the Hub refuses; it is stored with a conditional write, so two
jobs racing on one Secret both finish and neither update is lost; and a token is revoked
only after it has sat under ``previous`` for the whole overlap, so every sidecar and every
reader of ``previous`` had time to move on. Revocation runs last and its failure is not
fatal: the new token is already in place, and the next run tries again.

The job talks to people on stdout (one progress line per step and a summary line, with
fingerprints — never tokens), to collectors through JSON logs on stderr, and optionally
to node-exporter through ``--metrics-file``. Exit status: 0 rotated / skipped / dry run,
1 on failure (one ``error:`` line on stderr), 2 on configuration errors (raised as
:class:`~tokensidecar.config.ConfigError` for the CLI).
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

from tokensidecar.redact import fingerprint, safe_error
from tokensidecar.rotate.issuers import Issuer, IssuerError, build_issuer
from tokensidecar.rotate.report import write_metrics_file
from tokensidecar.rotate.targets import StoreConflict, StoredToken, Target, TargetError, build_target
from tokensidecar.token import InvalidToken, Token, format_time, jwt_expiry, utcnow, validate
from tokensidecar.verify import HubUnavailable, TokenRejected, build_verifier

if TYPE_CHECKING:
    from tokensidecar.config import Config
    from tokensidecar.hub_scope import TokenScope
    from tokensidecar.verify import Verifier

__all__ = ["Outcome", "Progress", "RotationFailed", "RotationPolicy", "main", "rotate"]

log = logging.getLogger(__name__)

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

    result: str = "failed"  # rotated | skipped | unchanged | dry_run | failed
    issuer: str = ""
    target: str = ""
    minted: str | None = None
    verified: str | None = None  # ok | skipped | unverified
    stored: str | None = None
    replaced: str | None = None
    version: int | None = None
    expires_at: datetime | None = None
    revoked: list[str] = field(default_factory=list)
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
    (``outcome`` then says how far it got)."""
    started = time.monotonic()
    outcome.issuer, outcome.target = issuer.kind, target.kind
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

        token = await _verify(
            token=token, verifier=verifier, policy=policy, progress=progress, outcome=outcome
        )
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
            return outcome

        replaced, after = await _store(
            token=token, stored=stored, target=target, progress=progress, outcome=outcome
        )
        outcome.result = "rotated"
        await _revoke_past_overlap(
            stored=after, replaced=replaced, new_token=token, target=target, revoke=revoke,
            policy=policy, progress=progress, outcome=outcome,
        )  # fmt: skip
        return outcome
    except RotationFailed as exc:
        outcome.result, outcome.error = "failed", str(exc)
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
    """Conditional write with re-read on conflict; returns (the state replaced, the new state)."""
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
    was under ``previous`` before and has just been dropped from the target.
    """
    if policy.revoke_after is None or revoke is None:
        return
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
            if rotated_out_at is None:
                progress.say(f"not revoking {shown}: when it was rotated out is unknown")
                continue
            # Seconds, not datetime arithmetic: a stored rotated-at near year 9999 must not overflow.
            overlap_left = (rotated_out_at - now).total_seconds() + policy.revoke_after
            if overlap_left > 0:
                if not still_stored:
                    progress.say(
                        f"not revoking {shown}: it left 'previous' {_human(overlap_left)} before its overlap "
                        "ended (rotating more often than --revoke-after)"
                    )
                continue
            if policy.dry_run:
                progress.say(f"dry run: would revoke {shown} (rotated out at {format_time(rotated_out_at)})")
                continue
            try:
                await revoke(value)
            except Exception as exc:
                outcome.revoke_failures += 1
                log.warning(
                    "revocation failed; will try again next run",
                    extra={"fingerprint": shown, "error": safe_error(exc)},
                )
                progress.say(f"could not revoke {shown}: {safe_error(exc)}")
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


def rotation_verifier(config: Config) -> Verifier | None:
    """The sidecar's Hub verifier, with ``repo`` access proven when a model is named."""
    from tokensidecar.config import Config as ConfigType

    if config.verify == "whoami" and config.model_id:
        config = ConfigType(values={**config.values, "verify": "repo"}, explicit=config.explicit)
    return build_verifier(config)


def rotation_revoker(config: Config) -> Revoke | None:
    if config.revoke_after is None:
        return None
    from tokensidecar import hub

    endpoint: str = config.hf_endpoint

    async def revoke(token: str) -> None:
        await hub.revoke(endpoint=endpoint, token=token)

    return revoke


def policy_from_config(config: Config) -> RotationPolicy:
    return RotationPolicy(
        min_remaining=config.min_remaining,
        revoke_after=config.revoke_after,
        dry_run=bool(config.dry_run),
        # A Hub outage holds by default here, unlike the sidecar: the stored token is still
        # good and the CronJob runs again, so waiting costs nothing.
        store_unverified_on_outage=config.is_set("verify_on_hub_outage")
        and config.verify_on_hub_outage == "publish",
    )


async def _run(config: Config, *, outcome: Outcome, progress: Progress) -> Outcome:
    issuer = build_issuer(config)
    target: Target | None = None
    verifier: Verifier | None = None
    try:
        target = build_target(config)
        verifier = rotation_verifier(config)
        return await rotate(
            issuer=issuer,
            target=target,
            verifier=verifier,
            revoke=rotation_revoker(config),
            policy=policy_from_config(config),
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
    progress = Progress()
    outcome = Outcome(issuer=config.issuer or "", target=config.target)
    try:
        asyncio.run(_run(config, outcome=outcome, progress=progress))
    except RotationFailed as exc:
        # One line, whatever the upstream's message looked like (Vault's are multi-line).
        outcome.result, outcome.error = "failed", " ".join(str(exc).split())
    progress.say(outcome.summary())
    if config.metrics_file:
        try:
            write_metrics_file(config.metrics_file, outcome=outcome)
        except OSError as exc:
            log.warning(
                "cannot write the metrics file", extra={"path": config.metrics_file, "error": str(exc)}
            )
    if outcome.error:
        sys.stderr.write(f"error: {outcome.error}\n")
        return 1
    return 0

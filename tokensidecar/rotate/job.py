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
from tokensidecar.backends.verify import build_verifier
from tokensidecar.backoff import Backoff
from tokensidecar.redact import fingerprint, safe_error
from tokensidecar.rotate.issuers import Issuer, IssuerError, build_issuer
from tokensidecar.rotate.report import write_metrics_file
from tokensidecar.rotate.settings import RotationSettings
from tokensidecar.rotate.targets import StoreConflict, StoredToken, Target, TargetError, build_target
from tokensidecar.token import InvalidToken, Token, format_time, jwt_expiry, utcnow, validate

if TYPE_CHECKING:
    from tokensidecar.backends.hub_scope import TokenScope
    from tokensidecar.backends.verify import Verifier
    from tokensidecar.config import Config

__all__ = ["Outcome", "Progress", "RotationFailed", "RotationPolicy", "main", "rotate"]

log = logging.getLogger(__name__)

#: Revocation attempts for a token stored nowhere (nothing later can retry it), with the
#: project's backoff between them; a token still under 'previous' gets one per run.
UNSTORED_REVOKE_ATTEMPTS = 3

#: Conditional writes retried after a conflict before giving up. Each retry re-reads, so
#: this bounds a pathological writer storm, not normal races (which settle in one retry).
MAX_STORE_ATTEMPTS = 8

Revoke = Callable[[str], Awaitable[None]]
Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]


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
        parts += _when_set(
            minted=self.minted, verified=self.verified, stored=self.stored, replaced=self.replaced
        )
        if self.version is not None:
            parts.append(f"version={self.version}")
        parts.append(f"expires_at={format_time(self.expires_at) or 'unknown'}")
        if self.scope is not None:
            parts.append(f"kind={self.scope.kind} role={self.scope.role} can_write={self.scope.can_write}")
        parts.append(f"revoked={len(self.revoked)}")
        parts += _when_set(
            left_to_expire=len(self.left_to_expire),
            revoke_failures=self.revoke_failures,
            conflicts=self.conflicts,
        )
        parts.extend(f"{phase}={seconds:.3f}s" for phase, seconds in self.durations.items())
        return "summary " + " ".join(parts)


def _when_set(**fields: str | int | None) -> list[str]:
    """``name=value`` for each of ``fields`` that is set (not None, empty or 0), in order."""
    return [f"{name}={value}" for name, value in fields.items() if value]


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


@dataclass
class _Run:
    """One run's context, passed whole to each step so a step's signature names only what
    is its own: who mints, where the token is kept, how to revoke, what to report to, and
    the clock and sleep (parameters, so a test can drive a run without waiting).

    ``pending`` is the token this run minted and has not stored yet: whatever path ends the
    run, :meth:`dispose` settles it, so no minted token is lost track of.
    """

    issuer: Issuer
    target: Target
    revoke: Revoke | None
    policy: RotationPolicy
    progress: Progress
    outcome: Outcome
    clock: Clock
    sleep: Sleep
    pending: Token | None = None

    def left_to_expire(self, *, shown: str, expires_at: datetime | None, why: str) -> None:
        """Record, truthfully and loudly, a valid token that is stored nowhere and not revoked."""
        self.outcome.left_to_expire.append(shown)
        self.progress.say(f"left {shown} to expire: {why}; it stays valid {_until(expires_at)}")
        log.warning(
            "token left to expire: not stored and not revoked",
            extra={"fingerprint": shown, "reason": why, "expires_at": format_time(expires_at)},
        )

    async def dispose(self, *, reason: str, confirm_absent: bool = False) -> None:
        """Settle the pending token this run does not store: revoked when this run minted
        it, otherwise said truthfully why it stays valid. ``confirm_absent`` after a write
        that may have landed: the target is read first, and a token found there is kept."""
        token, self.pending = self.pending, None
        if token is None:
            return
        if not self.issuer.mints:
            _keep_copied_token(self, token=token, reason=reason)
            return
        if confirm_absent and await _may_be_stored(self, token=token, reason=reason):
            return
        if self.revoke is None:
            self.left_to_expire(
                shown=token.fingerprint,
                expires_at=token.expiry(),
                why=f"not stored ({reason}), and no revoker is configured",
            )
            return
        await _revoke_unstored(self, token=token, reason=reason, revoke=self.revoke)


async def rotate(
    *,
    issuer: Issuer,
    target: Target,
    verifier: Verifier | None,
    revoke: Revoke | None,
    policy: RotationPolicy,
    progress: Progress,
    outcome: Outcome,
    clock: Clock = utcnow,
    sleep: Sleep = asyncio.sleep,
) -> Outcome:
    """Run one rotation; fills and returns ``outcome`` or raises :class:`RotationFailed`
    (``outcome`` then says how far it got). Every token minted here is stored or disposed
    of (:meth:`_Run.dispose`) before this returns or raises. ``clock`` and ``sleep`` are
    the time and the wait between revocation attempts (tests pass their own)."""
    started = time.monotonic()
    outcome.issuer, outcome.target = issuer.kind, target.kind
    run = _Run(
        issuer=issuer,
        target=target,
        revoke=revoke,
        policy=policy,
        progress=progress,
        outcome=outcome,
        clock=clock,
        sleep=sleep,
    )
    try:
        return await _rotate_once(run, verifier=verifier)
    except RotationFailed as exc:
        outcome.result, outcome.error = "failed", str(exc)
        raise
    except Exception:
        # A bug or an unexpected client error: still account for the token minted here.
        await run.dispose(reason="the run failed unexpectedly", confirm_absent=True)
        raise
    finally:
        outcome.durations["total"] = time.monotonic() - started


async def _rotate_once(run: _Run, *, verifier: Verifier | None) -> Outcome:
    """The order of work from the module docstring, one step a line; a step that ends the
    run (fresh, unchanged, dry run, stored or superseded) returns the outcome."""
    stored = await _read(run)
    now = run.clock()
    _report_read(run, stored=stored, now=now)
    if _fresh_enough(stored, policy=run.policy, now=now, progress=run.progress):
        return await _settle(run, result="skipped", stored=stored)

    token = await _mint(run)
    if stored.current is not None and token.value == stored.current:
        # A copying issuer (vault, command) can hand back what is already stored. Storing
        # it again would make current == previous, and revoking previous would then
        # revoke the live token.
        run.progress.say("the issuer returned the token already stored; nothing to store")
        return await _settle(run, result="unchanged", stored=stored, new_token=token)
    run.pending = token
    try:
        token = await _verify(run, token=token, verifier=verifier)
    except RotationFailed:
        await run.dispose(reason="it failed verification")
        raise
    run.pending = token
    run.outcome.expires_at = token.expiry()
    if run.policy.dry_run:
        return await _dry_run(run, token=token, stored=stored, now=now)
    return await _store_or_stand_down(run, token=token, stored=stored)


async def _settle(
    run: _Run,
    *,
    result: str,
    stored: StoredToken,
    replaced: StoredToken | None = None,
    new_token: Token | None = None,
) -> Outcome:
    """End the run with ``result``, after revoking what has outlived its overlap: every
    run that gets this far does, so even a cheap skip keeps the overlap promise."""
    run.outcome.result = result
    await _revoke_past_overlap(run, stored=stored, replaced=replaced, new_token=new_token)
    return run.outcome


async def _read(run: _Run) -> StoredToken:
    with _Phase(run.outcome, "read"):
        try:
            return await run.target.read()
        except TargetError as exc:
            raise RotationFailed(f"cannot read the {run.target.kind} target: {exc}") from None


def _report_read(run: _Run, *, stored: StoredToken, now: datetime) -> None:
    run.outcome.version, run.outcome.expires_at = stored.version, stored_expiry(stored)
    if stored.current:
        run.progress.say(
            f"read {stored.where}: version {stored.version}, fingerprint {stored.current_fingerprint}, "
            f"{_describe_expiry(run.outcome.expires_at, now=now)}"
        )
    else:
        run.progress.say(f"read {stored.where}: no token stored yet")


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


async def _mint(run: _Run) -> Token:
    issuer = run.issuer
    with _Phase(run.outcome, "mint"):
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
    run.outcome.minted = token.fingerprint
    run.progress.say(
        f"minted {token.fingerprint} with {issuer.kind} in {run.outcome.durations['mint']:.3f}s, "
        f"{_describe_expiry(token.expiry(), now=run.clock())}"
    )
    return token


async def _verify(run: _Run, *, token: Token, verifier: Verifier | None) -> Token:
    outcome = run.outcome
    if verifier is None:
        outcome.verified = "skipped"
        run.progress.say("verification is off (--verify=none); storing without asking the Hub")
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
            return _unverified_on_outage(run, token=token, error=exc)
    outcome.verified = "ok"
    outcome.scope = verified.scope
    scope = f": {verified.scope.describe()}" if verified.scope is not None else ""
    run.progress.say(f"verified {token.fingerprint} at the Hub in {outcome.durations['verify']:.3f}s{scope}")
    return verified


def _unverified_on_outage(run: _Run, *, token: Token, error: HubUnavailable) -> Token:
    """The Hub could not answer: fail (the default; the stored token is still good and the
    CronJob runs again), or store unverified when the policy says so."""
    if not run.policy.store_unverified_on_outage:
        run.outcome.verified = "hub_unavailable"
        raise RotationFailed(
            f"the Hub could not verify the new token {token.fingerprint} ({safe_error(error)}); "
            "nothing was stored "
            "(set TOKENSIDECAR_VERIFY_ON_HUB_OUTAGE=publish to store it unverified)"
        ) from None
    run.outcome.verified = "unverified"
    run.progress.say(f"the Hub is unreachable ({safe_error(error)}); storing {token.fingerprint} unverified")
    return token


async def _dry_run(run: _Run, *, token: Token, stored: StoredToken, now: datetime) -> Outcome:
    """Say what the write would do and revoke nothing for real: the overlap check runs on
    the state the write would leave, and the minted token is disposed of as not stored."""
    run.progress.say(
        f"dry run: would store {token.fingerprint} in {stored.where} replacing "
        f"{stored.current_fingerprint or 'nothing'} "
        f"(version {stored.version} -> {stored.version + 1})"
    )
    run.outcome.stored, run.outcome.replaced = token.fingerprint, stored.current_fingerprint
    would_leave = StoredToken(
        where=stored.where,
        revision=stored.revision,
        current=token.value,
        previous=stored.current,
        rotated_at=now,
        version=stored.version + 1,
    )
    await _settle(run, result="dry_run", stored=would_leave, replaced=stored, new_token=token)
    await run.dispose(reason="this is a dry run")
    return run.outcome


async def _store_or_stand_down(run: _Run, *, token: Token, stored: StoredToken) -> Outcome:
    """Store the verified token; when a concurrent run rotated first, stand down instead
    and dispose of ours. A failed write may still have landed, so it is checked first."""
    try:
        replaced, after = await _store(run, token=token, stored=stored)
    except _Superseded as superseded:
        return await _stand_down(run, now_stored=superseded.now_stored)
    except RotationFailed:
        await run.dispose(reason="the write failed", confirm_absent=True)
        raise
    run.pending = None
    return await _settle(run, result="rotated", stored=after, replaced=replaced, new_token=token)


async def _stand_down(run: _Run, *, now_stored: StoredToken) -> Outcome:
    """Another run stored a token since this one read the target: report what is stored
    now, write nothing on top, and dispose of the token this run minted."""
    run.outcome.result = "superseded"
    run.outcome.version, run.outcome.expires_at = now_stored.version, stored_expiry(now_stored)
    run.progress.say(
        f"another run stored {now_stored.current_fingerprint or 'nothing'} in {now_stored.where} "
        f"(version {now_stored.version}) since this run read it: not writing on top"
    )
    await run.dispose(reason="a concurrent run rotated first")
    return run.outcome


async def _store(run: _Run, *, token: Token, stored: StoredToken) -> tuple[StoredToken, StoredToken]:
    """Conditional write; returns (the state replaced, the new state).

    On a conflict the target is read again. If its current token is still the one this
    run read (someone changed only metadata: an annotation, a revocation mark), the write
    is retried on top. If another token is current now, a concurrent run rotated first:
    :class:`_Superseded` is raised and nothing is written, so the token it displaced stays
    under ``previous`` for its overlap instead of being pushed out unrevoked.
    """
    read_current = stored.current
    with _Phase(run.outcome, "store"):
        for attempt in range(1, MAX_STORE_ATTEMPTS + 1):
            try:
                after = await run.target.store(token=token, replacing=stored, rotated_at=run.clock())
            except StoreConflict as exc:
                run.outcome.conflicts += 1
                run.progress.say(f"{stored.where} changed while rotating ({exc}); reading it again")
                if attempt == MAX_STORE_ATTEMPTS:
                    break
                stored = await _read_after_conflict(
                    run, where=stored.where, token=token, read_current=read_current
                )
                if stored.current == token.value:
                    # Our own write landed after all (an answer lost on the way back).
                    return stored, stored
                continue
            except TargetError as exc:
                raise RotationFailed(f"cannot store the new token in {stored.where}: {exc}") from None
            _report_stored(run, token=token, replaced=stored, after=after)
            return stored, after
    raise RotationFailed(
        f"{stored.where} kept changing: gave up after {MAX_STORE_ATTEMPTS} conflicting writes"
    )


async def _read_after_conflict(
    run: _Run, *, where: str, token: Token, read_current: str | None
) -> StoredToken:
    """Read the target again after a refused write; raise :class:`_Superseded` when a
    token other than ours and other than the one first read is current now."""
    try:
        stored = await run.target.read()
    except TargetError as exc:
        raise RotationFailed(f"cannot read {where} again: {exc}") from None
    if stored.current not in (token.value, read_current):
        raise _Superseded(stored) from None
    return stored


def _report_stored(run: _Run, *, token: Token, replaced: StoredToken, after: StoredToken) -> None:
    outcome = run.outcome
    outcome.stored, outcome.replaced, outcome.version = (
        token.fingerprint,
        replaced.current_fingerprint,
        after.version,
    )
    run.progress.say(
        f"stored {token.fingerprint} in {after.where} as version {after.version}, previous "
        f"{replaced.current_fingerprint or 'none'}, in {outcome.durations.get('store', 0.0):.3f}s"
    )


def _until(token_expiry: datetime | None) -> str:
    return f"until {format_time(token_expiry)}" if token_expiry else "until it expires (expiry unknown)"


async def _revoke_with_retries(
    *, revoke: Revoke, value: str, attempts: int, sleep: Sleep
) -> BaseException | None:
    """Revoke ``value``; None on success, else the last error."""
    backoff = Backoff(base=1.0, cap=4.0)
    error: BaseException | None = None
    for attempt in range(attempts):
        if attempt:
            await sleep(backoff.next_delay())
        try:
            await revoke(value)
        except Exception as exc:
            error = exc
            continue
        return None
    return error


# --- tokens this run minted and does not store ----------------------------------------------


def _keep_copied_token(run: _Run, *, token: Token, reason: str) -> None:
    """A token the issuer copies rather than mints is someone else's: never revoked. A
    ``command`` token may be minted after all, so it is reported as left to expire."""
    kind = run.issuer.kind
    hint = (
        " (set TOKENSIDECAR_ISSUER_COMMAND_MINTS=true if the command mints a new token each run)"
        if kind == "command"
        else ""
    )
    run.progress.say(
        f"not storing {token.fingerprint}: {reason}; the {kind} issuer does not mint it, "
        f"so it is not revoked{hint}"
    )
    if kind == "command":
        run.left_to_expire(
            shown=token.fingerprint,
            expires_at=token.expiry(),
            why=f"not stored ({reason}), and the command issuer is not marked as minting",
        )


async def _may_be_stored(run: _Run, *, token: Token, reason: str) -> bool:
    """Whether the token must be kept: it is in the target after all, or whether it is
    cannot be checked (then it is reported as left to expire)."""
    # A write that failed on the way back may still have landed: never revoke a
    # token that is stored. Unsure (the target cannot be read) means not revoking.
    try:
        now_stored = await run.target.read()
    except TargetError as exc:
        run.left_to_expire(
            shown=token.fingerprint,
            expires_at=token.expiry(),
            why=f"not stored ({reason}), and whether it is cannot be checked ({exc})",
        )
        return True
    if token.value in (now_stored.current, now_stored.previous):
        run.progress.say(f"{token.fingerprint} is in {now_stored.where} after all; keeping it")
        return True
    return False


async def _revoke_unstored(run: _Run, *, token: Token, reason: str, revoke: Revoke) -> None:
    """Revoke a minted token stored nowhere, with every attempt: nothing later retries it."""
    shown = token.fingerprint
    with _Phase(run.outcome, "revoke"):
        error = await _revoke_with_retries(
            revoke=revoke, value=token.value, attempts=UNSTORED_REVOKE_ATTEMPTS, sleep=run.sleep
        )
    if error is not None:
        run.outcome.revoke_failures += 1
        run.left_to_expire(
            shown=shown,
            expires_at=token.expiry(),
            why=f"not stored ({reason}) and revocation failed ({safe_error(error)}); nothing will retry, "
            "revoke it by hand",
        )
        return
    run.outcome.revoked.append(shown)
    run.progress.say(f"revoked {shown}, minted by this run and not stored: {reason}")
    log.info(
        "revoked a token this run minted and did not store",
        extra={"fingerprint": shown, "reason": reason},
    )


# --- tokens past their overlap --------------------------------------------------------------


@dataclass(frozen=True)
class _Retired:
    """A token that left the current slot: still under ``previous``, or dropped from the
    target by this run's write (then nothing stores it any more)."""

    value: str = field(repr=False)
    rotated_out_at: datetime | None
    still_stored: bool

    @property
    def shown(self) -> str:
        return fingerprint(self.value)

    @property
    def expires_at(self) -> datetime | None:
        return jwt_expiry(self.value)


def _retired_tokens(*, stored: StoredToken, replaced: StoredToken | None) -> list[_Retired]:
    """The candidates for revocation, not yet marked revoked: the token under ``previous``
    before this run's write (dropped by it), and the one under ``previous`` now."""
    retired: list[_Retired] = []
    if replaced is not None and replaced.previous and not replaced.previous_revoked:
        retired.append(
            _Retired(value=replaced.previous, rotated_out_at=replaced.rotated_at, still_stored=False)
        )
    if stored.previous and not stored.previous_revoked:
        retired.append(_Retired(value=stored.previous, rotated_out_at=stored.rotated_at, still_stored=True))
    return retired


async def _revoke_past_overlap(
    run: _Run, *, stored: StoredToken, replaced: StoredToken | None, new_token: Token | None
) -> None:
    """Revoke tokens that left the current slot longer than ``--revoke-after`` ago.

    Two candidates: the token now under ``previous`` (marked revoked in the target so the
    next run does not revoke it again), and, when this run stored a token, the one that
    was under ``previous`` before and has just been dropped from the target. A dropped one
    that is not revoked is stored nowhere any more, so it is reported as left to expire.
    """
    now = run.clock()
    live = {value for value in (stored.current, new_token.value if new_token else None) if value}
    with _Phase(run.outcome, "revoke"):
        for retired in _retired_tokens(stored=stored, replaced=replaced):
            if retired.value in live:
                continue  # never the current token, whatever the bookkeeping says
            await _revoke_if_overlap_over(run, retired=retired, stored=stored, now=now)


async def _revoke_if_overlap_over(
    run: _Run, *, retired: _Retired, stored: StoredToken, now: datetime
) -> None:
    """Revoke one retired token once its overlap is over; until then, keep it (:func:`_keep`)."""
    revoke_after, revoke = run.policy.revoke_after, run.revoke
    if revoke_after is None or revoke is None:
        _keep(run, retired=retired, why="it left 'previous' and --revoke-after is unset")
        return
    if retired.rotated_out_at is None:
        _keep(
            run,
            retired=retired,
            why="it left 'previous', and when it was rotated out is unknown",
            note="when it was rotated out is unknown",
        )
        return
    # Seconds, not datetime arithmetic: a stored rotated-at near year 9999 must not overflow.
    overlap_left = (retired.rotated_out_at - now).total_seconds() + revoke_after
    if overlap_left > 0:
        _keep(
            run,
            retired=retired,
            why=f"it left 'previous' {_human(overlap_left)} before its overlap ended "
            "(rotating more often than --revoke-after)",
        )
    elif run.policy.dry_run:
        run.progress.say(
            f"dry run: would revoke {retired.shown} (rotated out at {format_time(retired.rotated_out_at)})"
        )
    else:
        await _revoke_retired(run, retired=retired, stored=stored, now=now, revoke=revoke)


def _keep(run: _Run, *, retired: _Retired, why: str, note: str | None = None) -> None:
    """Leave a retired token unrevoked this run. One this run's write dropped from the
    target is stored nowhere now, so it is reported as left to expire, with ``why``; one
    still stored (or only dropped in a dry run) waits for a later run, said as ``note``."""
    if not retired.still_stored and not run.policy.dry_run:
        run.left_to_expire(shown=retired.shown, expires_at=retired.expires_at, why=why)
    elif note is not None:
        run.progress.say(f"not revoking {retired.shown}: {note}")


async def _revoke_retired(
    run: _Run, *, retired: _Retired, stored: StoredToken, now: datetime, revoke: Revoke
) -> None:
    """Revoke a token past its overlap: one attempt while it is under ``previous`` (the
    next run retries), every attempt for a dropped one (nothing retries it later)."""
    attempts = 1 if retired.still_stored else UNSTORED_REVOKE_ATTEMPTS
    error = await _revoke_with_retries(revoke=revoke, value=retired.value, attempts=attempts, sleep=run.sleep)
    if error is not None:
        _report_revocation_failure(run, retired=retired, error=error)
        return
    run.outcome.revoked.append(retired.shown)
    run.progress.say(f"revoked {retired.shown} (rotated out at {format_time(retired.rotated_out_at)})")
    if retired.still_stored:
        try:
            await run.target.mark_previous_revoked(stored=stored, revoked_at=now)
        except TargetError as exc:
            # Harmless: the next run revokes it again, which the Hub accepts.
            log.warning(
                "could not record the revocation", extra={"fingerprint": retired.shown, "error": str(exc)}
            )


def _report_revocation_failure(run: _Run, *, retired: _Retired, error: BaseException) -> None:
    """Say what a failed revocation means for this token: retried by the next run while it
    is under ``previous``; left to expire, to be revoked by hand, once it was dropped."""
    run.outcome.revoke_failures += 1
    if retired.still_stored:
        run.progress.say(
            f"could not revoke {retired.shown}: {safe_error(error)}; it stays under 'previous', "
            "and the next run tries again"
        )
        log.warning(
            "revocation failed; the token stays under 'previous' for the next run to revoke",
            extra={"fingerprint": retired.shown, "error": safe_error(error)},
        )
        return
    run.left_to_expire(
        shown=retired.shown,
        expires_at=retired.expires_at,
        why=f"it left 'previous' and revocation failed ({safe_error(error)}); nothing will "
        "retry, revoke it by hand",
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

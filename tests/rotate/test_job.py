"""``rotate()`` driven with in-memory issuers, targets, verifier and revoker.

The job's parameters were designed for this: each fake below implements the real
protocol (:class:`~tokensidecar.rotate.issuers.Issuer`,
:class:`~tokensidecar.rotate.targets.Target`, :class:`~tokensidecar.backends.verify.Verifier`,
the ``Revoke`` callable), so these tests pin the order of work and what every token ends
as — stored, revoked, or left to expire — without a cluster, a Vault or a Hub. Time is a
fixed clock and the wait between revocation attempts is recorded, not slept, so every
case is deterministic. ``tests/rotate/test_main.py`` runs the same job against real stand-ins.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from tokensidecar.backends.hub_errors import HubUnavailable, TokenRejected
from tokensidecar.redact import fingerprint
from tokensidecar.rotate.issuers import Issuer
from tokensidecar.rotate.job import Outcome, Progress, RotationFailed, RotationPolicy, rotate
from tokensidecar.rotate.targets import StoreConflict, StoredToken, Target, TargetError
from tokensidecar.token import Token

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
LIFETIME = timedelta(hours=8)
WHERE = "memory:hf-token"

LIVE = "hf_live_" + "a" * 24  # what the target holds when the run starts
OLDER = "hf_older_" + "b" * 24  # under 'previous' when the run starts
NEW = "hf_new_" + "c" * 24  # what the issuer mints
RIVAL = "hf_rival_" + "d" * 24  # what a concurrent run stores first


class MintingIssuer(Issuer):
    """Mints ``NEW`` (8 h lifetime), as the Hub's exchanges do: its tokens are the run's to revoke."""

    kind = "oidc-exchange"
    mints = True

    def __init__(self, *, value: str = NEW) -> None:
        self.value = value
        self.calls = 0

    async def issue(self) -> Token:
        self.calls += 1
        return Token(value=self.value, source=self.kind, expires_at=NOW + LIFETIME)


class CopyingIssuer(MintingIssuer):
    """Copies a token someone else holds (``vault``): never the run's to revoke."""

    kind = "vault"
    mints = False


class MemoryTarget(Target):
    """A target in a dict's worth of state, with the real targets' conditional write: a
    store or mark at a revision other than the current one raises :class:`StoreConflict`."""

    kind = "memory"

    def __init__(self, state: StoredToken | None = None) -> None:
        self.state = state or StoredToken(where=WHERE, revision=None)
        self.stored: list[Token] = []
        #: A state another writer stores just before this run's next write.
        self.rival: StoredToken | None = None
        #: Raised by the next store; ``lands`` says whether the write happened anyway.
        self.store_error: TargetError | None = None
        self.lands = False

    async def read(self) -> StoredToken:
        return self.state

    async def store(self, *, token: Token, replacing: StoredToken, rotated_at: datetime) -> StoredToken:
        if self.rival is not None:
            self.state, self.rival = replace(self.rival, revision=self._next_revision()), None
        if replacing.revision != self.state.revision:
            raise StoreConflict(f"revision {replacing.revision} is not {self.state.revision}")
        written = StoredToken(
            where=WHERE,
            revision=self._next_revision(),
            current=token.value,
            previous=replacing.current,
            expires_at=token.expiry(),
            rotated_at=rotated_at,
            version=replacing.version + 1,
        )
        error, self.store_error = self.store_error, None
        if error is None or self.lands:
            self.state = written
            self.stored.append(token)
        if error is not None:
            raise error
        return written

    async def mark_previous_revoked(self, *, stored: StoredToken, revoked_at: datetime) -> None:
        if stored.revision != self.state.revision:
            raise StoreConflict("changed since read")
        self.state = replace(self.state, previous_revoked=True, revision=self._next_revision())

    def _next_revision(self) -> str:
        return str(int(self.state.revision or 0) + 1)


@dataclass
class FakeHub:
    """Verification and revocation as the Hub answers them."""

    rejects: bool = False
    down: bool = False
    #: Revocation attempts to fail before one succeeds.
    revoke_failures: int = 0
    revoked: list[str] = field(default_factory=list)
    revoke_attempts: int = 0
    verified: list[str] = field(default_factory=list)

    async def verify(self, token: Token) -> Token:
        if self.rejects:
            raise TokenRejected("401 Unauthorized")
        if self.down:
            raise HubUnavailable("503 Service Unavailable")
        self.verified.append(token.value)
        return replace(token, verified=True)

    async def aclose(self) -> None:
        return None

    async def revoke(self, token: str) -> None:
        self.revoke_attempts += 1
        if self.revoke_failures:
            self.revoke_failures -= 1
            raise HubUnavailable("503 Service Unavailable")
        self.revoked.append(token)


@dataclass
class Job:
    """One ``rotate()`` call over the fakes, with what it said and how long it would have waited."""

    target: MemoryTarget
    issuer: MintingIssuer = field(default_factory=MintingIssuer)
    hub: FakeHub = field(default_factory=FakeHub)
    policy: RotationPolicy = field(default_factory=RotationPolicy)
    verify: bool = True
    outcome: Outcome = field(default_factory=Outcome)
    said: io.StringIO = field(default_factory=io.StringIO)
    waits: list[float] = field(default_factory=list)

    async def run(self) -> Outcome:
        self.outcome, self.said = Outcome(), io.StringIO()
        return await rotate(
            issuer=self.issuer,
            target=self.target,
            verifier=self.hub if self.verify else None,
            revoke=self.hub.revoke,
            policy=self.policy,
            progress=Progress(stream=self.said),
            outcome=self.outcome,
            clock=lambda: NOW,
            sleep=self._wait,
        )

    async def _wait(self, seconds: float) -> None:
        self.waits.append(seconds)

    @property
    def lines(self) -> str:
        return self.said.getvalue()


def holding(
    *,
    current: str = LIVE,
    previous: str | None = None,
    expires_in: timedelta = timedelta(hours=1),
    rotated_ago: timedelta | None = timedelta(hours=2),
    version: int = 3,
) -> MemoryTarget:
    """A target that already holds ``current`` (and ``previous``), stored ``rotated_ago``."""
    return MemoryTarget(
        StoredToken(
            where=WHERE,
            revision="10",
            current=current,
            previous=previous,
            expires_at=NOW + expires_in,
            rotated_at=None if rotated_ago is None else NOW - rotated_ago,
            version=version,
        )
    )


# --- skip, mint, verify, store --------------------------------------------------------------


async def test_a_stored_token_still_fresh_is_kept_and_the_issuer_is_not_asked() -> None:
    target = holding(expires_in=timedelta(hours=2))
    before = target.state
    job = Job(target=target, policy=RotationPolicy(min_remaining=3600))
    outcome = await job.run()
    assert outcome.result == "skipped" and outcome.succeeded
    assert job.issuer.calls == 0 and outcome.minted is None and outcome.verified is None
    assert target.state == before and target.stored == []
    assert outcome.version == 3 and outcome.expires_at == NOW + timedelta(hours=2)
    assert outcome.revoked == [] and outcome.left_to_expire == [] and job.hub.revoke_attempts == 0
    assert "skip: the stored token has 2h00m left, more than --min-remaining 1h00m" in job.lines


async def test_a_stored_token_close_to_expiry_is_rotated() -> None:
    job = Job(target=holding(expires_in=timedelta(minutes=30)), policy=RotationPolicy(min_remaining=3600))
    outcome = await job.run()
    assert outcome.result == "rotated" and job.issuer.calls == 1


async def test_a_minted_token_is_verified_then_stored_with_the_old_one_as_previous() -> None:
    target = holding()
    job = Job(target=target)
    outcome = await job.run()
    assert outcome.result == "rotated" and outcome.error is None
    assert (outcome.issuer, outcome.target) == ("oidc-exchange", "memory")
    assert outcome.minted == outcome.stored == fingerprint(NEW)
    assert outcome.verified == "ok" and outcome.replaced == fingerprint(LIVE)
    assert outcome.version == 4 and outcome.expires_at == NOW + LIFETIME
    # Verified before stored: what the target received is the verifier's answer.
    assert job.hub.verified == [NEW] and [token.verified for token in target.stored] == [True]
    assert (target.state.current, target.state.previous) == (NEW, LIVE)
    assert target.state.rotated_at == NOW and target.state.version == 4
    assert outcome.revoked == [] and outcome.left_to_expire == [] and outcome.conflicts == 0
    assert f"stored {fingerprint(NEW)} in {WHERE} as version 4, previous {fingerprint(LIVE)}" in job.lines


async def test_the_first_rotation_creates_the_target() -> None:
    target = MemoryTarget()
    outcome = await Job(target=target).run()
    assert outcome.result == "rotated" and outcome.replaced is None and outcome.version == 1
    assert (target.state.current, target.state.previous) == (NEW, None)


async def test_without_a_verifier_the_token_is_stored_unasked() -> None:
    job = Job(target=holding(), verify=False)
    outcome = await job.run()
    assert outcome.result == "rotated" and outcome.verified == "skipped" and job.hub.verified == []


async def test_the_issuer_handing_back_the_stored_token_stores_nothing_and_revokes_nothing() -> None:
    target = holding(previous=OLDER)
    before = target.state
    job = Job(target=target, issuer=CopyingIssuer(value=LIVE), policy=RotationPolicy(revoke_after=0))
    outcome = await job.run()
    assert outcome.result == "unchanged" and outcome.minted == fingerprint(LIVE)
    assert outcome.verified is None and target.stored == []
    # The overlap check still runs: 'previous' went out 2 h ago, past a zero overlap.
    assert outcome.revoked == [fingerprint(OLDER)] and job.hub.revoked == [OLDER]
    assert target.state.current == before.current and target.state.previous_revoked


# --- tokens minted and not stored -----------------------------------------------------------


async def test_a_token_the_hub_refuses_is_not_stored_and_is_revoked() -> None:
    target = holding()
    before = target.state
    job = Job(target=target, hub=FakeHub(rejects=True))
    with pytest.raises(RotationFailed, match=f"the Hub rejected the new token {fingerprint(NEW)}"):
        await job.run()
    outcome = job.outcome
    assert outcome.result == "failed" and not outcome.succeeded and outcome.verified == "rejected"
    assert outcome.error is not None and outcome.error.endswith("nothing was stored")
    assert target.state == before and target.stored == []
    assert outcome.revoked == [fingerprint(NEW)] and job.hub.revoked == [NEW]
    assert (
        f"revoked {fingerprint(NEW)}, minted by this run and not stored: it failed verification" in job.lines
    )


async def test_a_hub_outage_at_verification_stores_nothing_unless_the_policy_allows() -> None:
    job = Job(target=holding(), hub=FakeHub(down=True))
    with pytest.raises(RotationFailed, match="TOKENSIDECAR_VERIFY_ON_HUB_OUTAGE=publish"):
        await job.run()
    assert job.outcome.verified == "hub_unavailable" and job.hub.revoked == [NEW]

    job = Job(
        target=holding(), hub=FakeHub(down=True), policy=RotationPolicy(store_unverified_on_outage=True)
    )
    outcome = await job.run()
    assert outcome.result == "rotated" and outcome.verified == "unverified"
    assert job.target.state.current == NEW and job.hub.revoked == []


async def test_losing_the_conditional_write_stands_down_and_revokes_the_minted_token() -> None:
    target = holding()
    target.rival = StoredToken(
        where=WHERE, revision=None, current=RIVAL, previous=LIVE, rotated_at=NOW, version=4
    )
    job = Job(target=target)
    outcome = await job.run()
    assert outcome.result == "superseded" and outcome.succeeded and outcome.error is None
    assert outcome.conflicts == 1 and outcome.version == 4
    # Nothing written on top: the rival's token and the one it displaced stay stored.
    assert (target.state.current, target.state.previous) == (RIVAL, LIVE) and target.stored == []
    assert outcome.stored is None and outcome.revoked == [fingerprint(NEW)] and job.hub.revoked == [NEW]
    assert "not writing on top" in job.lines


async def test_a_metadata_change_between_read_and_write_is_retried_on_top() -> None:
    target = holding()
    target.rival = target.state  # same tokens at a new revision: an annotation, say
    outcome = await Job(target=target).run()
    assert outcome.result == "rotated" and outcome.conflicts == 1
    assert (target.state.current, target.state.previous) == (NEW, LIVE) and outcome.revoked == []


async def test_a_failed_write_revokes_the_minted_token_once_it_is_known_absent() -> None:
    target = holding()
    target.store_error = TargetError("500 Internal Server Error")
    job = Job(target=target)
    with pytest.raises(RotationFailed, match=f"cannot store the new token in {WHERE}: 500"):
        await job.run()
    assert job.outcome.result == "failed" and target.state.current == LIVE
    assert job.outcome.revoked == [fingerprint(NEW)] and job.hub.revoked == [NEW]


async def test_a_failed_write_that_landed_anyway_keeps_the_token() -> None:
    target = holding()
    target.store_error, target.lands = TargetError("connection reset"), True
    job = Job(target=target)
    with pytest.raises(RotationFailed, match="cannot store the new token"):
        await job.run()
    assert target.state.current == NEW and job.outcome.revoked == [] and job.hub.revoke_attempts == 0
    assert f"{fingerprint(NEW)} is in {WHERE} after all; keeping it" in job.lines


async def test_a_dry_run_stores_nothing_and_revokes_what_it_minted() -> None:
    target = holding(previous=OLDER)
    before = target.state
    job = Job(target=target, policy=RotationPolicy(dry_run=True, revoke_after=3600))
    outcome = await job.run()
    assert outcome.result == "dry_run" and outcome.succeeded
    assert outcome.stored == fingerprint(NEW) and outcome.replaced == fingerprint(LIVE)
    assert target.state == before and target.stored == []
    # Only the minted token is revoked; 'previous', past its overlap, is only named.
    assert outcome.revoked == [fingerprint(NEW)] and job.hub.revoked == [NEW]
    assert f"dry run: would revoke {fingerprint(OLDER)}" in job.lines
    assert f"revoked {fingerprint(NEW)}, minted by this run and not stored: this is a dry run" in job.lines


async def test_a_copied_token_not_stored_is_never_revoked() -> None:
    job = Job(target=holding(), issuer=CopyingIssuer(), policy=RotationPolicy(dry_run=True))
    outcome = await job.run()
    assert outcome.result == "dry_run" and outcome.revoked == [] and job.hub.revoke_attempts == 0
    assert outcome.left_to_expire == []  # a vault copy is someone else's, still used there
    assert "the vault issuer does not mint it, so it is not revoked" in job.lines


async def test_a_minted_token_whose_revocation_fails_is_reported_left_to_expire() -> None:
    job = Job(target=holding(), hub=FakeHub(revoke_failures=99), policy=RotationPolicy(dry_run=True))
    outcome = await job.run()
    assert outcome.result == "dry_run" and outcome.revoked == []
    assert outcome.revoke_failures == 1 and outcome.left_to_expire == [fingerprint(NEW)]
    # Stored nowhere, so every attempt is made now, with the backoff between them.
    assert job.hub.revoke_attempts == 3 and len(job.waits) == 2
    assert "nothing will retry, revoke it by hand" in job.lines
    assert "left_to_expire=1 revoke_failures=1" in outcome.summary()


# --- tokens past their overlap --------------------------------------------------------------


async def test_previous_past_the_overlap_is_revoked_and_marked_never_the_current() -> None:
    target = holding(previous=OLDER, expires_in=timedelta(hours=6))
    job = Job(target=target, policy=RotationPolicy(min_remaining=3600, revoke_after=3600))
    outcome = await job.run()
    assert outcome.result == "skipped"
    assert outcome.revoked == [fingerprint(OLDER)] and job.hub.revoked == [OLDER]
    assert target.state.previous_revoked and target.state.current == LIVE

    again = await job.run()  # marked: not revoked twice
    assert again.revoked == [] and job.hub.revoke_attempts == 1


async def test_previous_within_the_overlap_is_kept() -> None:
    target = holding(previous=OLDER, expires_in=timedelta(hours=6), rotated_ago=timedelta(minutes=10))
    job = Job(target=target, policy=RotationPolicy(min_remaining=3600, revoke_after=3600))
    outcome = await job.run()
    assert outcome.result == "skipped" and outcome.revoked == [] and outcome.left_to_expire == []
    assert not target.state.previous_revoked and job.hub.revoke_attempts == 0


async def test_a_failed_revocation_of_previous_is_left_for_the_next_run() -> None:
    target = holding(previous=OLDER, expires_in=timedelta(hours=6))
    hub = FakeHub(revoke_failures=1)
    job = Job(target=target, hub=hub, policy=RotationPolicy(min_remaining=3600, revoke_after=3600))
    outcome = await job.run()
    assert outcome.result == "skipped" and outcome.revoked == [] and outcome.revoke_failures == 1
    # Still under 'previous': one attempt now, and the promise that the next run retries is true.
    assert outcome.left_to_expire == [] and hub.revoke_attempts == 1 and job.waits == []
    assert not target.state.previous_revoked
    assert "it stays under 'previous', and the next run tries again" in job.lines

    retried = await job.run()
    assert retried.revoked == [fingerprint(OLDER)] and target.state.previous_revoked


async def test_a_rotation_revokes_the_previous_it_drops_once_past_the_overlap() -> None:
    target = holding(previous=OLDER)
    job = Job(target=target, policy=RotationPolicy(revoke_after=3600))
    outcome = await job.run()
    assert outcome.result == "rotated" and (target.state.current, target.state.previous) == (NEW, LIVE)
    # OLDER left the target with this write, 2 h after it was rotated out: revoked. LIVE just
    # moved to 'previous' and starts its overlap.
    assert outcome.revoked == [fingerprint(OLDER)] and job.hub.revoked == [OLDER]
    assert not target.state.previous_revoked


async def test_a_rotation_dropping_previous_inside_its_overlap_reports_it_left_to_expire() -> None:
    target = holding(previous=OLDER, rotated_ago=timedelta(minutes=10))
    job = Job(target=target, policy=RotationPolicy(revoke_after=3600))
    outcome = await job.run()
    assert outcome.result == "rotated" and outcome.revoked == []
    assert outcome.left_to_expire == [fingerprint(OLDER)] and job.hub.revoke_attempts == 0
    assert "it left 'previous' 50m00s before its overlap ended" in job.lines


async def test_a_rotation_dropping_previous_without_revoke_after_reports_it_left_to_expire() -> None:
    job = Job(target=holding(previous=OLDER))
    outcome = await job.run()
    assert outcome.result == "rotated" and outcome.left_to_expire == [fingerprint(OLDER)]
    assert "it left 'previous' and --revoke-after is unset" in job.lines and job.hub.revoke_attempts == 0


async def test_a_dropped_previous_whose_revocation_fails_is_reported_not_promised() -> None:
    # Every attempt at revoking OLDER fails; it leaves the target with this write, so nothing can retry it.
    hub = FakeHub(revoke_failures=3)
    job = Job(target=holding(previous=OLDER), hub=hub, policy=RotationPolicy(revoke_after=0))
    outcome = await job.run()
    assert outcome.result == "rotated"
    assert outcome.revoke_failures == 1 and outcome.left_to_expire == [fingerprint(OLDER)]
    assert hub.revoke_attempts == 4 and len(job.waits) == 2
    # With no overlap at all, LIVE (just moved to 'previous') goes at once; NEW never.
    assert outcome.revoked == [fingerprint(LIVE)] and hub.revoked == [LIVE]
    assert "nothing will retry, revoke it by hand" in job.lines and "next run" not in job.lines


async def test_previous_with_an_unknown_rotation_time_is_not_revoked() -> None:
    target = holding(previous=OLDER, expires_in=timedelta(hours=6), rotated_ago=None)
    job = Job(target=target, policy=RotationPolicy(min_remaining=3600, revoke_after=0))
    outcome = await job.run()
    assert outcome.revoked == [] and job.hub.revoke_attempts == 0
    assert f"not revoking {fingerprint(OLDER)}: when it was rotated out is unknown" in job.lines


async def test_the_live_token_is_never_revoked_whatever_the_bookkeeping_says() -> None:
    # A target whose 'previous' is its current token (written twice by hand, say).
    target = holding(previous=LIVE, expires_in=timedelta(hours=6))
    job = Job(target=target, policy=RotationPolicy(min_remaining=3600, revoke_after=0))
    outcome = await job.run()
    assert outcome.result == "skipped" and outcome.revoked == [] and job.hub.revoke_attempts == 0

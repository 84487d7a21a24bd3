"""The real ``tokensidecar run`` against the Hub stand-in: verification, outage policy, and
expiry-driven refresh of exchanged tokens, observed from outside (file, /metrics, /status)."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.jwt import JwtIssuer
from tests.sidecar_process import SidecarProcess, hub_file_sidecar, wait_for
from tokensidecar.demo.hub import HubStandIn


def _fp(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


def _write(path: Path, value: str) -> None:
    """Replace the source file the way kubelet and the rotation tools do: a rename."""
    staged = path.with_name(path.name + ".staged")
    staged.write_text(value)
    staged.replace(path)


def _file_sidecar(hub: HubStandIn, tmp_path: Path, **env: str) -> tuple[SidecarProcess, Path]:
    return hub_file_sidecar(hub_url=hub.url, directory=tmp_path, **env)


def _verify_count(sidecar: SidecarProcess, result: str) -> float:
    return sidecar.metric("tokensidecar_verify_total", f'result="{result}"') or 0.0


def test_rejected_token_is_never_published(hub: HubStandIn, tmp_path: Path) -> None:
    sidecar, source_file = _file_sidecar(hub, tmp_path)
    good = hub.issue_token()
    _write(source_file, good)
    with sidecar:
        sidecar.wait_for_token(good)
        forged = "hf_" + hashlib.sha256(b"forged").hexdigest()[:30]
        _write(source_file, forged)
        wait_for(lambda: _verify_count(sidecar, "rejected") >= 1)
        status = sidecar.status()
        assert "rejected" in status["last_error"]
        assert status["fingerprint"] == _fp(good)
        assert sidecar.token() == good
        assert _verify_count(sidecar, "ok") == 1
    for secret in (good, forged):
        assert secret not in sidecar.logs


def test_whoami_is_called_once_per_new_token_not_per_read(hub: HubStandIn, tmp_path: Path) -> None:
    sidecar, source_file = _file_sidecar(hub, tmp_path)
    first, second = hub.issue_token(), hub.issue_token()
    _write(source_file, first)
    with sidecar:
        sidecar.wait_for_token(first)
        for _ in range(4):  # the same token rewritten: the source sees a change each time
            _write(source_file, first)
            time.sleep(0.25)
        assert hub.whoami_by_token[_fp(first)] == 1
        _write(source_file, second)
        sidecar.wait_for_token(second)
        assert hub.whoami_by_token[_fp(second)] == 1
        assert hub.calls["whoami"] == 2


@pytest.mark.parametrize("policy", ["publish", "hold"])
def test_hub_outage_never_displaces_a_verified_token(hub: HubStandIn, tmp_path: Path, policy: str) -> None:
    sidecar, source_file = _file_sidecar(hub, tmp_path, TOKENSIDECAR_VERIFY_ON_HUB_OUTAGE=policy)
    first, second = hub.issue_token(), hub.issue_token()
    _write(source_file, first)
    with sidecar:
        sidecar.wait_for_token(first)
        hub.fail_next(1000, status=503, path_prefix="/api/whoami-v2")
        _write(source_file, second)
        # Whatever the policy, the verified token stays while the Hub cannot judge the new one.
        wait_for(lambda: _verify_count(sidecar, "hub_unavailable_held") >= 1)
        assert sidecar.token() == first
        status = sidecar.status()
        assert status["fingerprint"] == _fp(first) and status["verified"] is True
        assert "unavailable" in status["last_error"]
        assert sidecar.get("/readyz")[0] == 200
        assert _verify_count(sidecar, "hub_unavailable_published") == 0
        hub.clear_faults()  # the Hub comes back: the held token goes out, verified
        sidecar.wait_for_token(second, timeout=10)
        wait_for(lambda: sidecar.status()["verified"] is True)
    assert second not in sidecar.logs


@contextlib.contextmanager
def _first_token_published_unverified(
    hub: HubStandIn, tmp_path: Path
) -> Iterator[tuple[SidecarProcess, str]]:
    """A sidecar with the "publish" outage policy, started while the Hub's whoami answers
    503, once it has published its first token (unverified); yields it and the token."""
    sidecar, source_file = _file_sidecar(hub, tmp_path, TOKENSIDECAR_VERIFY_ON_HUB_OUTAGE="publish")
    first = hub.issue_token()
    _write(source_file, first)
    hub.fail_next(1000, status=503, path_prefix="/api/whoami-v2")
    with sidecar:
        # Nothing valid is published yet: "publish" puts the token out unverified.
        sidecar.wait_for_token(first)
        yield sidecar, first


def test_hub_outage_with_publish_policy_publishes_the_first_token_unverified(
    hub: HubStandIn, tmp_path: Path
) -> None:
    with _first_token_published_unverified(hub, tmp_path) as (sidecar, first):
        assert _verify_count(sidecar, "hub_unavailable_published") == 1
        assert sidecar.status()["verified"] is False  # the Hub is still down: nothing can verify it
        assert sidecar.get("/readyz")[0] == 200
        hub.clear_faults()
        wait_for(lambda: sidecar.status()["verified"] is True, timeout=10)
    assert first not in sidecar.logs


def test_token_published_unverified_then_revoked_makes_the_sidecar_unready(
    hub: HubStandIn, tmp_path: Path
) -> None:
    with _first_token_published_unverified(hub, tmp_path) as (sidecar, first):
        hub.revoke(first)
        hub.clear_faults()  # the Hub answers again, and refuses the token it never vouched for
        wait_for(lambda: sidecar.get("/readyz")[0] == 503, timeout=10)
        assert "rejected by the Hub" in sidecar.get("/readyz")[1]
        assert sidecar.metric("tokensidecar_ready") == 0
    assert first not in sidecar.logs


def test_exchanged_token_is_refreshed_from_expires_in(
    hub: HubStandIn, oidc_issuer: JwtIssuer, tmp_path: Path
) -> None:
    hub.exchange_lifetime = 6
    subject_file = tmp_path / "sa-token"
    subject_file.write_text(oidc_issuer.mint())
    (tmp_path / "out").mkdir()
    sidecar = SidecarProcess(
        token_file=tmp_path / "out" / "token",
        env={
            "TOKENSIDECAR_SOURCE": "oidc-exchange",
            "HF_ENDPOINT": hub.url,
            "TOKENSIDECAR_OIDC_RESOURCE": hub.repo_id,
            "TOKENSIDECAR_OIDC_TOKEN_FILE": str(subject_file),
            "TOKENSIDECAR_VERIFY": "repo",
            "TOKENSIDECAR_MODEL_ID": hub.repo_id,
        },
    )
    published: list[tuple[float, str]] = []

    def record() -> bool:
        value = sidecar.token()
        if value and (not published or published[-1][1] != value):
            published.append((time.monotonic(), value))
            assert hub.is_valid(value), "a published exchanged token must be live at the Hub"
        return len(published) >= 5

    with sidecar:
        wait_for(record, timeout=25, interval=0.05)
        status = sidecar.status()
        assert status["source"] == "oidc-exchange"
        assert sidecar.get("/readyz")[0] == 200
    # The first token is published before /healthz answers, so the test sees it late (by the
    # sidecar's start-up time on a loaded machine): measure from the first refresh it saw happen.
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(published[1:])]
    # 2/3 of a 6 s lifetime is 4 s, ±10% jitter; never after the token has expired (6 s,
    # the contract's bound: a loaded machine may observe a publish late, never early).
    assert all(3.0 <= gap < 6.0 for gap in gaps), gaps
    assert all(value.startswith("hf_jwt_") for _, value in published)
    assert all(hub.whoami_by_token[_fp(value)] == 1 for _, value in published)
    for _, value in published:
        assert value not in sidecar.logs

"""The Hub side: the stand-in behaves like the Hub for real clients, and the verifier judges
tokens the way the Hub means its answers (rejection vs. outage).

Documents the stand-in follows here: hub-docs ``security-tokens.md`` "Revoking a leaked
token" (revocation), ``models-gated.md`` (gated repositories), huggingface_hub
``hf_api.py`` ``HfApi.auth_check`` (the access check), huggingface.js ``who-am-i.ts`` and
hub-docs issue #2114 (whoami-v2 shapes).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2 as httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

from tokensidecar.backends.hub import HubVerifier, revoke
from tokensidecar.backends.hub_errors import HubUnavailable, TokenRejected
from tokensidecar.backends.settings import VerifySettings
from tokensidecar.backends.verify import build_verifier
from tokensidecar.client import read_token, watch_token
from tokensidecar.config import ConfigError, resolve
from tokensidecar.demo.hub import DEFAULT_FILES, DEFAULT_REPO, HubStandIn, serve_in_thread
from tokensidecar.sidecar.settings import sidecar_settings
from tokensidecar.token import Token


def _token(value: str) -> Token:
    return Token(value=value, source="test")


def _verifier(hub: HubStandIn, *, mode: str = "whoami", **kwargs: float) -> HubVerifier:
    return HubVerifier(
        endpoint=hub.url, mode=mode, model_id=DEFAULT_REPO if mode != "whoami" else None, **kwargs
    )


def test_snapshot_download_reads_private_repo_only_with_a_valid_token(
    hub: HubStandIn, tmp_path: Path
) -> None:
    token = hub.issue_token(expires_in=60)
    target = snapshot_download(DEFAULT_REPO, local_dir=tmp_path / "ok", token=token, endpoint=hub.url)
    for name, content in DEFAULT_FILES.items():
        assert (Path(target) / name).read_bytes() == content

    hub.revoke(token)
    with pytest.raises(HfHubHTTPError) as refused:
        snapshot_download(DEFAULT_REPO, local_dir=tmp_path / "revoked", token=token, endpoint=hub.url)
    assert refused.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError):
        snapshot_download(DEFAULT_REPO, local_dir=tmp_path / "anonymous", token=False, endpoint=hub.url)


def test_expired_token_stops_working_at_the_hub(hub: HubStandIn) -> None:
    token = hub.issue_token(expires_in=0.3)
    assert HfApi(endpoint=hub.url).whoami(token=token)["name"] == hub.username
    time.sleep(0.4)
    with pytest.raises(HfHubHTTPError):
        HfApi(endpoint=hub.url).whoami(token=token)


async def test_verifier_marks_token_verified_with_the_hubs_expiry(hub: HubStandIn) -> None:
    # OAuth tokens: whoami-v2 answers auth.expiresAt (huggingface.js AuthInfo.expiresAt).
    value = hub.issue_token(expires_in=600, kind="hf_oauth_")
    verified = await _verifier(hub).verify(_token(value))
    assert verified.verified
    assert verified.expires_at is not None
    assert abs(verified.expires_at.timestamp() - (time.time() + 600)) < 5
    assert hub.calls["whoami"] == 1


def test_whoami_answers_in_the_shape_of_each_token_kind(hub: HubStandIn) -> None:
    api = HfApi(endpoint=hub.url)
    classic = api.whoami(token=hub.issue_token(role="write"))["auth"]
    assert classic["type"] == "access_token" and classic["accessToken"]["role"] == "write"
    assert {"displayName", "createdAt"} <= set(classic["accessToken"])
    assert "expiresAt" not in classic["accessToken"]  # a token that never expires
    oauth = api.whoami(token=hub.issue_token(kind="hf_oauth_", expires_in=600))["auth"]
    assert oauth["type"] == "oauth" and "accessToken" not in oauth and "expiresAt" in oauth
    fine = api.whoami(
        token=hub.issue_token(
            role="fineGrained",
            scoped=[
                {"entity": {"type": "model", "name": DEFAULT_REPO}, "permissions": ["repo.content.read"]}
            ],
        )
    )["auth"]["accessToken"]
    assert fine["role"] == "fineGrained"
    assert fine["fineGrained"]["scoped"][0]["entity"]["name"] == DEFAULT_REPO
    assert set(fine["fineGrained"]) == {"canReadGatedRepos", "global", "scoped"}


async def test_verifier_keeps_the_sources_own_expiry_over_the_hubs(hub: HubStandIn) -> None:
    value = hub.issue_token(expires_in=600, kind="hf_oauth_")
    from_source = Token(value=value, source="vault").with_expiry(datetime.now(UTC) + timedelta(seconds=90))
    verified = await _verifier(hub).verify(from_source)
    assert verified.expires_at == from_source.expires_at


async def test_token_unknown_to_the_hub_is_rejected(hub: HubStandIn) -> None:
    with pytest.raises(TokenRejected, match="HTTP 401"):
        await _verifier(hub).verify(_token("hf_" + secrets.token_hex(16)))


async def test_revoked_token_is_rejected(hub: HubStandIn) -> None:
    value = hub.issue_token()
    await revoke(endpoint=hub.url, token=value)
    assert not hub.is_valid(value)
    with pytest.raises(TokenRejected):
        await _verifier(hub).verify(_token(value))
    # Revoking again is harmless and the owner is notified only once (security-tokens.md).
    await revoke(endpoint=hub.url, token=value)
    assert list(hub.revocation_notices.values()) == [1]


def test_revocation_endpoint_answers_as_the_hub_documents(hub: HubStandIn) -> None:
    # security-tokens.md: {"credentials": [...]}, no authentication, always 202 Accepted.
    first, second = hub.issue_token(), hub.issue_token()
    url = f"{hub.url}/api/credentials/revoke"
    answer = httpx.post(url, json={"credentials": [first, second, "hf_never_issued"]})
    assert answer.status_code == 202
    assert not hub.is_valid(first) and not hub.is_valid(second)
    assert httpx.post(url, json={"credentials": [first]}).status_code == 202
    # What tokensidecar used to send (the token in {"token"}, as Bearer) is not the documented body.
    third = hub.issue_token()
    assert (
        httpx.post(url, json={"token": third}, headers={"Authorization": f"Bearer {third}"}).status_code
        == 400
    )
    assert hub.is_valid(third)


async def test_revocation_is_sent_without_the_token_as_credentials(hub: HubStandIn) -> None:
    # A token that cannot authenticate (already expired) is still revoked: no auth needed.
    value = hub.issue_token(expires_in=0.01)
    time.sleep(0.05)
    await revoke(endpoint=hub.url, token=value)
    assert hub.calls["revoke"] == 1 and list(hub.revocation_notices.values()) == [1]


@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_hub_errors_are_an_outage_not_a_rejection(hub: HubStandIn, status: int) -> None:
    value = hub.issue_token()
    hub.fail_next(1, status=status, path_prefix="/api/whoami-v2")
    with pytest.raises(HubUnavailable, match=f"HTTP {status}"):
        await _verifier(hub).verify(_token(value))
    assert (await _verifier(hub).verify(_token(value))).verified


async def test_unreachable_hub_is_an_outage() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    verifier = HubVerifier(endpoint=f"http://127.0.0.1:{port}")
    with pytest.raises(HubUnavailable, match="cannot reach the Hub"):
        await verifier.verify(_token("hf_" + secrets.token_hex(16)))


async def test_hub_that_stalls_is_an_outage_after_the_timeout(hub: HubStandIn) -> None:
    value = hub.issue_token()
    # The stall outlasts the timeout many times over: "did not answer" can only come from
    # the verifier giving up, and one request means it gave up once, without retrying.
    # How long giving up takes is measured by bench/hub_verify.py.
    hub.stall_next(1, delay=3.0, path_prefix="/api/whoami-v2")
    with pytest.raises(HubUnavailable, match="did not answer"):
        await HubVerifier(endpoint=hub.url, request_timeout=0.3).verify(_token(value))
    assert [path for _, path in hub.requests] == ["/api/whoami-v2"]


async def test_repo_verification_fails_for_a_token_without_access_to_the_model(hub: HubStandIn) -> None:
    outsider = hub.issue_token(can_read_repo=False)
    member = hub.issue_token()
    # whoami alone accepts both: the Hub knows them.
    assert (await _verifier(hub).verify(_token(outsider))).verified
    with pytest.raises(TokenRejected, match=f"read access to {DEFAULT_REPO}"):
        await _verifier(hub, mode="repo").verify(_token(outsider))
    assert (await _verifier(hub, mode="repo").verify(_token(member))).verified
    assert hub.calls["auth_check"] == 2 and hub.calls["model_info"] == 0


async def test_repo_verification_refuses_a_token_not_granted_a_gated_model(tmp_path: Path) -> None:
    # models-gated.md: a gated repo's metadata is public; its files answer 403 GatedRepo until
    # access is granted. GET /api/models/{id} passes every valid token; auth-check does not.
    with serve_in_thread(HubStandIn(gated=True)) as gated:
        waiting = gated.issue_token(gated_access=False)
        granted = gated.issue_token()
        api = HfApi(endpoint=gated.url)
        assert api.model_info(DEFAULT_REPO, token=waiting).gated == "manual"
        with pytest.raises(GatedRepoError):
            api.auth_check(DEFAULT_REPO, token=waiting)
        with pytest.raises(GatedRepoError):
            hf_hub_download(
                DEFAULT_REPO, "config.json", token=waiting, endpoint=gated.url, cache_dir=tmp_path
            )
        verifier = HubVerifier(endpoint=gated.url, mode="repo", model_id=DEFAULT_REPO)
        with pytest.raises(TokenRejected, match="gated model, access not granted"):
            await verifier.verify(_token(waiting))
        assert (await verifier.verify(_token(granted))).verified
        api.auth_check(DEFAULT_REPO, token=granted)


def test_auth_check_says_repository_not_found_as_the_hub_does(hub: HubStandIn) -> None:
    api = HfApi(endpoint=hub.url)
    with pytest.raises(RepositoryNotFoundError):
        api.auth_check(DEFAULT_REPO, token=hub.issue_token(can_read_repo=False))
    with pytest.raises(HfHubHTTPError) as no_write:
        api.auth_check(DEFAULT_REPO, token=hub.issue_token(), write=True)
    assert no_write.value.response.status_code == 403
    api.auth_check(DEFAULT_REPO, token=hub.issue_token(role="write"), write=True)


def test_repo_verification_requires_a_model_id() -> None:
    config = resolve(sidecar_settings(), {}, environ={"TOKENSIDECAR_VERIFY": "repo"})
    with pytest.raises(ConfigError, match="TOKENSIDECAR_MODEL_ID is required when --verify=repo"):
        build_verifier(VerifySettings.resolve(config))
    config = resolve(
        sidecar_settings(), {}, environ={"TOKENSIDECAR_VERIFY": "repo", "TOKENSIDECAR_MODEL_ID": "no-slash"}
    )
    with pytest.raises(ConfigError, match="TOKENSIDECAR_MODEL_ID"):
        build_verifier(VerifySettings.resolve(config))


def test_verifier_is_built_from_settings(hub: HubStandIn) -> None:
    config = resolve(
        sidecar_settings(),
        {},
        environ={
            "HF_ENDPOINT": hub.url,
            "TOKENSIDECAR_VERIFY": "repo",
            "TOKENSIDECAR_MODEL_ID": DEFAULT_REPO,
        },
    )
    verifier = build_verifier(VerifySettings.resolve(config))
    assert isinstance(verifier, HubVerifier)
    assert (verifier.endpoint, verifier.mode, verifier.model_id) == (hub.url, "repo", DEFAULT_REPO)
    assert (
        build_verifier(
            VerifySettings.resolve(resolve(sidecar_settings(), {}, environ={"TOKENSIDECAR_VERIFY": "none"}))
        )
        is None
    )


async def test_repo_verification_is_one_whoami_and_one_auth_check_each_time(hub: HubStandIn) -> None:
    # What a verification costs the Hub, in requests; its latency is bench/hub_verify.py's.
    value = hub.issue_token()
    verifier = _verifier(hub, mode="repo")
    for _ in range(21):
        assert (await verifier.verify(_token(value))).verified
    assert (hub.calls["whoami"], hub.calls["auth_check"]) == (21, 21)


def test_watch_token_calls_back_on_each_rotation(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("hf_first_token_value")
    seen: list[str] = []
    watch = watch_token(path, seen.append, poll_seconds=0.02)
    try:
        for value in ("hf_second_token_value", "hf_third_token_value"):
            staged = tmp_path / ".staged"
            staged.write_text(value)
            staged.replace(path)  # how the sidecar publishes: a rename over the old file
            deadline = time.monotonic() + 3
            while seen[-1] != value and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        watch.stop()
    assert seen == ["hf_first_token_value", "hf_second_token_value", "hf_third_token_value"]
    assert read_token(path) == "hf_third_token_value"
    assert read_token(tmp_path / "missing") is None


def test_watch_token_survives_a_failing_callback(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("hf_first_token_value")
    calls: list[str] = []

    def flaky(token: str) -> None:
        calls.append(token)
        if len(calls) == 1:
            raise RuntimeError("cannot apply " + token)

    with watch_token(path, flaky, poll_seconds=0.02):
        (tmp_path / ".staged").write_text("hf_second_token_value")
        (tmp_path / ".staged").replace(path)
        deadline = time.monotonic() + 3
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert calls == ["hf_first_token_value", "hf_second_token_value"]


async def test_canary_token_never_leaks_from_verification_or_revocation(
    hub: HubStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = hub.issue_token()
    canaries = [good, "hf_CANARY" + secrets.token_hex(12)]
    texts: list[str] = []
    verifier = _verifier(hub, mode="repo")
    await verifier.verify(_token(good))
    texts.append(repr(_token(good)))
    with pytest.raises(TokenRejected) as rejected:
        await verifier.verify(_token(canaries[1]))
    texts.append(str(rejected.value))
    hub.fail_next(1, status=503)
    with pytest.raises(HubUnavailable) as outage:
        await verifier.verify(_token(good))
    texts.append(str(outage.value))
    await revoke(endpoint=hub.url, token=good)
    with pytest.raises(TokenRejected) as revoked:
        await verifier.verify(_token(good))
    texts.append(str(revoked.value))
    await asyncio.sleep(0)
    texts.append(caplog.text)
    for record in caplog.records:
        texts.append(repr(vars(record)))
    for canary in canaries:
        for text in texts:
            assert canary not in text


async def test_revoking_a_short_lived_token_says_the_hub_may_not_invalidate_it_early(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Undocumented whether /api/credentials/revoke kills hf_jwt_ tokens before they expire: with a
    # Hub that does not, the token stays valid, and the log says it may live until it expires.
    with serve_in_thread(HubStandIn(revocable_kinds=("hf_",))) as hub:
        value = hub.issue_token(kind="hf_jwt_", expires_in=600)
        caplog.set_level(logging.INFO, logger="tokensidecar")
        await revoke(endpoint=hub.url, token=value)
        assert hub.is_valid(value)
        record = next(r for r in caplog.records if "revocation accepted" in r.getMessage())
        assert "may live until it expires" in record.getMessage()
        assert getattr(record, "expires_at", None) is not None
        assert value not in caplog.text

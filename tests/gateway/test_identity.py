"""TokenReviewer against the fake API server, over real HTTP with the official client."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import pathlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.fixtures.jwt import JwtIssuer
from tests.fixtures.kube import KubeApi
from tests.gateway.conftest import GATEWAY_AUDIENCE, KubeletVolume, ServiceAccountTokens
from tests.gateway.harness import Clock, GatewayProcess, client_mid_download
from tokensidecar.demo.hub import HubStandIn, serve_in_thread
from tokensidecar.gateway.identity import Identity, IdentityUnavailable, TokenReviewer, parse_service_account
from tokensidecar.logs import JsonFormatter


@pytest.fixture
async def reviewer(
    kube_api: KubeApi, cluster: ServiceAccountTokens, clock: Clock, registry: CollectorRegistry
) -> AsyncIterator[TokenReviewer]:
    token_reviewer = TokenReviewer(
        audience=GATEWAY_AUDIENCE, kube=kube_api.api_client(), clock=clock, registry=registry
    )
    try:
        yield token_reviewer
    finally:
        await token_reviewer.aclose()


async def test_service_accounts_of_several_namespaces_are_identified(
    reviewer: TokenReviewer, cluster: ServiceAccountTokens
) -> None:
    accounts = [("team-a", "llama-server"), ("team-b", "default"), ("kserve-localmodel-jobs", "downloader")]
    for namespace, name in accounts:
        token = cluster.issue(namespace=namespace, service_account=name, lifetime=1800)
        identity = await reviewer.review(token)
        assert identity is not None
        assert (identity.namespace, identity.service_account) == (namespace, name)
        assert identity.username == f"system:serviceaccount:{namespace}:{name}"
        assert identity.expires_at is not None
        remaining = (identity.expires_at - datetime.now(UTC)).total_seconds()
        assert 1700 < remaining <= 1800
    # Every review asked for the gateway's audience, and only for it.
    assert cluster.reviews == [[GATEWAY_AUDIENCE]] * 3


async def test_token_for_another_audience_is_refused(
    reviewer: TokenReviewer, cluster: ServiceAccountTokens
) -> None:
    vault_token = cluster.issue(namespace="team-a", service_account="llama", audience="vault")
    assert await reviewer.review(vault_token) is None
    both = cluster.issue(namespace="team-a", service_account="llama", audience=["vault", GATEWAY_AUDIENCE])
    assert await reviewer.review(both) is not None


async def test_expired_forged_and_garbage_tokens_are_refused(
    reviewer: TokenReviewer, cluster: ServiceAccountTokens
) -> None:
    expired = cluster.issue(namespace="team-a", service_account="llama", lifetime=-60)
    forged = JwtIssuer().service_account_token(namespace="team-a", name="llama", audience=GATEWAY_AUDIENCE)
    for token in (expired, forged, "not-a-jwt-at-all", "a.b.c"):
        assert await reviewer.review(token) is None
    assert await reviewer.review("") is None


async def test_deleted_service_account_is_refused(
    reviewer: TokenReviewer, cluster: ServiceAccountTokens
) -> None:
    token = cluster.issue(namespace="team-a", service_account="gone")
    cluster.delete_service_account("team-a", "gone")
    assert await reviewer.review(token) is None


async def test_authenticated_without_the_audience_or_not_a_service_account_is_refused(
    reviewer: TokenReviewer, cluster: ServiceAccountTokens
) -> None:
    # An authenticator that ignores audiences answers with none: not proof the token is ours,
    # even when it names a service account (a legacy Secret-based token, a static token file).
    cluster.other_users["legacy-secret-token"] = ("system:serviceaccount:team-a:llama", [])
    cluster.other_users["static-token-of-alice"] = ("alice", [])
    # A user (not a workload) whose token was issued for our audience.
    cluster.other_users["oidc-token-of-bob"] = ("oidc:bob", [GATEWAY_AUDIENCE])
    assert await reviewer.review("legacy-secret-token") is None
    assert await reviewer.review("static-token-of-alice") is None
    assert await reviewer.review("oidc-token-of-bob") is None


def test_service_account_usernames_are_parsed_strictly() -> None:
    assert parse_service_account("system:serviceaccount:team-a:llama") == ("team-a", "llama")
    for username in ("alice", "system:serviceaccount:team-a", "system:serviceaccount::x", "system:node:n1"):
        assert parse_service_account(username) is None
    assert parse_service_account("system:serviceaccount:a:b:c") is None


async def test_answers_are_cached_until_the_token_expires(
    reviewer: TokenReviewer, cluster: ServiceAccountTokens, clock: Clock
) -> None:
    token = cluster.issue(namespace="team-a", service_account="llama", lifetime=600)
    first = await reviewer.review(token)
    for _ in range(50):
        assert await reviewer.review(token) == first
    assert reviewer.reviews_sent == 1
    clock.now += 599
    assert await reviewer.review(token) == first
    assert reviewer.reviews_sent == 1
    clock.now += 2  # past exp: the API server decides again
    assert await reviewer.review(token) == first  # (its own clock says the token is still valid)
    assert reviewer.reviews_sent == 2


async def test_refusals_are_cached_briefly(
    reviewer: TokenReviewer, cluster: ServiceAccountTokens, clock: Clock
) -> None:
    bad = cluster.issue(namespace="team-a", service_account="llama", audience="vault")
    for _ in range(20):
        assert await reviewer.review(bad) is None
    assert reviewer.reviews_sent == 1
    clock.now += reviewer.negative_ttl + 1
    assert await reviewer.review(bad) is None
    assert reviewer.reviews_sent == 2


async def test_cache_is_bounded_least_recently_used_first(
    kube_api: KubeApi, cluster: ServiceAccountTokens, clock: Clock
) -> None:
    reviewer = TokenReviewer(audience=GATEWAY_AUDIENCE, kube=kube_api.api_client(), cache_size=2, clock=clock)
    try:
        a, b, c = (cluster.issue(namespace="team-a", service_account=name) for name in "abc")
        await reviewer.review(a)
        await reviewer.review(b)
        await reviewer.review(a)  # a is now the most recently used
        await reviewer.review(c)  # evicts b
        assert reviewer.reviews_sent == 3
        await reviewer.review(a)
        await reviewer.review(c)
        assert reviewer.reviews_sent == 3
        await reviewer.review(b)
        assert reviewer.reviews_sent == 4
    finally:
        await reviewer.aclose()


async def test_concurrent_requests_with_one_new_token_share_one_review(
    reviewer: TokenReviewer, cluster: ServiceAccountTokens, kube_api: KubeApi
) -> None:
    token = cluster.issue(namespace="team-a", service_account="llama")
    kube_api.latency = 0.3  # all of them arrive while the review is in flight
    identities = await asyncio.gather(*(reviewer.review(token) for _ in range(50)))
    assert reviewer.reviews_sent == 1
    assert len(cluster.reviews) == 1
    assert all(identity == identities[0] and identity is not None for identity in identities)


async def test_api_server_down_refuses_unknown_tokens_and_keeps_cached_answers(
    reviewer: TokenReviewer, cluster: ServiceAccountTokens, kube_api: KubeApi
) -> None:
    known = cluster.issue(namespace="team-a", service_account="llama")
    refused = cluster.issue(namespace="team-a", service_account="llama", audience="vault")
    unknown = cluster.issue(namespace="team-b", service_account="other")
    identity = await reviewer.review(known)
    assert identity is not None
    assert await reviewer.review(refused) is None
    kube_api.stop()
    assert await reviewer.review(known) == identity
    assert await reviewer.review(refused) is None
    with pytest.raises(IdentityUnavailable, match="create tokenreview"):
        await reviewer.review(unknown)


async def test_api_server_errors_fail_closed_then_recover(
    reviewer: TokenReviewer, cluster: ServiceAccountTokens, kube_api: KubeApi
) -> None:
    token = cluster.issue(namespace="team-a", service_account="llama")
    kube_api.fail_next(1, status=503, path_contains="tokenreviews")
    with pytest.raises(IdentityUnavailable, match="503"):
        await reviewer.review(token)
    kube_api.fail_next(1, status=403, path_contains="tokenreviews")  # the gateway lacks RBAC
    with pytest.raises(IdentityUnavailable, match="403"):
        await reviewer.review(token)
    # A failure is not cached: the next request asks again and gets in.
    assert isinstance(await reviewer.review(token), Identity)


async def test_slow_api_server_times_out_as_unavailable(
    kube_api: KubeApi, cluster: ServiceAccountTokens
) -> None:
    reviewer = TokenReviewer(audience=GATEWAY_AUDIENCE, kube=kube_api.api_client(), timeout=(1.0, 0.3))
    try:
        kube_api.latency = 3.0
        with pytest.raises(IdentityUnavailable):
            await reviewer.review(cluster.issue(namespace="team-a", service_account="llama"))
    finally:
        kube_api.latency = 0.0
        await reviewer.aclose()


async def test_no_token_reaches_logs_or_metrics(
    reviewer: TokenReviewer, cluster: ServiceAccountTokens, kube_api: KubeApi, registry: CollectorRegistry
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    previous_level = root.level
    root.setLevel(logging.DEBUG)
    tokens = [
        cluster.issue(namespace="team-a", service_account="llama"),
        cluster.issue(namespace="team-a", service_account="llama", audience="vault"),
        "opaque-caller-token-0123456789",
    ]
    try:
        for token in tokens:
            await reviewer.review(token)
        cluster.other_users["static-token-of-alice"] = ("alice", [])
        await reviewer.review("static-token-of-alice")
        kube_api.fail_next(1, status=500, path_contains="tokenreviews")
        with pytest.raises(IdentityUnavailable) as raised:
            await reviewer.review(cluster.issue(namespace="team-c", service_account="x"))
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
    exposition = generate_latest(registry).decode()
    assert 'tokensidecar_gateway_tokenreviews_total{result="authenticated"} 1.0' in exposition
    output = stream.getvalue() + exposition + str(raised.value)
    for token in [*tokens, "static-token-of-alice"]:
        assert token not in output
        for part in token.split("."):
            if len(part) > 16:
                assert part not in output


# -- a kubelet token rotation while a download runs (the real gateway and huggingface_hub) --

SWAP_FILES = {f"shard-{index}.bin": bytes([index]) * (2 * 1024 * 1024) for index in range(3)}


def test_projected_token_swapped_mid_download_is_used_for_the_rest_of_it(
    cluster: ServiceAccountTokens, kube_api: KubeApi, projected_token: KubeletVolume, tmp_path: pathlib.Path
) -> None:
    """kubelet renews the projected token with a ``..data`` swap while snapshot_download runs:
    huggingface_hub reads HF_TOKEN_PATH per request, the gateway reviews the new token, and
    the download completes. The new token is another service account's here (both allowed),
    so the audit log shows which requests carried which token."""
    policy = "rules:\n  - subjects: [{namespace: team-a, serviceAccount: predictor*}]\n    repos: [acme/*]\n"
    projected_token.write(cluster.issue(namespace="team-a", service_account="predictor"))
    with serve_in_thread(HubStandIn(files=SWAP_FILES)) as hub:
        hub.stall_next_body(1, after=1024 * 1024, delay=6.0)
        gateway = GatewayProcess.in_front_of(hub, kube_api=kube_api, tmp_path=tmp_path, policy=policy)
        out = tmp_path / "out"
        with gateway:
            gateway.wait_until_ready()
            finish = client_mid_download(
                gateway,
                f"snapshot_download({hub.repo_id!r}, local_dir={str(out)!r}, max_workers=1)",
                token_path=projected_token.path,
                home=tmp_path / "home",
            )
            projected_token.write(cluster.issue(namespace="team-a", service_account="predictor-renewed"))
            results = finish()
    assert results and results[0]["ok"], results
    assert {name: (out / name).read_bytes() for name in SWAP_FILES} == SWAP_FILES
    audit = [json.loads(line) for line in gateway.logs.splitlines() if '"audit": true' in line]
    subjects = [line["subject"] for line in audit if line["decision"] == "allowed"]
    assert subjects[0] == "team-a/predictor"
    assert "team-a/predictor-renewed" in subjects
    assert {line["decision"] for line in audit} == {"allowed"}


async def test_a_flood_of_new_tokens_is_shed_not_queued(
    kube_api: KubeApi, cluster: ServiceAccountTokens
) -> None:
    reviewer = TokenReviewer(audience=GATEWAY_AUDIENCE, kube=kube_api.api_client(), max_pending=3)
    try:
        known = cluster.issue(namespace="team-a", service_account="llama")
        assert await reviewer.review(known) is not None
        kube_api.latency = 0.5
        flood = [f"garbage-token-{index:04d}-0123456789" for index in range(10)]
        outcomes = await asyncio.gather(*(reviewer.review(token) for token in flood), return_exceptions=True)
        shed = [o for o in outcomes if isinstance(o, IdentityUnavailable)]
        assert len(shed) == 7 and outcomes.count(None) == 3
        assert reviewer.reviews_sent == 1 + 3
        assert await reviewer.review(known) is not None  # cached: never shed
    finally:
        kube_api.latency = 0.0
        await reviewer.aclose()


def test_an_unusable_kubeconfig_is_a_configuration_error(tmp_path: pathlib.Path) -> None:
    from tokensidecar.config import ConfigError

    with pytest.raises(ConfigError, match="KUBECONFIG"):
        TokenReviewer.from_kubeconfig(audience=GATEWAY_AUDIENCE, kubeconfig=str(tmp_path / "missing"))

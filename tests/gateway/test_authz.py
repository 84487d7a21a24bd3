"""The Gatekeeper with its real parts: TokenReviews at the fake API server, a policy file."""

from __future__ import annotations

import io
import json
import logging
import os
import pathlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.fixtures.kube import KubeApi
from tests.gateway.conftest import GATEWAY_AUDIENCE, KubeletVolume, ServiceAccountTokens
from tests.gateway.harness import HUB_SETUP, TEAM_A_POLICY, Clock, GatewayProcess, projected_token, run_client
from tests.sidecar_process import wait_for
from tokensidecar.demo.hub import HubStandIn
from tokensidecar.gateway.authz import AUDIT_LOGGER, AuditLog, Gatekeeper, Verdict, bearer_token
from tokensidecar.gateway.identity import Identity, TokenReviewer
from tokensidecar.gateway.policy import PolicyFile
from tokensidecar.logs import JsonFormatter

POLICY = """
rules:
  - subjects: [{namespace: team-a, serviceAccount: llama-*}]
    repos: [acme/llama-*]
    revisions: [main]
  - subjects: [{namespace: team-b}]
    repos: [partner/*]
    credential: partner
"""
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def audit_lines() -> Iterator[list[dict[str, Any]]]:
    """The audit logger's lines, parsed (the production JSON formatter)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(AUDIT_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    class Lines(list[dict[str, Any]]):
        def refresh(self) -> Lines:
            self[:] = [json.loads(line) for line in stream.getvalue().splitlines()]
            return self

    lines = Lines()
    yield lines
    logger.removeHandler(handler)


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


@pytest.fixture
async def gatekeeper(
    kube_api: KubeApi,
    cluster: ServiceAccountTokens,
    policy_volume: KubeletVolume,
    registry: CollectorRegistry,
    clock: Clock,
) -> AsyncIterator[Gatekeeper]:
    policy_volume.write(POLICY)
    reviewer = TokenReviewer(audience=GATEWAY_AUDIENCE, kube=kube_api.api_client(), registry=registry)
    policy = PolicyFile(policy_volume.path, credentials={"default", "partner"}, registry=registry)
    keeper = Gatekeeper(reviewer=reviewer, policy=policy, registry=registry, audit=AuditLog(clock=clock))
    try:
        yield keeper
    finally:
        await reviewer.aclose()


def bearer(token: str) -> str:
    return f"Bearer {token}"


async def test_the_four_outcomes(
    gatekeeper: Gatekeeper, cluster: ServiceAccountTokens, kube_api: KubeApi, registry: CollectorRegistry
) -> None:
    llama = cluster.issue(namespace="team-a", service_account="llama-server")
    partner = cluster.issue(namespace="team-b", service_account="default")

    allowed = await gatekeeper.check(authorization=bearer(llama), repo="acme/llama-3", revision="main")
    assert allowed.outcome == "allowed"
    assert allowed.identity is not None and allowed.identity.subject == "team-a/llama-server"
    assert allowed.decision is not None and (allowed.decision.rule, allowed.decision.credential) == (
        0,
        "default",
    )

    via_partner = await gatekeeper.check(authorization=bearer(partner), repo="partner/m", revision="v1")
    assert via_partner.decision is not None and via_partner.decision.credential == "partner"

    denied = await gatekeeper.check(authorization=bearer(partner), repo="acme/llama-3", revision="main")
    assert denied.outcome == "denied"
    assert denied.decision is not None and denied.decision.reason == "no rule matches"

    for authorization in (None, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", bearer("not-a-token")):
        refused = await gatekeeper.check(authorization=authorization, repo="acme/llama-3", revision="main")
        assert refused == Verdict(outcome="unauthenticated", identity=None, decision=None)
    vault_audience = cluster.issue(namespace="team-a", service_account="llama-server", audience="vault")
    wrong = await gatekeeper.check(authorization=bearer(vault_audience), repo="acme/llama-3", revision="main")
    assert wrong.outcome == "unauthenticated"

    kube_api.stop()
    unknown = cluster.issue(namespace="team-a", service_account="llama-other")
    down = await gatekeeper.check(authorization=bearer(unknown), repo="acme/llama-3", revision="main")
    assert down == Verdict(outcome="unavailable", identity=None, decision=None)
    # A workload reviewed before the outage keeps working until its token expires.
    again = await gatekeeper.check(authorization=bearer(llama), repo="acme/llama-3", revision="main")
    assert again.outcome == "allowed"

    exposition = generate_latest(registry).decode()
    for result, count in (("allowed", 3), ("denied", 1), ("unauthenticated", 7), ("unavailable", 1)):
        assert f'tokensidecar_gateway_authz_total{{result="{result}"}} {count}.0' in exposition


async def test_revisions_known_as_and_pinned(
    gatekeeper: Gatekeeper, cluster: ServiceAccountTokens, audit_lines: Any
) -> None:
    token = bearer(cluster.issue(namespace="team-a", service_account="llama-server"))
    at_commit = await gatekeeper.check(authorization=token, repo="acme/llama-3", revision=COMMIT)
    assert at_commit.outcome == "denied"
    assert at_commit.decision is not None and at_commit.decision.reason == "revision not allowed"
    resolved_from_main = await gatekeeper.check(
        authorization=token, repo="acme/llama-3", revision=COMMIT, known_as=frozenset({"main"})
    )
    assert resolved_from_main.outcome == "allowed"
    lines = audit_lines.refresh()
    assert [(line["decision"], line.get("known_as")) for line in lines] == [
        ("denied", None),
        ("allowed", ["main"]),
    ]


async def test_a_reloaded_policy_applies_to_the_next_request(
    gatekeeper: Gatekeeper, cluster: ServiceAccountTokens, policy_volume: KubeletVolume
) -> None:
    token = bearer(cluster.issue(namespace="team-c", service_account="default"))
    assert (await gatekeeper.check(authorization=token, repo="acme/x", revision="main")).outcome == "denied"
    policy_volume.write(POLICY + "  - subjects: [{namespace: team-c}]\n    repos: [acme/*]\n")
    assert gatekeeper.policy.check()
    assert (await gatekeeper.check(authorization=token, repo="acme/x", revision="main")).outcome == "allowed"
    policy_volume.write("rules: [{subjects: [{namespace: team-c}], repos: acme/x}]")  # invalid: kept
    assert not gatekeeper.policy.check()
    assert (await gatekeeper.check(authorization=token, repo="acme/x", revision="main")).outcome == "allowed"


async def test_audit_lines_are_rate_bounded_and_count_what_they_suppress(
    gatekeeper: Gatekeeper, cluster: ServiceAccountTokens, audit_lines: Any, clock: Clock
) -> None:
    token = bearer(cluster.issue(namespace="team-a", service_account="llama-server"))
    for _ in range(100):  # one snapshot_download: many requests, one answer
        await gatekeeper.check(authorization=token, repo="acme/llama-3", revision="main")
    await gatekeeper.check(authorization=token, repo="acme/llama-3", revision="v2")  # another key
    lines = audit_lines.refresh()
    assert len(lines) == 2
    first = lines[0]
    assert first["msg"] == "authorization"
    assert {k: first[k] for k in ("subject", "namespace", "service_account", "repo", "revision")} == {
        "subject": "team-a/llama-server",
        "namespace": "team-a",
        "service_account": "llama-server",
        "repo": "acme/llama-3",
        "revision": "main",
    }
    assert (first["decision"], first["rule"], first["credential"], first["suppressed"]) == (
        "allowed",
        0,
        "default",
        0,
    )
    assert first["policy_version"] == gatekeeper.policy.current.version
    assert (lines[1]["decision"], lines[1]["reason"]) == ("denied", "revision not allowed")

    clock.now += 61
    await gatekeeper.check(authorization=token, repo="acme/llama-3", revision="main")
    lines = audit_lines.refresh()
    assert len(lines) == 3
    assert lines[2]["suppressed"] == 99


def test_evicted_audit_keys_write_their_pending_count(audit_lines: Any) -> None:
    audit = AuditLog(max_keys=2, clock=lambda: 0.0)
    identity = Identity(
        namespace="a", service_account="b", username="system:serviceaccount:a:b", expires_at=None
    )
    verdict = Verdict(outcome="allowed", identity=identity, decision=None)
    for _ in range(5):
        audit.record(verdict=verdict, repo="acme/one", revision="main", policy_version="v")
    audit.record(verdict=verdict, repo="acme/two", revision="main", policy_version="v")
    audit.record(verdict=verdict, repo="acme/three", revision="main", policy_version="v")  # evicts acme/one
    lines = audit_lines.refresh()
    assert [(line["repo"], line["suppressed"]) for line in lines] == [
        ("acme/one", 0),
        ("acme/two", 0),
        ("acme/three", 0),
        ("acme/one", 4),
    ]


async def test_no_token_in_audit_lines(
    gatekeeper: Gatekeeper, cluster: ServiceAccountTokens, audit_lines: Any
) -> None:
    tokens = [
        cluster.issue(namespace="team-a", service_account="llama-server"),
        cluster.issue(namespace="team-b", service_account="x", audience="vault"),
        "hf_canary_caller_token_0123456789",
    ]
    for token in tokens:
        await gatekeeper.check(authorization=bearer(token), repo="acme/llama-3", revision="main")
    text = json.dumps(audit_lines.refresh())
    assert len(audit_lines) == 2  # the two refused callers share one line (same key)
    for token in tokens:
        assert token not in text
        for part in token.split("."):
            if len(part) > 16:
                assert part not in text


def test_bearer_tokens_are_parsed_as_rfc_6750_says() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer abc ") == "abc"
    assert bearer_token("BEARER  abc") == "abc"
    for header in (None, "", "Bearer", "Basic abc", "Token abc"):
        assert bearer_token(header) is None


def test_control_plane_metrics_are_listed_for_the_reference() -> None:
    from tokensidecar.gateway.authz import ControlPlaneMetrics
    from tokensidecar.reference import _metric_entries

    names = {entry.name for entry in _metric_entries(ControlPlaneMetrics(registry=CollectorRegistry()))}
    assert names == {
        "tokensidecar_gateway_authz_total",
        "tokensidecar_gateway_tokenreviews_total",
        "tokensidecar_gateway_identity_cache_total",
        "tokensidecar_gateway_identity_cache_entries",
        "tokensidecar_gateway_policy_reloads_total",
        "tokensidecar_gateway_policy_rules",
        "tokensidecar_gateway_policy_last_load_ok",
    }


# -- the real `tokensidecar gateway`, control plane and data plane together ---------------


def test_real_gateway_authorizes_each_workload_and_follows_policy_changes(
    hub: HubStandIn, cluster: ServiceAccountTokens, kube_api: KubeApi, tmp_path: pathlib.Path
) -> None:
    """Real TokenReviews, a real policy file (reloaded), a real upstream credential; a denied
    caller gets the Hub's RepoNotFound even for a file the cache holds."""
    team_a = cluster.issue(namespace="team-a", service_account="predictor")
    team_b = cluster.issue(namespace="team-b", service_account="predictor")
    wrong_audience = cluster.issue(namespace="team-a", service_account="predictor", audience="vault")
    upstream_token = hub.issue_token()
    gateway = GatewayProcess.in_front_of(
        hub, kube_api=kube_api, tmp_path=tmp_path, upstream_token=upstream_token
    )
    policy_path = tmp_path / "gw" / "policy.yaml"

    def fetch(token: str) -> httpx2.Response:
        return httpx2.get(
            f"{gateway.url}/{hub.repo_id}/resolve/main/config.json",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    def replace_policy(text: str) -> None:
        (tmp_path / "gw" / "next.yaml").write_text(text)
        os.replace(tmp_path / "gw" / "next.yaml", policy_path)

    with gateway:
        gateway.wait_until_ready()
        result = run_client(
            f"open(hf_hub_download({hub.repo_id!r}, 'config.json')).read()",
            endpoint=gateway.url,
            token_path=projected_token(tmp_path / "projected", team_a),
            home=tmp_path / "home",
            setup=HUB_SETUP,
        )
        assert result == {"ok": True, "value": hub.files["config.json"].decode()}

        denied = fetch(team_b)  # the file is in the cache now; team-b still gets nothing
        assert (denied.status_code, denied.headers.get("X-Error-Code")) == (404, "RepoNotFound")
        assert hub.files["config.json"] not in denied.content
        assert fetch(wrong_audience).status_code == 401
        assert fetch("not-a-token").status_code == 401

        replace_policy(TEAM_A_POLICY + "  - subjects: [{namespace: team-b}]\n    repos: [acme/*]\n")
        wait_for(lambda: fetch(team_b).status_code == 200, timeout=30)

        replace_policy("rules: [{subjects: [{namespace: team-b}], repos: acme/*}]\n")  # invalid
        wait_for(
            lambda: gateway.metric("tokensidecar_gateway_policy_reloads_total", 'result="failure"') == 1.0,
            timeout=30,
        )
        status, body = gateway.get("/readyz")
        assert status == 200  # the previous policy is in force, and /readyz says what was refused
        assert "rules[0].repos: must be a list of strings" in json.loads(body)["reason"]
        assert fetch(team_b).status_code == 200
        denials = gateway.metric("tokensidecar_gateway_authz_total", 'result="denied"')
        assert denials is not None and denials >= 1.0  # (and more while the reload was awaited)
        assert gateway.metric("tokensidecar_ready", 'credential="default"') == 1.0

    audit = [json.loads(line) for line in gateway.logs.splitlines() if '"audit": true' in line]
    decisions = {(line["subject"], line["decision"]) for line in audit}
    assert {
        ("team-a/predictor", "allowed"),
        ("team-b/predictor", "denied"),
        ("team-b/predictor", "allowed"),
    } <= (decisions)
    assert (None, "unauthenticated") in decisions
    for secret in (team_a, team_b, wrong_audience, upstream_token):
        assert secret not in gateway.logs
    assert not [p for p in gateway.cache_dir.rglob("*") if upstream_token.encode() in _read(p)]


def _read(path: pathlib.Path) -> bytes:
    return path.read_bytes() if path.is_file() and not path.is_symlink() else b""


def test_real_gateway_with_the_api_server_down_keeps_known_workloads_and_refuses_new_ones(
    hub: HubStandIn, cluster: ServiceAccountTokens, kube_api: KubeApi, tmp_path: pathlib.Path
) -> None:
    known = cluster.issue(namespace="team-a", service_account="predictor")
    new = cluster.issue(namespace="team-a", service_account="predictor")  # another pod, same account
    gateway = GatewayProcess.in_front_of(hub, kube_api=kube_api, tmp_path=tmp_path)

    def fetch(token: str) -> httpx2.Response:
        return httpx2.get(
            f"{gateway.url}/{hub.repo_id}/resolve/main/config.json",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    with gateway:
        gateway.wait_until_ready()
        assert fetch(known).status_code == 200
        kube_api.stop()
        assert fetch(known).status_code == 200  # reviewed before the outage: until its exp
        refused = fetch(new)
        assert refused.status_code == 503  # fail closed, and the client retries
        assert "Retry-After" in refused.headers
        assert gateway.metric("tokensidecar_gateway_authz_total", 'result="unavailable"') == 1.0
        errors = gateway.metric("tokensidecar_gateway_tokenreviews_total", 'result="error"')
        assert errors is not None and errors >= 1.0
    assert new not in gateway.logs and known not in gateway.logs

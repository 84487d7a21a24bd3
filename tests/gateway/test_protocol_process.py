"""The real ``tokensidecar gateway`` process, control plane included: service-account
tokens reviewed by the (kmock) API server, the policy file, a ``file`` upstream credential
verified at the Hub stand-in, and huggingface_hub reading a kubelet-projected token."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.fixtures.kube import KubeApi
from tests.gateway.conftest import KubeletVolume, ServiceAccountTokens
from tests.gateway.harness import HUB_SETUP, GatewayProcess, run_client
from tokensidecar.demo.hub import HubStandIn, serve_in_thread

REPO = "acme/private-model"
FILES = {
    "config.json": b'{"architectures": ["TinyModel"]}\n',
    "weights/model.safetensors": hashlib.sha256(b"p").digest() * (1024 * 1024 // 32),
}
POLICY = """\
rules:
  - subjects: [{namespace: team-a, serviceAccount: predictor}]
    repos: [acme/private-*]
    revisions: [main]
"""


@pytest.fixture
def hub() -> Iterator[HubStandIn]:
    with serve_in_thread(HubStandIn(files=FILES, lfs_files=("weights/model.safetensors",))) as started:
        yield started


@pytest.fixture
def gateway(hub: HubStandIn, kube_api: KubeApi, tmp_path: Path) -> Iterator[GatewayProcess]:
    process = GatewayProcess.in_front_of(hub, kube_api=kube_api, tmp_path=tmp_path, policy=POLICY)
    with process:
        process.wait_until_ready()
        yield process


def _client(gateway: GatewayProcess, token: KubeletVolume, home: Path, expression: str) -> dict[str, object]:
    return run_client(expression, endpoint=gateway.url, token_path=token.path, home=home, setup=HUB_SETUP)


def test_a_workload_downloads_with_its_projected_token_and_the_policy_decides(
    gateway: GatewayProcess,
    hub: HubStandIn,
    cluster: ServiceAccountTokens,
    projected_token: KubeletVolume,
    tmp_path: Path,
) -> None:
    projected_token.write(cluster.issue(namespace="team-a", service_account="predictor"))
    out = tmp_path / "out"
    result = _client(
        gateway, projected_token, tmp_path / "h1", f"snapshot_download({REPO!r}, local_dir={str(out)!r})"
    )
    assert result["ok"], result
    assert {name: (out / name).read_bytes() for name in FILES} == FILES
    # The commit main resolved to is allowed by `revisions: [main]` (known_as); another
    # revision is not, and what a stranger gets is the Hub's 404 for an unseen repo.
    pinned = _client(
        gateway,
        projected_token,
        tmp_path / "h2",
        f"HfApi().model_info({REPO!r}, revision={hub.commit_sha!r}).sha",
    )
    assert pinned == {"ok": True, "value": hub.commit_sha}
    other_branch = _client(
        gateway, projected_token, tmp_path / "h3", f"HfApi().model_info({REPO!r}, revision='dev')"
    )
    assert other_branch["ok"] is False and other_branch["error"] == "RepositoryNotFoundError"
    stranger = KubeletVolume(directory=tmp_path / "stranger")
    stranger.directory.mkdir()
    stranger.write(cluster.issue(namespace="team-b", service_account="predictor"))
    denied = _client(gateway, stranger, tmp_path / "h4", f"hf_hub_download({REPO!r}, 'config.json')")
    assert denied["ok"] is False and denied["error"] == "RepositoryNotFoundError", denied
    wrong_audience = KubeletVolume(directory=tmp_path / "vault-audience")
    wrong_audience.directory.mkdir()
    wrong_audience.write(cluster.issue(namespace="team-a", service_account="predictor", audience="vault"))
    refused = _client(gateway, wrong_audience, tmp_path / "h5", f"HfApi().model_info({REPO!r})")
    assert refused["ok"] is False and "401" in str(refused["message"]), refused
    whoami = _client(gateway, projected_token, tmp_path / "h6", "HfApi().whoami()['name']")
    assert whoami == {"ok": True, "value": "system:serviceaccount:team-a:predictor"}
    metrics = httpx2.get(f"{gateway.url}/metrics").text
    assert 'tokensidecar_gateway_authz_total{result="denied"}' in metrics
    assert "tokensidecar_gateway_bytes_served_total" in metrics


def test_the_api_server_down_keeps_known_workloads_and_refuses_new_ones(
    gateway: GatewayProcess,
    cluster: ServiceAccountTokens,
    kube_api: KubeApi,
    projected_token: KubeletVolume,
    tmp_path: Path,
) -> None:
    projected_token.write(cluster.issue(namespace="team-a", service_account="predictor"))
    warm = _client(gateway, projected_token, tmp_path / "h1", f"snapshot_download({REPO!r})")
    assert warm["ok"], warm
    kube_api.stop()
    again = _client(gateway, projected_token, tmp_path / "h2", f"snapshot_download({REPO!r})")
    assert again["ok"], again  # the TokenReview answer is cached until the token expires
    projected_token.write(cluster.issue(namespace="team-a", service_account="predictor"))
    unknown = httpx2.get(
        f"{gateway.url}/api/models/{REPO}/revision/main",
        headers={"Authorization": f"Bearer {projected_token.path.read_text()}"},
    )
    assert unknown.status_code == 503  # fail closed, and say it is temporary

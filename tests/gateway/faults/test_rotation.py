"""Rotations while a download runs: the gateway's upstream credential (a ``file`` source,
rotated and the old token revoked at the Hub) and the workload's projected token (swapped
by kubelet's ``..data`` rename). Neither breaks the download in flight; what comes after
uses the new tokens."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.kube import KubeApi
from tests.gateway.conftest import KubeletVolume, ServiceAccountTokens
from tests.gateway.harness import HUB_SETUP, GatewayProcess, client_mid_download, run_client
from tests.sidecar_process import wait_for
from tokensidecar.demo.hub import HubStandIn, serve_in_thread

REPO = "acme/private-model"
BIG = "weights/model.safetensors"
FILES = {"config.json": b"{}\n", BIG: hashlib.sha256(b"rot").digest() * (8 * 1024 * 1024 // 32)}


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@pytest.fixture
def hub() -> Iterator[HubStandIn]:
    with serve_in_thread(HubStandIn(files=FILES, lfs_files=(BIG, "late.safetensors"))) as started:
        yield started


def test_rotations_mid_download_break_nothing(
    hub: HubStandIn,
    cluster: ServiceAccountTokens,
    kube_api: KubeApi,
    projected_token: KubeletVolume,
    tmp_path: Path,
) -> None:
    old_upstream = hub.issue_token()
    gateway = GatewayProcess.in_front_of(
        hub, kube_api=kube_api, tmp_path=tmp_path, upstream_token=old_upstream
    )
    projected_token.write(cluster.issue(namespace="team-a", service_account="predictor"))
    hub.stall_next_body(1, after=2 * 1024 * 1024, delay=3.0)
    with gateway:
        gateway.wait_until_ready()
        out = tmp_path / "out"
        finish = client_mid_download(
            gateway,
            f"snapshot_download({REPO!r}, local_dir={str(out)!r})",
            token_path=projected_token.path,
            home=tmp_path / "h",
        )
        # Mid-download: a new upstream token, the old one revoked; a new projected token.
        new_upstream = hub.issue_token()
        (tmp_path / "gw" / "upstream-token").write_text(new_upstream)
        hub.revoke(old_upstream)
        projected_token.write(cluster.issue(namespace="team-a", service_account="predictor"))
        results = finish()
        assert results and results[0]["ok"], results
        assert {name: (out / name).read_bytes() for name in FILES} == FILES
        # The refresher verified the new upstream token; a new file is fetched with it.
        wait_for(lambda: hub.whoami_by_token[_fingerprint(new_upstream)] > 0, timeout=30)
        commit = hub.push({**FILES, "late.safetensors": b"\x05" * 300_000})

        def late_download() -> bool:
            late = run_client(
                f"hf_hub_download({REPO!r}, 'late.safetensors', revision={commit!r})",
                endpoint=gateway.url,
                token_path=projected_token.path,
                home=tmp_path / "h2",
                setup=HUB_SETUP,
            )
            return bool(late["ok"])

        wait_for(late_download, timeout=60, interval=1.0)
        assert hub.downloads_by_token[_fingerprint(new_upstream)] >= 1

"""``kill -9`` of the real ``tokensidecar gateway`` mid-download, then a restart on the same
cache: the half-written file is never served as complete, and the next download is whole."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.fixtures.kube import KubeApi
from tests.gateway.conftest import ServiceAccountTokens
from tests.gateway.harness import HUB_SETUP, GatewayProcess, projected_token, run_client
from tests.sidecar_process import wait_for
from tokensidecar.demo.hub import HubStandIn, serve_in_thread

REPO = "acme/private-model"
NAME = "weights/model.safetensors"
CONTENT = hashlib.sha256(b"crash").digest() * (16 * 1024 * 1024 // 32)  # 16 MiB
FILES = {"config.json": b"{}\n", NAME: CONTENT}


@pytest.fixture
def hub() -> Iterator[HubStandIn]:
    with serve_in_thread(HubStandIn(files=FILES, lfs_files=(NAME,))) as started:
        yield started


def test_kill_9_mid_download_never_serves_the_partial_file(
    hub: HubStandIn, cluster: ServiceAccountTokens, kube_api: KubeApi, tmp_path: Path
) -> None:
    token = cluster.issue(namespace="team-a", service_account="predictor")
    upstream_token = hub.issue_token()
    gateway = GatewayProcess.in_front_of(
        hub, kube_api=kube_api, tmp_path=tmp_path, upstream_token=upstream_token
    )
    url = f"{gateway.url}/{REPO}/resolve/main/{NAME}"
    headers = {"Authorization": f"Bearer {token}"}
    hub.stall_next_body(1, after=4 * 1024 * 1024, delay=5.0)
    received: list[int] = []
    with gateway:
        gateway.wait_until_ready()

        def client() -> None:
            try:
                with httpx2.stream("GET", url, headers=headers, timeout=60) as response:
                    for chunk in response.iter_bytes():
                        received.append(len(chunk))
            except httpx2.HTTPError:
                pass  # the gateway died under it

        reader = threading.Thread(target=client)
        reader.start()
        partial = gateway.cache_dir / "partial"
        wait_for(lambda: any(p.stat().st_size > 0 for p in partial.iterdir()), timeout=30)
        gateway.kill()
        reader.join(timeout=30)
        assert sum(received) < len(CONTENT)
        assert [p for p in partial.iterdir()], "the fill was cut while in progress"
        assert list((gateway.cache_dir / "blobs").iterdir()) == []

        gateway.restart()
        gateway.wait_until_ready()
        assert list(partial.iterdir()) == []  # the half-written file is gone, not adopted
        token_path = projected_token(tmp_path / "projected", token)
        result = run_client(
            f"hashlib.sha256(open(hf_hub_download({REPO!r}, {NAME!r}), 'rb').read()).hexdigest()",
            endpoint=gateway.url,
            token_path=token_path,
            home=tmp_path / "home",
            setup=HUB_SETUP + "import hashlib\n",
        )
    assert result == {"ok": True, "value": hashlib.sha256(CONTENT).hexdigest()}
    assert (gateway.cache_dir / "blobs" / hashlib.sha256(CONTENT).hexdigest()).read_bytes() == CONTENT
    assert token not in gateway.logs and upstream_token not in gateway.logs
    assert not [p for p in gateway.cache_dir.rglob("*") if token in p.name or upstream_token in p.name]

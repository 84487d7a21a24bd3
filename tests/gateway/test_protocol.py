"""The Hub protocol through the gateway, with the real huggingface_hub and kserve-storage
against the Hub stand-in (LFS files behind a CDN redirect, Xet hints, pagination)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.harness import RunningGateway, StaticCredentials, gateway_for, run_client
from tokensidecar.demo.hub import HubStandIn, serve_in_thread

REPO = "acme/private-model"
FILES = {
    "config.json": b'{"architectures": ["TinyModel"]}\n',
    "README.md": b"# a model\n",
    "weights/model.safetensors": bytes(range(256)) * 4096,  # 1 MiB, LFS
    "weights/extra.bin": b"\x01\x02" * 70_000,  # LFS
}
LFS = ("weights/model.safetensors", "weights/extra.bin")
HUB = "from huggingface_hub import HfApi, hf_hub_download, snapshot_download\n"


@pytest.fixture
def lfs_hub() -> Iterator[HubStandIn]:
    with serve_in_thread(HubStandIn(files=FILES, lfs_files=LFS, xet=True, tree_page_size=2)) as hub:
        yield hub


@pytest.fixture
def through(lfs_hub: HubStandIn, tmp_path: Path) -> Iterator[tuple[RunningGateway, Path]]:
    credentials = StaticCredentials({"default": lfs_hub.issue_token()})
    with gateway_for(lfs_hub.url, tmp_path, credentials=credentials) as (running, _, token_path):
        yield running, token_path


def _download(running: RunningGateway, token_path: Path, home: Path, expression: str) -> dict[str, object]:
    return run_client(expression, endpoint=running.url, token_path=token_path, home=home, setup=HUB)


def test_snapshot_download_gets_every_file_byte_exact(
    through: tuple[RunningGateway, Path], lfs_hub: HubStandIn, tmp_path: Path
) -> None:
    running, token_path = through
    result = _download(
        running,
        token_path,
        tmp_path / "home",
        f"snapshot_download({REPO!r}, local_dir={str(tmp_path / 'out')!r})",
    )
    assert result["ok"], result
    for name, content in FILES.items():
        assert (tmp_path / "out" / name).read_bytes() == content
    # The CDN never saw a credential, and answered every body the gateway asked for.
    assert lfs_hub.cdn_requests and not any(auth for _, _, auth in lfs_hub.cdn_requests)


def test_cold_snapshot_costs_the_upstream_2_plus_2f_requests(
    through: tuple[RunningGateway, Path], lfs_hub: HubStandIn, tmp_path: Path
) -> None:
    running, token_path = through
    lfs_hub.tree_page_size = 1000
    result = _download(running, token_path, tmp_path / "home", f"snapshot_download({REPO!r})")
    assert result["ok"], result
    assert len(lfs_hub.requests) == 2 + 2 * len(FILES)
    # A second client, warm gateway, at the commit: nothing upstream.
    before = len(lfs_hub.requests)
    result = _download(
        running,
        token_path,
        tmp_path / "home2",
        f"snapshot_download({REPO!r}, revision={lfs_hub.commit_sha!r})",
    )
    assert result["ok"], result
    assert len(lfs_hub.requests) == before

"""Rotation reaches the predictor with no restart: the real sidecar (Vault source, OpenBao),
the Hub stand-in, and a long-lived downloader process that reads the token only through
``HF_TOKEN_PATH`` — KServe's real storage initializer and plain huggingface_hub.

The downloader is one Python process for the whole test, like a predictor: it is given
``HF_ENDPOINT`` and ``HF_TOKEN_PATH`` and no ``HF_TOKEN``, and downloads on request. After
each rotation (new token in Vault → sidecar publishes → old token revoked at the Hub) the
next download in that same process must succeed, which proves huggingface_hub re-reads
the file on every request.
"""

from __future__ import annotations

import hashlib
import importlib.util
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sidecar_process import SidecarProcess
from tokensidecar.demo.hub import DEFAULT_FILES, DEFAULT_REPO, HubStandIn
from tokensidecar.demo.openbao import DevServer
from tokensidecar.demo.predictor import Predictor

HAS_KSERVE = importlib.util.find_spec("kserve_storage") is not None


def _fp(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


@pytest.fixture
def rotation_rig(
    hub: HubStandIn, openbao: DevServer, tmp_path: Path
) -> Iterator[tuple[SidecarProcess, Predictor, str]]:
    """Vault path seeded with a live Hub token, the sidecar publishing it, a downloader."""
    vault_path = f"secret/hf/kserve-{secrets.token_hex(4)}"
    first = hub.issue_token()
    openbao.put_kv(vault_path, {"token": first})
    (tmp_path / "out").mkdir()
    sidecar = SidecarProcess(
        token_file=tmp_path / "out" / "token",
        env={
            "TOKENSIDECAR_SOURCE": "vault",
            "VAULT_ADDR": openbao.addr,
            "VAULT_TOKEN": openbao.root_token,
            "TOKENSIDECAR_VAULT_AUTH": "token",
            "TOKENSIDECAR_VAULT_PATH": vault_path,
            "TOKENSIDECAR_REFRESH_INTERVAL": "1s",
            "HF_ENDPOINT": hub.url,
            "TOKENSIDECAR_VERIFY": "repo",
            "TOKENSIDECAR_MODEL_ID": hub.repo_id,
        },
    )
    with sidecar:
        sidecar.wait_for_token(first, timeout=10)
        downloader = Predictor(hub_url=hub.url, token_file=sidecar.token_file, home=tmp_path / "hf-home")
        try:
            yield sidecar, downloader, vault_path
        finally:
            downloader.close()


def _rotate(
    *, hub: HubStandIn, openbao: DevServer, sidecar: SidecarProcess, vault_path: str
) -> tuple[str, float]:
    """New token in Vault; wait for the sidecar to publish it; revoke the old one at the Hub.

    Returns the new token and the monotonic time of the Vault write.
    """
    old = sidecar.token()
    assert old is not None
    new = hub.issue_token()
    written_at = time.monotonic()
    openbao.put_kv(vault_path, {"token": new})
    sidecar.wait_for_token(new, timeout=10)
    hub.revoke(old)
    return new, written_at


def _assert_downloaded(answer: dict[str, Any]) -> None:
    assert answer["ok"], answer
    assert answer["files"] == sorted(DEFAULT_FILES), answer


@pytest.mark.e2e
@pytest.mark.skipif(not HAS_KSERVE, reason="kserve-storage is not installed (the e2e extra)")
def test_kserve_storage_initializer_downloads_across_rotation_without_restart(
    hub: HubStandIn,
    openbao: DevServer,
    rotation_rig: tuple[SidecarProcess, Predictor, str],
    tmp_path: Path,
) -> None:
    sidecar, downloader, vault_path = rotation_rig
    first = sidecar.token()
    assert first is not None
    _assert_downloaded(downloader.download(repo_id=DEFAULT_REPO, out_dir=tmp_path / "model-0", how="kserve"))
    assert hub.downloads_by_token[_fp(first)] == len(DEFAULT_FILES)

    for rotation in range(1, 3):
        new, written_at = _rotate(hub=hub, openbao=openbao, sidecar=sidecar, vault_path=vault_path)
        answer = downloader.download(
            repo_id=DEFAULT_REPO, out_dir=tmp_path / f"model-{rotation}", how="kserve"
        )
        elapsed = time.monotonic() - written_at
        _assert_downloaded(answer)
        assert hub.downloads_by_token[_fp(new)] == len(DEFAULT_FILES)
        print(
            f"rotation {rotation}: Vault write → KServe download done in {elapsed:.2f}s "
            f"(download {answer['seconds']:.2f}s)"
        )
    assert first not in sidecar.read_logs()


def test_huggingface_hub_process_downloads_across_three_rotations(
    hub: HubStandIn,
    openbao: DevServer,
    rotation_rig: tuple[SidecarProcess, Predictor, str],
    tmp_path: Path,
) -> None:
    sidecar, downloader, vault_path = rotation_rig
    first = sidecar.token()
    assert first is not None
    _assert_downloaded(downloader.download(repo_id=DEFAULT_REPO, out_dir=tmp_path / "model-0", how="hub"))
    used = [first]
    for rotation in range(1, 4):
        new, written_at = _rotate(hub=hub, openbao=openbao, sidecar=sidecar, vault_path=vault_path)
        answer = downloader.download(repo_id=DEFAULT_REPO, out_dir=tmp_path / f"model-{rotation}", how="hub")
        elapsed = time.monotonic() - written_at
        _assert_downloaded(answer)
        assert hub.downloads_by_token[_fp(new)] == len(DEFAULT_FILES)
        used.append(new)
        print(f"rotation {rotation}: Vault write → download done in {elapsed:.2f}s")
    # Each revoked token really is dead: the download worked only because the file changed.
    assert [hub.is_valid(value) for value in used] == [False, False, False, True]
    assert all(hub.whoami_by_token[_fp(value)] == 1 for value in used)
    logs = sidecar.read_logs()
    assert all(value not in logs for value in used)

"""The same downloads against olah, a Hub implementation nobody here wrote.

olah (PyPI) runs in offline mirror mode (``[accessibility] offline = true`` with
``mirrors-path``): it serves the Hub protocol from a local git repository, with LFS files
as pointer blobs plus ``.git/lfs/objects/<aa>/<bb>/<sha256>`` (olah/mirror/repos.py,
``get_file_head``: ETag = the sha256 for LFS, the git blob id otherwise). Everything it is
told about listens or points on loopback; ``hf-netloc`` names a closed port, and offline
mode never dials it (olah/server.py ``check_hf_connection`` returns when offline).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.harness import HUB_SETUP, StaticCredentials, gateway_for, olah_process, run_client
from tests.sidecar_process import free_port, wait_for

pytest.importorskip("olah")

REPO = "acme/private-model"
FILES = {
    "config.json": b'{"architectures": ["TinyModel"]}\n',
    "README.md": b"# a model\n",
    "tokenizer/vocab.txt": b"a\nb\nc\n",
}
LFS = {"weights/model.safetensors": hashlib.sha256(b"olah").digest() * (2 * 1024 * 1024 // 32)}


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def _mirror(root: Path) -> Path:
    """A git repository shaped like a clone of a Hub repo: small files, LFS pointers."""
    repo = root / "models" / "acme" / "private-model"
    repo.mkdir(parents=True)
    _git("init", "-q", "-b", "main", cwd=repo)
    for name, content in FILES.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(content)
    for name, content in LFS.items():
        sha = hashlib.sha256(content).hexdigest()
        objects = repo / ".git" / "lfs" / "objects" / sha[:2] / sha[2:4]
        objects.mkdir(parents=True)
        (objects / sha).write_bytes(content)
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(content)}\n"
        )
    _git("add", "-A", cwd=repo)
    _git("commit", "-q", "-m", "model", cwd=repo)
    return repo


@pytest.fixture
def olah(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "olah"
    _mirror(root / "mirrors")
    port = free_port()
    config = root / "olah.toml"
    config.write_text(
        f"""[basic]
host = "127.0.0.1"
port = {port}
repos-path = "{root / "repos"}"
mirrors-path = ["{root / "mirrors"}"]
hf-scheme = "http"
hf-netloc = "127.0.0.1:9"
hf-lfs-netloc = "127.0.0.1:9"
mirror-scheme = "http"
mirror-netloc = "127.0.0.1:{port}"
mirror-lfs-netloc = "127.0.0.1:{port}"

[accessibility]
offline = true
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    log = open(root / "olah.log", "wb")  # noqa: SIM115 - closed below
    process = olah_process(config=config, port=port, root=root, log=log, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx2

        def up() -> bool:
            if process.poll() is not None:
                raise RuntimeError((root / "olah.log").read_text())
            try:
                return httpx2.get(f"{url}/api/models/{REPO}/revision/main", timeout=2).status_code == 200
            except httpx2.HTTPError:
                return False

        wait_for(up, timeout=60, interval=0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_snapshot_and_kserve_download_through_the_gateway_from_olah(olah: str, tmp_path: Path) -> None:
    with gateway_for(olah, tmp_path, credentials=StaticCredentials({"default": "hf_unused"})) as (
        running,
        _,
        token,
    ):
        snapshot = run_client(
            f"snapshot_download({REPO!r}, local_dir={str(tmp_path / 'snap')!r})",
            endpoint=running.url,
            token_path=token,
            home=tmp_path / "home",
            setup=HUB_SETUP,
        )
        kserve = run_client(
            f"Storage.download('hf://{REPO}', out_dir={str(tmp_path / 'kserve')!r})",
            endpoint=running.url,
            token_path=token,
            home=tmp_path / "home2",
            setup="from kserve_storage import Storage\n",
        )
        fills = running.metric("tokensidecar_gateway_fills_total", result="complete")
    assert snapshot["ok"], snapshot
    assert kserve["ok"], kserve
    for out in (tmp_path / "snap", tmp_path / "kserve"):
        for name, content in {**FILES, **LFS}.items():
            assert (out / name).read_bytes() == content
    assert fills == len(FILES) + len(LFS)  # the second download came from the cache


def test_api_listings_and_range_through_the_gateway_from_olah(olah: str, tmp_path: Path) -> None:
    name, content = next(iter(LFS.items()))
    expression = f"""{{
        "sha": api.model_info(R, revision="main").sha,
        "tree": sorted(f.path for f in api.list_repo_tree(R, recursive=True)),
        "paths": sorted(p.path for p in api.get_paths_info(R, ["config.json", {name!r}])),
        "file": hashlib.sha256(open(hf_hub_download(R, {name!r}), "rb").read()).hexdigest(),
    }}"""
    with gateway_for(olah, tmp_path, credentials=StaticCredentials({"default": "hf_unused"})) as (
        running,
        _,
        token,
    ):
        result = run_client(
            expression,
            endpoint=running.url,
            token_path=token,
            home=tmp_path / "home",
            setup=HUB_SETUP + f"import hashlib\napi, R = HfApi(), {REPO!r}\n",
        )
        import httpx2

        ranged = httpx2.get(
            f"{running.url}/{REPO}/resolve/main/{name}",
            headers={"Authorization": "Bearer sa-token-team-a", "Range": "bytes=10-19"},
        )
    assert result["ok"], result
    value = result["value"]
    assert len(value["sha"]) == 40
    assert {*FILES, *LFS} <= set(value["tree"])
    assert value["paths"] == sorted(["config.json", name])
    assert value["file"] == hashlib.sha256(content).hexdigest()
    assert ranged.status_code == 206 and ranged.content == content[10:20]

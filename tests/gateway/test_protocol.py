"""The Hub protocol through the gateway, with the real huggingface_hub and kserve-storage
against the Hub stand-in (LFS files behind a CDN redirect, Xet hints, pagination)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.harness import RunningGateway, StaticCredentials, gateway_for, projected_token, run_client
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


def test_kserve_storage_downloads_through_the_gateway(
    through: tuple[RunningGateway, Path], tmp_path: Path
) -> None:
    running, token_path = through
    out = tmp_path / "model"
    setup = "from kserve_storage import Storage\n"
    result = run_client(
        f"Storage.download('hf://{REPO}', out_dir={str(out)!r})",
        endpoint=running.url,
        token_path=token_path,
        home=tmp_path / "home",
        setup=setup,
    )
    assert result["ok"], result
    for name, content in FILES.items():
        assert (out / name).read_bytes() == content


def test_model_info_tree_and_paths_info_as_the_hub_lists_them(
    through: tuple[RunningGateway, Path], lfs_hub: HubStandIn, tmp_path: Path
) -> None:
    running, token_path = through
    # Evaluated in the client; api = HfApi(), R = the repo.
    expression = """{
        "info": [api.model_info(R).sha, sorted(s.rfilename for s in api.model_info(R).siblings)],
        "tree": sorted((f.path, getattr(f, "lfs", None) and f.lfs.sha256)
                       for f in api.list_repo_tree(R, recursive=True)),
        "top": sorted(f.path for f in api.list_repo_tree(R)),
        "expanded": [f.last_commit is not None
                     for f in api.list_repo_tree(R, path_in_repo="weights", expand=True)],
        "xet": [getattr(f, "xet_hash", None) for f in api.list_repo_tree(R, recursive=True)],
        "paths": sorted((p.path, p.size)
                        for p in api.get_paths_info(R, ["config.json", "weights/extra.bin", "missing"])),
    }"""
    setup = HUB + f"api, R = HfApi(), {REPO!r}\n"
    result = run_client(
        expression, endpoint=running.url, token_path=token_path, home=tmp_path / "h", setup=setup
    )
    assert result["ok"], result
    value = result["value"]
    assert value["info"] == [lfs_hub.commit_sha, sorted(FILES)]
    # Page size 2 upstream: every page came through the gateway's own Link.
    assert [path for path, _ in value["tree"]] == sorted([*FILES, "weights"])
    assert (
        dict(value["tree"])["weights/model.safetensors"]
        == hashlib.sha256(FILES["weights/model.safetensors"]).hexdigest()
    )
    assert value["top"] == ["README.md", "config.json", "weights"]
    assert value["expanded"] == [True, True]
    assert value["xet"] == [None] * 5  # no xetHash reaches a client
    assert value["paths"] == [
        ["config.json", len(FILES["config.json"])],
        ["weights/extra.bin", len(FILES["weights/extra.bin"])],
    ]


def test_head_has_the_hub_headers_and_no_xet_hint_and_no_redirect(
    through: tuple[RunningGateway, Path], lfs_hub: HubStandIn
) -> None:
    import httpx2

    running, _ = through
    url = f"{running.url}/{REPO}/resolve/main/weights/model.safetensors"
    response = httpx2.head(url, headers={"Authorization": "Bearer sa-token-team-a"})
    content = FILES["weights/model.safetensors"]
    assert response.status_code == 200
    assert response.headers["X-Repo-Commit"] == lfs_hub.commit_sha
    assert response.headers["X-Linked-Etag"] == f'"{hashlib.sha256(content).hexdigest()}"'
    assert response.headers["X-Linked-Size"] == str(len(content))
    assert response.headers["Content-Length"] == str(len(content))
    assert response.headers["Accept-Ranges"] == "bytes"
    assert not [h for h in response.headers if h.lower().startswith("x-xet")]
    assert "Link" not in response.headers and "Location" not in response.headers
    ranged = httpx2.get(url, headers={"Authorization": "Bearer sa-token-team-a", "Range": "bytes=1000-1999"})
    assert ranged.status_code == 206
    assert ranged.headers["Content-Range"] == f"bytes 1000-1999/{len(content)}"
    assert ranged.content == content[1000:2000]
    tail = httpx2.get(url, headers={"Authorization": "Bearer sa-token-team-a", "Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == content[-10:]
    beyond = httpx2.get(
        url, headers={"Authorization": "Bearer sa-token-team-a", "Range": f"bytes={len(content)}-"}
    )
    assert beyond.status_code == 416


def test_upstream_cut_mid_body_is_resumed_with_range_and_never_cached_short(
    through: tuple[RunningGateway, Path], lfs_hub: HubStandIn, tmp_path: Path
) -> None:
    running, token_path = through
    # huggingface_hub reads 10 MiB chunks and keeps only whole ones when a body is cut:
    # the file must be larger for the client to resume rather than restart.
    name = "weights/big.safetensors"
    lfs_hub.push({**FILES, name: FILES["weights/model.safetensors"] * 24})
    lfs_hub.lfs_files = frozenset({*LFS, name})
    lfs_hub.cut_next_body(1, after=12 * 1024 * 1024)
    result = _download(
        running,
        token_path,
        tmp_path / "home",
        f"__import__('hashlib').sha256(open(hf_hub_download({REPO!r}, {name!r}), 'rb').read()).hexdigest()",
    )
    content = lfs_hub.files[name]
    etag = hashlib.sha256(content).hexdigest()
    assert result == {"ok": True, "value": etag}
    # The client saw its body cut short, resumed with Range (206) from a second, whole fill.
    route = "/{org}/{name}/resolve/{rev}/{path}"
    assert running.metric("tokensidecar_gateway_requests_total", route=route, code="206") == 1
    assert running.metric("tokensidecar_gateway_fills_total", result="short") == 1
    assert running.metric("tokensidecar_gateway_fills_total", result="complete") == 1
    assert (tmp_path / "cache" / "blobs" / etag).read_bytes() == content


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("HfApi().model_info('acme/other-model')", "RepositoryNotFoundError"),
        (f"HfApi().model_info({REPO!r}, revision='no-such-branch')", "RevisionNotFoundError"),
        (f"hf_hub_download({REPO!r}, 'no-such-file.txt')", "RemoteEntryNotFoundError"),
    ],
)
def test_upstream_errors_raise_the_clients_usual_exceptions(
    through: tuple[RunningGateway, Path], tmp_path: Path, expression: str, error: str
) -> None:
    running, token_path = through
    if "other-model" in expression:
        assert running.gateway is not None
        running.gateway.gatekeeper.grants.add(("team-a/predictor", "acme/other-model"))  # type: ignore[attr-defined]
    result = _download(running, token_path, tmp_path / "home", expression)
    assert result == {"ok": False, "error": error, "message": result.get("message")}


def test_gated_repo_raises_gated_repo_error(tmp_path: Path) -> None:
    # A gated repository's metadata is public; its files answer 403 GatedRepo to a token
    # whose access was not granted (hub-docs models-gated.md).
    with serve_in_thread(HubStandIn(files=FILES, lfs_files=LFS, gated=True)) as hub:
        credentials = StaticCredentials({"default": hub.issue_token(gated_access=False)})
        with gateway_for(hub.url, tmp_path, credentials=credentials) as (running, _, token_path):
            info = _download(running, token_path, tmp_path / "home", f"HfApi().model_info({REPO!r}).id")
            result = _download(
                running, token_path, tmp_path / "home", f"hf_hub_download({REPO!r}, {sorted(FILES)[0]!r})"
            )
    assert info["ok"] is True, info
    assert result["ok"] is False and result["error"] == "GatedRepoError", result


def test_denied_caller_gets_what_the_hub_gives_a_stranger_even_on_a_cache_hit(
    through: tuple[RunningGateway, Path], tmp_path: Path
) -> None:
    running, token_path = through
    warm = _download(running, token_path, tmp_path / "home", f"snapshot_download({REPO!r})")
    assert warm["ok"], warm
    assert running.gateway is not None
    running.gateway.gatekeeper.add("sa-token-team-b", namespace="team-b", service_account="x", repos=())  # type: ignore[attr-defined]
    other = projected_token(tmp_path / "projected-b", "sa-token-team-b")
    for expression in (f"HfApi().model_info({REPO!r})", f"hf_hub_download({REPO!r}, 'config.json')"):
        denied = run_client(
            expression, endpoint=running.url, token_path=other, home=tmp_path / "home-b", setup=HUB
        )
        assert denied["ok"] is False and denied["error"] == "RepositoryNotFoundError", denied
    anonymous = run_client(
        f"HfApi().model_info({REPO!r})",
        endpoint=running.url,
        token_path=None,
        home=tmp_path / "h",
        setup=HUB,
        env={"HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"},
    )
    assert anonymous["ok"] is False and anonymous["error"] == "RepositoryNotFoundError", anonymous
    bad = projected_token(tmp_path / "projected-bad", "not-a-token")
    invalid = run_client(
        f"HfApi().model_info({REPO!r})", endpoint=running.url, token_path=bad, home=tmp_path / "h2", setup=HUB
    )
    assert invalid["ok"] is False and "401" in invalid["message"], invalid


def test_whoami_names_the_workload(through: tuple[RunningGateway, Path], tmp_path: Path) -> None:
    running, token_path = through
    result = _download(running, token_path, tmp_path / "home", "HfApi().whoami()['name']")
    assert result == {"ok": True, "value": "system:serviceaccount:team-a:predictor"}

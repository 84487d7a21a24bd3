"""The cache under load and faults, in front of the Hub stand-in: single flight, streaming
to every waiter, verification, eviction that spares files in use, a full disk, revisions."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.gateway.harness import AllowList, Clock, RunningGateway, StaticCredentials, gateway_for
from tokensidecar.demo.hub import HubStandIn, serve_in_thread

REPO = "acme/private-model"
BIG = "weights/model.safetensors"
FILES = {
    "config.json": b'{"architectures": ["TinyModel"]}\n',
    BIG: hashlib.sha256(b"seed").digest() * (8 * 1024 * 1024 // 32),  # 8 MiB, LFS
    "weights/other.safetensors": b"\x07" * (3 * 1024 * 1024),  # 3 MiB, LFS
}
LFS = (BIG, "weights/other.safetensors")
AUTH = {"Authorization": "Bearer sa-token-team-a"}


@pytest.fixture
def hub() -> Iterator[HubStandIn]:
    with serve_in_thread(HubStandIn(files=FILES, lfs_files=LFS)) as started:
        yield started


def _gateway(
    hub: HubStandIn, tmp_path: Path, **kwargs: Any
) -> contextlib.AbstractContextManager[tuple[RunningGateway, AllowList, Path]]:
    return gateway_for(
        hub.url, tmp_path, credentials=StaticCredentials({"default": hub.issue_token()}), **kwargs
    )


def _body_gets(hub: HubStandIn) -> int:
    return sum(1 for method, _, _ in hub.cdn_requests if method == "GET")


async def _get(session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> bytes:
    async with session.get(url, headers={**AUTH, **(headers or {})}) as response:
        assert response.status in (200, 206), response.status
        return await response.read()


def test_100_concurrent_cold_clients_cost_one_upstream_download(hub: HubStandIn, tmp_path: Path) -> None:
    hub.stall_next_body(1, after=1024 * 1024, delay=1.0)  # every client arrives mid-download
    with _gateway(hub, tmp_path) as (running, _, _):
        url = f"{running.url}/{REPO}/resolve/main/{BIG}"

        async def clients() -> list[bytes]:
            async with aiohttp.ClientSession() as session:
                return await asyncio.gather(*(_get(session, url) for _ in range(100)))

        bodies = asyncio.run(clients())
        assert all(body == FILES[BIG] for body in bodies)
        assert _body_gets(hub) == 1
        assert [p for m, p in hub.requests if "/resolve/" in p] == [f"/{REPO}/resolve/main/{BIG}"] * 1 + [
            f"/{REPO}/resolve/{hub.commit_sha}/{BIG}"
        ]
        assert running.metric("tokensidecar_gateway_fills_total", result="complete") == 1


def test_a_client_that_disconnects_does_not_cancel_the_download_for_others(
    hub: HubStandIn, tmp_path: Path
) -> None:
    hub.stall_next_body(1, after=1024 * 1024, delay=1.0)
    with _gateway(hub, tmp_path) as (running, _, _):
        url = f"{running.url}/{REPO}/resolve/main/{BIG}"

        async def scenario() -> bytes:
            async with aiohttp.ClientSession() as session:
                quitter = await session.get(url, headers=AUTH)
                await quitter.content.readexactly(1024)
                quitter.close()  # gone, mid-fill
                return await _get(session, url)

        assert asyncio.run(scenario()) == FILES[BIG]
        assert _body_gets(hub) == 1
        etag = hashlib.sha256(FILES[BIG]).hexdigest()
        assert (tmp_path / "cache" / "blobs" / etag).read_bytes() == FILES[BIG]


def test_a_corrupt_upstream_body_is_never_served_whole_nor_cached(hub: HubStandIn, tmp_path: Path) -> None:
    hub.corrupt_next_body(1)
    with _gateway(hub, tmp_path) as (running, _, _):
        url = f"{running.url}/{REPO}/resolve/main/{BIG}"

        async def first() -> int:
            async with aiohttp.ClientSession() as session, session.get(url, headers=AUTH) as response:
                received = 0
                with pytest.raises(aiohttp.ClientPayloadError):
                    async for chunk in response.content.iter_any():
                        received += len(chunk)
                return received

        received = asyncio.run(first())
        assert received < len(FILES[BIG])  # the last byte was withheld, then the body cut
        assert running.metric("tokensidecar_gateway_fills_total", result="corrupt") == 1
        assert list((tmp_path / "cache" / "blobs").iterdir()) == []
        assert list((tmp_path / "cache" / "partial").iterdir()) == []

        async def second() -> bytes:
            async with aiohttp.ClientSession() as session:
                return await _get(session, url)

        assert asyncio.run(second()) == FILES[BIG]


def test_range_from_a_fill_in_progress_is_byte_exact(hub: HubStandIn, tmp_path: Path) -> None:
    hub.stall_next_body(1, after=2 * 1024 * 1024, delay=1.0)
    with _gateway(hub, tmp_path) as (running, _, _):
        url = f"{running.url}/{REPO}/resolve/main/{BIG}"

        async def scenario() -> list[bytes]:
            async with aiohttp.ClientSession() as session:
                whole = asyncio.create_task(_get(session, url))
                await asyncio.sleep(0.3)
                parts = await asyncio.gather(
                    _get(session, url, {"Range": "bytes=100-199"}),
                    _get(session, url, {"Range": "bytes=3000000-"}),
                )
                return [await whole, *parts]

        whole, early, late = asyncio.run(scenario())
        assert whole == FILES[BIG]
        assert early == FILES[BIG][100:200]
        assert late == FILES[BIG][3000000:]
        assert _body_gets(hub) == 1


def test_eviction_spares_a_file_being_read_and_takes_the_least_recently_used(
    hub: HubStandIn, tmp_path: Path
) -> None:
    size = len(FILES[BIG]) + len(FILES["weights/other.safetensors"]) + 10  # no room for a third
    with _gateway(hub, tmp_path, cache_size=size) as (running, _, _):
        big, other, small = (
            f"{running.url}/{REPO}/resolve/main/{name}"
            for name in (BIG, "weights/other.safetensors", "config.json")
        )
        blobs = tmp_path / "cache" / "blobs"
        big_blob = blobs / hashlib.sha256(FILES[BIG]).hexdigest()

        async def scenario() -> None:
            async with aiohttp.ClientSession() as session:
                assert await _get(session, big) == FILES[BIG]
                assert await _get(session, other) == FILES["weights/other.safetensors"]
                # A slow reader holds the big file, least recently used, while a miss needs room.
                reader = await session.get(big, headers=AUTH)
                await reader.content.readexactly(64 * 1024)
                assert await _get(session, small) == FILES["config.json"]
                assert big_blob.exists()  # in use: spared; the other one went
                assert running.metric("tokensidecar_gateway_cache_evictions_total") == 1
                rest = await reader.content.read()
                assert len(rest) + 64 * 1024 == len(FILES[BIG])
                reader.close()

        asyncio.run(scenario())


def test_a_full_disk_still_serves_the_file_from_upstream_and_caches_nothing(
    hub: HubStandIn, tiny_tmpfs: Path
) -> None:
    # 64 KiB of disk, a 3 MiB file: the fill fails with ENOSPC partway.
    gatekeeper = AllowList()
    gatekeeper.add("sa-token-team-a", namespace="team-a", service_account="predictor", repos=(REPO,))
    credentials = StaticCredentials({"default": hub.issue_token()})
    with RunningGateway(
        upstream=hub.url, cache_dir=tiny_tmpfs, gatekeeper=gatekeeper, credentials=credentials
    ) as full:
        url = f"{full.url}/{REPO}/resolve/main/weights/other.safetensors"

        async def scenario() -> bytes:
            async with aiohttp.ClientSession() as session:
                return await _get(session, url)

        assert asyncio.run(scenario()) == FILES["weights/other.safetensors"]
        assert full.metric("tokensidecar_gateway_fills_total", result="local") == 1
        assert list((tiny_tmpfs / "blobs").iterdir()) == []
        assert list((tiny_tmpfs / "partial").iterdir()) == []


def test_branches_follow_the_ttl_and_outages_serve_stale_and_pinned(hub: HubStandIn, tmp_path: Path) -> None:
    import httpx2

    clock = Clock()
    with _gateway(hub, tmp_path, revision_ttl=300, stale_if_error=3600, clock=clock) as (running, _, _):
        info = f"{running.url}/api/models/{REPO}/revision/main"
        first = httpx2.get(info, headers=AUTH).json()["sha"]
        pinned = f"{running.url}/{REPO}/resolve/{first}/config.json"
        assert httpx2.get(pinned, headers=AUTH).content == FILES["config.json"]
        second = hub.push({**FILES, "config.json": b"{}\n"})
        clock.now += 299
        assert httpx2.get(info, headers=AUTH).json()["sha"] == first  # within the TTL
        clock.now += 2
        assert httpx2.get(info, headers=AUTH).json()["sha"] == second  # asked again
        requests = len(hub.requests)
        hub.fail_next(1000, status=503)
        clock.now += 301  # past the TTL: only stale-if-error can answer
        stale = httpx2.get(info, headers=AUTH)
        assert stale.status_code == 200 and stale.json()["sha"] == second
        assert len(hub.requests) > requests  # it did ask upstream first
        assert httpx2.get(pinned, headers=AUTH).content == FILES["config.json"]
        head = httpx2.head(pinned, headers=AUTH)
        assert head.status_code == 200 and head.headers["X-Repo-Commit"] == first
        never_seen = httpx2.get(f"{running.url}/api/models/{REPO}/revision/v9", headers=AUTH)
        assert never_seen.status_code == 503
        clock.now += 3600  # past the stale-if-error window too
        assert httpx2.get(info, headers=AUTH).status_code == 503


def test_without_a_valid_upstream_token_hits_are_served_and_misses_wait(
    hub: HubStandIn, tmp_path: Path
) -> None:
    import httpx2

    credentials = StaticCredentials({"default": hub.issue_token()})
    with gateway_for(hub.url, tmp_path, credentials=credentials) as (running, _, _):
        pinned = f"{running.url}/{REPO}/resolve/{hub.commit_sha}"
        assert httpx2.get(f"{pinned}/config.json", headers=AUTH).status_code == 200
        credentials.values.clear()  # the credential's refresher has nothing valid
        requests = len(hub.requests)
        assert httpx2.get(f"{pinned}/config.json", headers=AUTH).content == FILES["config.json"]
        miss = httpx2.get(f"{pinned}/{BIG}", headers=AUTH)
        assert miss.status_code == 503 and "Retry-After" in miss.headers
        assert len(hub.requests) == requests  # nothing was asked anonymously


def test_a_hub_asking_to_slow_down_on_a_head_has_its_retry_after_passed_on(
    hub: HubStandIn, tmp_path: Path
) -> None:
    # A 429 with Retry-After to the gateway's HEAD of a file it has never seen: the caller
    # gets the Hub's own wait, as it does for an API call, not a guess of the gateway's.
    import httpx2

    credentials = StaticCredentials({"default": hub.issue_token()})
    with gateway_for(hub.url, tmp_path, credentials=credentials) as (running, _, _):
        hub.fail_next(1, status=429, path_prefix=f"/{REPO}/resolve")
        head = httpx2.head(f"{running.url}/{REPO}/resolve/{hub.commit_sha}/{BIG}", headers=AUTH)
    assert head.status_code == 429
    assert head.headers.get("Retry-After") == "1"

"""The ``file`` source: every way a mounted file changes is seen by ``watch()`` within ~300 ms
— an in-place write, a rename over it, and kubelet's ``..data`` symlink swap, which is how
a projected Secret volume is updated and where naive file watchers go stale."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tokensidecar.config import ConfigError, resolve
from tokensidecar.sidecar.settings import sidecar_settings
from tokensidecar.sources import SourceError, build_source
from tokensidecar.sources.file import FileSource
from tokensidecar.sources.settings import resolve_source
from tokensidecar.token import Token

SEEN_WITHIN = 0.3  # seconds; the poll is 100 ms


class Watch:
    """Consumes ``source.watch()`` in a task, as the refresher does, into a queue.

    (Cancelling ``anext()`` of an async generator on a timeout would close the generator,
    so the test reads the queue with a timeout instead.)
    """

    def __init__(self, source: FileSource) -> None:
        self.events: asyncio.Queue[Token | SourceError] = asyncio.Queue()
        self.task = asyncio.create_task(self._pump(source.watch()))

    async def _pump(self, events: AsyncIterator[Token | SourceError]) -> None:
        async for event in events:
            self.events.put_nowait(event)

    async def next(self, *, timeout: float = SEEN_WITHIN) -> Token | SourceError:
        return await asyncio.wait_for(self.events.get(), timeout=timeout)

    async def next_token(self, value: str) -> float:
        """Wait for a Token event with ``value``; return how long it took.

        An in-place write is seen as truncate-then-write, so an intermediate event (an
        empty token) may come first; only the final value has to arrive within the bound.
        """
        started = time.monotonic()
        while True:
            remaining = SEEN_WITHIN - (time.monotonic() - started)
            event = await self.next(timeout=max(remaining, 0.001))
            if isinstance(event, Token) and event.value.strip() == value:
                return time.monotonic() - started

    async def started(self) -> None:
        """Let the watch take its first look at the file before the test changes it."""
        await asyncio.sleep(0.15)
        assert self.events.empty()

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def _rename_over(path: Path, value: str) -> None:
    staged = path.with_name(f".{path.name}.staged")
    staged.write_text(value)
    staged.replace(path)


class KubeletVolume:
    """A Secret volume laid out and updated the way kubelet's AtomicWriter does it:
    ``..<timestamp>/token`` holds the data, ``..data`` points at the current timestamp
    directory, ``token`` points at ``..data/token``; an update writes a new timestamp
    directory, renames a fresh symlink over ``..data`` and removes the old directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        root.mkdir(parents=True, exist_ok=True)

    @property
    def token_path(self) -> Path:
        return self.root / "token"

    def write(self, value: str) -> None:
        self.generation += 1
        stamp = self.root / f"..2026_01_01_00_00_{self.generation:02d}.{self.generation:09d}"
        stamp.mkdir()
        (stamp / "token").write_text(value)
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        tmp_link = self.root / "..data_tmp"
        os.symlink(stamp.name, tmp_link)
        os.rename(tmp_link, data)  # the atomic swap
        if not self.token_path.is_symlink():
            os.symlink("..data/token", self.token_path)
        if old is not None:
            for leftover in (self.root / old).iterdir():
                leftover.unlink()
            (self.root / old).rmdir()


@pytest.fixture
async def watching() -> AsyncIterator[list[Watch]]:
    """Watches a test opens, stopped afterwards."""
    opened: list[Watch] = []
    yield opened
    for watch in opened:
        await watch.stop()


def _watch(source: FileSource, opened: list[Watch]) -> Watch:
    watch = Watch(source)
    opened.append(watch)
    return watch


async def test_fetch_reads_the_token_and_its_metadata(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("hf_filesourcetoken01\n")
    token = await FileSource(path=path).fetch()
    assert token.value.strip() == "hf_filesourcetoken01"
    assert token.source == "file"
    assert token.version == str(int(path.stat().st_mtime))
    assert token.expires_at is None
    assert "hf_filesourcetoken01" not in repr(token)


async def test_in_place_write_is_seen(tmp_path: Path, watching: list[Watch]) -> None:
    path = tmp_path / "token"
    path.write_text("hf_inplacefirst00001")
    events = _watch(FileSource(path=path), watching)
    await events.started()
    for value in ("hf_inplacesecond0002", "hf_inplacethird3", "hf_inplacefourth00000000004"):
        with open(path, "r+") as handle:  # same inode, rewritten
            handle.truncate(0)
            handle.write(value)
        assert await events.next_token(value) < SEEN_WITHIN


async def test_rename_over_is_seen(tmp_path: Path, watching: list[Watch]) -> None:
    path = tmp_path / "token"
    path.write_text("hf_renamefirst000001")
    events = _watch(FileSource(path=path), watching)
    await events.started()
    for value in ("hf_renamesecond00002", "hf_renamethird000003"):  # same size each time
        _rename_over(path, value)
        assert await events.next_token(value) < SEEN_WITHIN


async def test_kubelet_data_symlink_swap_is_seen(tmp_path: Path, watching: list[Watch]) -> None:
    volume = KubeletVolume(tmp_path / "secret-volume")
    volume.write("hf_kubeletfirst00001")
    source = FileSource(path=volume.token_path)
    assert (await source.fetch()).value == "hf_kubeletfirst00001"
    events = _watch(source, watching)
    await events.started()
    for n in range(2, 6):
        value = f"hf_kubeletswap{n:06d}"  # same length: only the inode tells them apart
        volume.write(value)
        assert await events.next_token(value) < SEEN_WITHIN
    assert os.readlink(volume.root / "..data").startswith("..2026_")
    assert len(list(volume.root.glob("..2026_*"))) == 1


async def test_deleted_file_is_a_source_error_and_its_return_is_seen(
    tmp_path: Path, watching: list[Watch]
) -> None:
    path = tmp_path / "token"
    path.write_text("hf_deletedlater00001")
    source = FileSource(path=path)
    events = _watch(source, watching)
    await events.started()
    path.unlink()
    event = await events.next()
    assert isinstance(event, SourceError)
    assert str(event) == f"{path} does not exist"
    with pytest.raises(SourceError, match="does not exist"):
        await source.fetch()
    path.write_text("hf_cameback000000001")
    assert await events.next_token("hf_cameback000000001") < SEEN_WITHIN


async def test_a_file_that_appears_after_the_watch_started_is_seen(
    tmp_path: Path, watching: list[Watch]
) -> None:
    path = tmp_path / "late" / "token"
    events = _watch(FileSource(path=path), watching)
    await events.started()
    path.parent.mkdir()
    _rename_over(path, "hf_arrivedlate000001")
    assert await events.next_token("hf_arrivedlate000001") < SEEN_WITHIN


async def test_unchanged_file_yields_nothing(tmp_path: Path, watching: list[Watch]) -> None:
    path = tmp_path / "token"
    path.write_text("hf_neverchanges00001")
    events = _watch(FileSource(path=path), watching)
    with pytest.raises(TimeoutError):
        await events.next(timeout=0.5)


async def test_non_ascii_content_is_a_source_error_that_does_not_echo_it(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("hf_tökenmitumlaut01", encoding="utf-8")
    with pytest.raises(SourceError) as caught:
        await FileSource(path=path).fetch()
    assert str(caught.value) == f"{path} does not hold an ASCII token"
    path.write_bytes(b"hf_\xff\xfebinary")
    with pytest.raises(SourceError, match="ASCII"):
        await FileSource(path=path).fetch()


async def test_non_ascii_change_is_reported_by_the_watch(tmp_path: Path, watching: list[Watch]) -> None:
    path = tmp_path / "token"
    path.write_text("hf_asciibefore000001")
    events = _watch(FileSource(path=path), watching)
    await events.started()
    _rename_over(path, "hf_naïve")
    event = await events.next()
    assert isinstance(event, SourceError)
    assert "naïve" not in str(event)


async def test_a_directory_instead_of_a_file_is_a_source_error(tmp_path: Path) -> None:
    (tmp_path / "token").mkdir()
    with pytest.raises(SourceError, match="cannot read"):
        await FileSource(path=tmp_path / "token").fetch()


def test_file_source_requires_its_path_setting() -> None:
    config = resolve(sidecar_settings(), {"source": "file"}, {})
    with pytest.raises(ConfigError, match="TOKENSIDECAR_SOURCE_FILE is required when --source=file"):
        build_source(resolve_source(config))
    config = resolve(sidecar_settings(), {"source": "file", "source_file": "/mnt/secret/token"}, {})
    source = build_source(resolve_source(config))
    assert isinstance(source, FileSource)
    assert source.path == Path("/mnt/secret/token")
    assert source.watchable

"""The blob store: files by content, filled once from upstream, streamed while they arrive.

Layout under the cache directory::

    blobs/<sha256>          complete LFS/Xet files, named by their sha256
    blobs/<git blob id>     complete small files, named by their git blob id
    partial/<id>.<random>   fills in progress (all removed at start: a crash never counts)

A file becomes complete in one ``rename`` after its bytes were checked against the name
(sha256, or sha1 of ``blob <size>\\0<content>``) and fsynced; until then it lives only in
``partial/``. So ``kill -9`` at any point leaves either a verified blob or a partial file
that the next start deletes — never a partial file served as complete.

A :class:`Fill` is one upstream download, shared by every client that wants the file while
it runs (single flight). It runs in its own task, so a client that disconnects cancels only
its own reading. Readers follow it through the filesystem (``pread`` of the partial file up
to the bytes that have arrived), so memory stays one chunk per reader whatever the size.
The last byte is withheld until the content is verified: a client never receives a whole
file whose hash turned out wrong — its download is cut short instead and it retries.

Eviction is least-recently-used over complete blobs, past ``max_bytes``, and skips every
blob that is leased (being served): an eviction never cuts a download.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import shutil
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Literal

import aiohttp

from tokensidecar.gateway.metrics import GatewayMetrics
from tokensidecar.gateway.upstream import FileMeta
from tokensidecar.redact import safe_error

__all__ = ["BlobStore", "Fill", "FillFailed", "Opener"]

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
# Opens the upstream body of a file (the credential is bound in by the caller).
Opener = Callable[[], AbstractAsyncContextManager[aiohttp.ClientResponse]]


class FillFailed(Exception):
    """A fill did not produce a verified file, because of the upstream (``short``,
    ``corrupt``, ``upstream``: no more bytes of it may be sent) or of the cache (``local``:
    disk full, I/O error; the bytes so far were good, so readers may go on upstream)."""

    def __init__(self, reason: str, *, kind: Literal["short", "corrupt", "upstream", "local"]) -> None:
        super().__init__(reason)
        self.kind = kind

    @property
    def local(self) -> bool:
        return self.kind == "local"


class _Digest:
    def __init__(self, meta: FileMeta) -> None:
        self.kind = meta.digest
        self.expected = meta.etag
        self._hash = hashlib.sha256() if self.kind != "git-blob" else hashlib.sha1(usedforsecurity=False)
        if self.kind == "git-blob":
            self._hash.update(b"blob %d\0" % meta.size)

    def update(self, chunk: bytes) -> None:
        if self.kind != "size":
            self._hash.update(chunk)

    def matches(self) -> bool:
        return self.kind == "size" or self._hash.hexdigest() == self.expected


class Fill:
    """One upstream download into ``partial/``; readers follow :attr:`arrived`."""

    def __init__(self, *, meta: FileMeta, partial: Path, final: Path) -> None:
        self.meta = meta
        self.partial = partial
        self.final = final
        self.arrived = 0
        self.state: Literal["running", "complete", "failed"] = "running"
        self.error: FillFailed | None = None
        self._progress = asyncio.Condition()

    async def _advance(self, arrived: int | None = None) -> None:
        async with self._progress:
            if arrived is not None:
                self.arrived = arrived
            self._progress.notify_all()

    def readable(self) -> int:
        """Bytes a reader may send now: all once verified, else all but the last byte."""
        if self.state == "complete":
            return self.meta.size
        return min(self.arrived, self.meta.size - 1)

    async def wait_past(self, position: int) -> int:
        """Wait until more than ``position`` bytes are readable; raises FillFailed."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.state != "running" or self.readable() > position)
        if self.state == "failed" and self.readable() <= position:
            assert self.error is not None
            raise self.error
        if self.state == "failed":
            assert self.error is not None
            if not self.error.local:
                raise self.error  # corrupt or short upstream bytes: stop sending them
        return self.readable()

    async def run(self, *, open_body: Opener, metrics: GatewayMetrics) -> None:
        digest = _Digest(self.meta)
        written = 0
        try:
            fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except OSError as exc:
            await self._fail(FillFailed(f"cannot create a cache file: {exc.strerror}", kind="local"), metrics)
            return
        try:
            async with open_body() as response:
                # Whatever has arrived, not whole chunks: readers get bytes as they come.
                async for chunk in response.content.iter_any():
                    if written + len(chunk) > self.meta.size:
                        raise FillFailed("the upstream sent more bytes than announced", kind="corrupt")
                    digest.update(chunk)
                    try:
                        _write_all(fd, chunk)
                    except OSError as exc:
                        raise FillFailed(
                            f"cannot write the cache file: {exc.strerror}", kind="local"
                        ) from None
                    written += len(chunk)
                    metrics.upstream_bytes.inc(len(chunk))
                    await self._advance(written)
            if written != self.meta.size:
                raise FillFailed(f"short upstream body: {written} of {self.meta.size} bytes", kind="short")
            if not digest.matches():
                raise FillFailed(f"the upstream body does not match its {digest.kind}", kind="corrupt")
            try:
                await asyncio.to_thread(os.fsync, fd)
                os.rename(self.partial, self.final)
                _fsync_directory(self.final.parent)
            except OSError as exc:
                raise FillFailed(f"cannot complete the cache file: {exc.strerror}", kind="local") from None
        except FillFailed as failure:
            await self._fail(failure, metrics)
        except aiohttp.ClientPayloadError as exc:  # the connection died mid-body
            await self._fail(FillFailed(f"short upstream body: {safe_error(exc)}", kind="short"), metrics)
        except Exception as exc:  # refused, unreachable, timed out
            await self._fail(
                FillFailed(f"upstream download failed: {safe_error(exc)}", kind="upstream"), metrics
            )
        else:
            self.state = "complete"
            metrics.fills.labels(result="complete").inc()
            await self._advance()
        finally:
            os.close(fd)

    async def _fail(self, failure: FillFailed, metrics: GatewayMetrics) -> None:
        with contextlib.suppress(OSError):
            self.partial.unlink()
        self.error, self.state = failure, "failed"
        metrics.fills.labels(result=failure.kind).inc()
        log.warning("cache fill failed", extra={"etag": self.meta.etag, "error": str(failure)})
        await self._advance()


def _write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    def __init__(self, *, directory: Path, max_bytes: int, metrics: GatewayMetrics) -> None:
        self.blobs = directory / "blobs"
        self.partial = directory / "partial"
        self.max_bytes = max_bytes
        self._metrics = metrics
        self._sizes: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self._leases: dict[str, int] = {}
        self._fills: dict[str, Fill] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.blobs.mkdir(parents=True, exist_ok=True)
        # Whatever a crash left half-written is not trusted, ever.
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True, exist_ok=True)
        entries = [
            (e.stat().st_mtime, e.name, e.stat().st_size) for e in os.scandir(self.blobs) if e.is_file()
        ]
        for _, name, size in sorted(entries):
            self._sizes[name] = size
        self._publish_size()

    def _publish_size(self) -> None:
        self._metrics.cache_bytes.set(sum(self._sizes.values()))

    @property
    def used_bytes(self) -> int:
        return sum(self._sizes.values())

    def complete(self, oid: str) -> Path | None:
        """The verified blob ``oid`` if cached; marks it most recently used."""
        if oid not in self._sizes:
            return None
        self._sizes.move_to_end(oid)
        return self.blobs / oid

    @contextlib.contextmanager
    def lease(self, oid: str) -> Iterator[None]:
        """Keep ``oid`` from eviction while it is served."""
        self._leases[oid] = self._leases.get(oid, 0) + 1
        try:
            yield
        finally:
            self._leases[oid] -= 1
            if not self._leases[oid]:
                del self._leases[oid]

    def fill(self, meta: FileMeta, *, open_body: Opener) -> Fill | None:
        """The running fill of ``meta`` or a new one; None when the file cannot be cached
        (larger than the whole cache): the caller then streams it from upstream directly."""
        oid = meta.etag
        running = self._fills.get(oid)
        if running is not None:
            return running
        if meta.size > self.max_bytes or "/" in oid or oid.startswith("."):
            return None
        self._make_room(meta.size)
        fill = Fill(
            meta=meta,
            partial=self.partial / f"{oid}.{secrets.token_hex(4)}",
            final=self.blobs / oid,
        )
        self._fills[oid] = fill
        task = asyncio.create_task(self._run(fill, open_body), name=f"fill-{oid[:12]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fill

    async def _run(self, fill: Fill, open_body: Opener) -> None:
        oid = fill.meta.etag
        with self.lease(oid):
            try:
                await fill.run(open_body=open_body, metrics=self._metrics)
            finally:
                del self._fills[oid]
                if fill.state == "complete":
                    self._sizes[oid] = fill.meta.size
                    self._sizes.move_to_end(oid)
                    self._publish_size()

    def _make_room(self, incoming: int) -> None:
        reserved = sum(f.meta.size for f in self._fills.values())
        excess = self.used_bytes + reserved + incoming - self.max_bytes
        for oid in list(self._sizes):
            if excess <= 0:
                break
            if oid in self._leases:
                continue  # being served: never pulled from under a reader
            size = self._sizes.pop(oid)
            with contextlib.suppress(FileNotFoundError):
                (self.blobs / oid).unlink()
            excess -= size
            self._metrics.cache_evictions.inc()
            log.info("evicted from the cache", extra={"etag": oid, "bytes": size})
        self._publish_size()

    def writable(self) -> tuple[bool, str]:
        """Readiness: can a file be created in the cache right now?"""
        probe = self.partial / f".probe.{secrets.token_hex(4)}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            return False, f"cache directory not writable: {exc.strerror}"
        return True, "ok"

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def read_fill(fill: Fill, *, start: int, end: int) -> AsyncIterator[bytes]:
    """Bytes ``[start, end)`` of a running or finished fill, as they arrive.

    Raises :class:`FillFailed` when the fill fails before ``end``; a local failure leaves
    the bytes sent so far good, and the caller may go on from upstream.
    """
    fd: int | None = None
    position = start
    try:
        while position < end:
            readable = min(await fill.wait_past(position), end)
            if fd is None:
                fd = _open_either(fill)
            while position < readable:
                chunk = os.pread(fd, min(CHUNK, readable - position), position)
                if not chunk:
                    raise FillFailed("the cache file shrank", kind="local")
                position += len(chunk)
                yield chunk
    finally:
        if fd is not None:
            os.close(fd)


def _open_either(fill: Fill) -> int:
    # The partial file becomes the blob by rename (same inode); a reader that comes late
    # finds it under its final name.
    for path in (fill.partial, fill.final):
        with contextlib.suppress(FileNotFoundError):
            return os.open(path, os.O_RDONLY)
    raise FillFailed("the cache file is gone", kind="local")

"""The ``file`` source: a mounted file, e.g. a kubelet-projected Secret volume, watched.

kubelet updates a Secret volume by writing a new timestamped directory and swapping the
``..data`` symlink; the file the pod sees (``token`` → ``..data/token``) is never written
in place. An inotify watch on the file itself goes stale at the first swap (it watches
the old inode), which is the classic bug DESIGN.md warns about. So we resolve the path
again on every check and compare (device, inode, size, mtime) of the *resolved* target:
a symlink swap, a rename over the file and an in-place write are all seen.

The check is a stat every ``POLL_SECONDS`` — a few microseconds of work, no extra
dependency, and it works on every filesystem (inotify does not fire for NFS, FUSE or
some overlay setups). kubelet itself takes 60-90 s to propagate a Secret to the volume,
so a 100 ms poll adds nothing a user can notice.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from tokensidecar.sources import Source, SourceError
from tokensidecar.sources.settings import FileSourceSettings
from tokensidecar.token import Token

__all__ = ["FileSource"]

POLL_SECONDS = 0.1

_Signature = tuple[int, int, int, int] | None


class FileSource(Source):
    kind = "file"
    watchable = True

    def __init__(self, *, path: str | os.PathLike[str], poll_seconds: float = POLL_SECONDS) -> None:
        self.path = Path(path)
        self.poll_seconds = poll_seconds

    @classmethod
    def from_settings(cls, settings: FileSourceSettings) -> FileSource:
        return cls(path=settings.path)

    def _signature(self) -> _Signature:
        try:
            st = os.stat(self.path)  # follows symlinks: the ..data swap changes the target
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self) -> Token:
        try:
            raw = self.path.read_bytes()
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            raise SourceError(f"{self.path} does not exist") from None
        except OSError as exc:
            raise SourceError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            value = raw.decode("ascii")
        except UnicodeDecodeError:
            raise SourceError(f"{self.path} does not hold an ASCII token") from None
        return Token(
            value=value,
            source=self.kind,
            version=str(int(mtime)),
            fetched_at=datetime.now(UTC),
        )

    async def fetch(self) -> Token:
        return await asyncio.to_thread(self._read)

    async def watch(self) -> AsyncIterator[Token | SourceError]:
        seen = self._signature()
        while True:
            await asyncio.sleep(self.poll_seconds)
            current = self._signature()
            if current == seen:
                continue
            seen = current
            try:
                yield await self.fetch()
            except SourceError as exc:
                yield exc

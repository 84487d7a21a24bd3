"""Publishing: the one place that writes the token file and ``token.json``.

A reader (huggingface_hub re-reads ``HF_TOKEN_PATH`` on every Hub request) must see either
the old complete token or the new complete token — never an empty, partial or missing
file, including across a crash of this process and a full filesystem. So each file is
written whole to a temporary file in the same directory, flushed and fsynced, given its
final mode, and then renamed over the old one: ``rename(2)`` within one filesystem is
atomic, and a failure at any step before it leaves the published file untouched (the
temporary file is removed). The directory is fsynced after the rename so the new entry
survives a node crash too.

The token is written before ``token.json``. The two are not swapped together (that would
need kubelet's ``..data`` symlink dance, which breaks readers that open the file by its
path with ``O_NOFOLLOW`` and buys nothing here): the token is what matters, and the
metadata follows it within microseconds. A crash between the two renames leaves
metadata describing the previous token, which the next publish corrects.

The temporary file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` at a random name: it
is always a new inode of ours, never an existing file or a symlink someone planted at a
name they could predict (the old ``.<name>.tmp-<pid>`` with ``O_TRUNC`` wrote through one).
And because the token should never reach a disk, the first publish warns when the
directory is not memory-backed (tmpfs/ramfs, as ``emptyDir{medium: Memory}`` is), reading
the filesystem type from ``/proc/self/mountinfo``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
from pathlib import Path

from tokensidecar.token import Token, validate

__all__ = ["PublishError", "Publisher"]

log = logging.getLogger(__name__)

#: Filesystems whose pages live only in memory: what the token directory should be.
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
_MOUNTINFO = "/proc/self/mountinfo"
_TMP_NAME_ATTEMPTS = 16


def filesystem_type(directory: str | os.PathLike[str]) -> str | None:
    """The type of the filesystem holding ``directory`` (``tmpfs``, ``ext4``...), or None.

    Matched by device number (``major:minor``, field 3 of proc(5) mountinfo) rather than by
    path, so symlinks and bind mounts resolve to the filesystem really underneath. When a
    device is listed more than once, the last entry is the one mounted on top.
    """
    try:
        device = os.stat(directory).st_dev
        lines = Path(_MOUNTINFO).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    wanted = f"{os.major(device)}:{os.minor(device)}"
    for line in reversed(lines):
        mount, separator, filesystem = line.partition(" - ")
        fields = mount.split()
        if separator and len(fields) >= 5 and fields[2] == wanted and filesystem.split():
            return filesystem.split()[0]
    return None


class PublishError(Exception):
    """Writing failed (e.g. ENOSPC); the previously published files are intact."""


class Publisher:
    def __init__(self, *, token_path: str | os.PathLike[str], mode: int = 0o440) -> None:
        self.token_path = Path(token_path)
        # docs/behaviour.md (the token file): "token.json" beside "token"
        # (generally "<name>.json" beside "<name>").
        self.metadata_path = self.token_path.with_name(self.token_path.name + ".json")
        self.mode = mode
        self._published_value: str | None = None
        self._published_metadata: dict[str, object] | None = None
        self._checked_filesystem = False

    def prepare(self) -> None:
        """Create the directory if needed, and sweep temporary files a killed run left."""
        directory = self.token_path.parent
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.glob(".*.tmp-*"):
            with contextlib.suppress(OSError):
                leftover.unlink()

    def publish(self, token: Token) -> bool:
        """Write the token and its metadata; return True if anything on disk changed.

        Raises :class:`PublishError` on any write failure, with the old files intact, and
        :class:`~tokensidecar.token.InvalidToken` before writing anything if the value
        breaks the token rules.
        """
        value = validate(token.value)
        metadata = token.metadata()
        changed = False
        if value != self._published_value:
            try:
                self._write_atomically(self.token_path, value.encode("ascii"))
            except OSError as exc:
                # strerror only: the path is ours and the token is never part of an OSError.
                raise PublishError(f"cannot write {self.token_path}: {exc.strerror}") from None
            self._published_value = value
            changed = True
            if not self._checked_filesystem:
                self._check_memory_backed()
        if metadata != self._published_metadata:
            body = json.dumps(metadata, indent=None, sort_keys=True).encode() + b"\n"
            try:
                self._write_atomically(self.metadata_path, body)
            except OSError as exc:
                # The token is what readers need, and it is on disk: report the stale
                # metadata, don't fail the publish. The next publish writes it again.
                log.warning(
                    "token published, but token.json could not be updated",
                    extra={"path": str(self.metadata_path), "error": exc.strerror},
                )
                return changed
            self._published_metadata = metadata
            changed = True
        return changed

    def _check_memory_backed(self) -> None:
        """Warn (once, when the first token is written) if the directory is on a disk."""
        self._checked_filesystem = True
        directory = self.token_path.parent
        kind = filesystem_type(directory)
        if kind is None:
            log.info(
                "cannot tell whether the token directory is memory-backed", extra={"path": str(directory)}
            )
        elif kind not in MEMORY_FILESYSTEMS:
            log.warning(
                "the token directory is not memory-backed: the token can reach a disk "
                "(mount an emptyDir with medium: Memory, or a tmpfs)",
                extra={"path": str(directory), "filesystem": kind},
            )

    @staticmethod
    def _create_temporary(path: Path) -> tuple[Path, int]:
        """A new file of ours beside ``path``: exclusive, never through a symlink, at a name
        nobody can guess (so nobody can plant anything there first). ``prepare`` sweeps
        the ``.<name>.tmp-*`` pattern after a crash."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for _ in range(_TMP_NAME_ATTEMPTS):
            tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
            try:
                return tmp, os.open(tmp, flags, 0o600)
            except FileExistsError:
                continue  # 64 random bits collided, or someone is guessing: draw again
        raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path))

    def _write_atomically(self, path: Path, content: bytes) -> None:
        directory = path.parent
        tmp, fd = self._create_temporary(path)
        try:
            try:
                view = memoryview(content)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
                os.fchmod(fd, self.mode)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        except OSError:
            pass  # some filesystems refuse fsync on directories; the rename is still atomic
        finally:
            os.close(dir_fd)

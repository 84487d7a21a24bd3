"""Targets: where the rotation job stores a token for the sidecars to read.

A target is read and written with optimistic concurrency, because the job is "safe to run
twice at once" (docs/rotation.md): :meth:`Target.read` returns what is stored together with
the revision it was read at (a Secret's ``resourceVersion``, a KV v2 version), and
:meth:`Target.store` writes only if nothing changed since — otherwise it raises
:class:`StoreConflict` and the job reads again (retrying, or standing down when another
run stored a new token meanwhile). No lock is held anywhere, so a job killed halfway leaves
nothing to clean up.

What is stored besides the token is the overlap bookkeeping: the token it replaced (the
Secret's ``previous`` key; the KV v2 version before the current one), when that happened
(``rotated_at``), and whether the previous token has been revoked already. The expiry
goes where the sidecar's source looks for it (annotation ``tokensidecar.io/expires-at``,
KV v2 ``custom_metadata.expires_at``).
"""

from __future__ import annotations

import abc
import importlib
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

from tokensidecar.redact import fingerprint
from tokensidecar.token import InvalidTime, parse_time

if TYPE_CHECKING:
    from tokensidecar.rotate.settings import TargetSettings
    from tokensidecar.token import Token

__all__ = ["StoreConflict", "StoredToken", "Target", "TargetError", "build_target", "stored_time"]


class TargetError(Exception):
    """The target could not be read or written. The message is redacted and user-facing."""


class StoreConflict(TargetError):
    """Someone else wrote the target since it was read; read again and retry."""


@dataclass(frozen=True)
class StoredToken:
    """What a target holds at one revision. ``current``/``previous`` never show in ``repr``."""

    where: str
    #: Opaque optimistic-concurrency marker; None when the target does not exist yet.
    revision: str | None
    current: str | None = field(default=None, repr=False)
    previous: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None
    #: When ``current`` was stored, i.e. when ``previous`` was rotated out.
    rotated_at: datetime | None = None
    #: Monotonic rotation counter (``tokensidecar.io/version``; the KV v2 version).
    version: int = 0
    #: Fingerprint of the token last revoked by the job, if it is the ``previous`` one.
    previous_revoked: bool = False

    @property
    def exists(self) -> bool:
        return self.revision is not None

    @property
    def current_fingerprint(self) -> str | None:
        return fingerprint(self.current) if self.current else None

    @property
    def previous_fingerprint(self) -> str | None:
        return fingerprint(self.previous) if self.previous else None

    def succeeded_by(
        self,
        token: Token,
        *,
        where: str,
        revision: str,
        expires_at: datetime | None,
        rotated_at: datetime,
        version: int,
    ) -> StoredToken:
        """What a target holds once ``token`` is stored over this: ``token`` current, and
        the token current here kept as previous (the overlap every target offers)."""
        return StoredToken(
            where=where,
            revision=revision,
            current=token.value,
            previous=self.current,
            expires_at=expires_at,
            rotated_at=rotated_at,
            version=version,
        )


def stored_time(text: str | None, *, field: str, name: str, log: logging.Logger) -> datetime | None:
    """A time a target stored (``field`` ``name``: an annotation, a custom_metadata key), or
    None when absent or unusable (``1e20``, garbage): the job then treats it as unknown and
    rotates, which rewrites it, instead of failing every run. Logged to the target's ``log``."""
    try:
        return parse_time(text)
    except InvalidTime as exc:
        log.warning("ignoring a stored time that is not usable", extra={field: name, "reason": str(exc)})
        return None


class Target(abc.ABC):
    """Read and conditionally write the stored token."""

    kind: ClassVar[str]

    @abc.abstractmethod
    async def read(self) -> StoredToken:
        """What is stored now (``revision=None`` when nothing is), or raise :class:`TargetError`."""

    @abc.abstractmethod
    async def store(self, *, token: Token, replacing: StoredToken, rotated_at: datetime) -> StoredToken:
        """Store ``token`` as current and ``replacing.current`` as previous, only if the
        target is still at ``replacing.revision``; raise :class:`StoreConflict` otherwise."""

    @abc.abstractmethod
    async def mark_previous_revoked(self, *, stored: StoredToken, revoked_at: datetime) -> None:
        """Record that ``stored.previous`` was revoked, only if the target is still at
        ``stored.revision``; raise :class:`StoreConflict` otherwise."""

    async def aclose(self) -> None:
        """Release connections and credentials."""


_MODULES = {
    "kubernetes-secret": ("tokensidecar.rotate.secret_target", "SecretTarget"),
    "vault": ("tokensidecar.rotate.vault_target", "VaultTarget"),
}


def build_target(settings: TargetSettings) -> Target:
    """Build the target that resolved ``settings`` describe (:mod:`tokensidecar.rotate.settings`)."""
    module_name, class_name = _MODULES[settings.kind]
    cls = getattr(importlib.import_module(module_name), class_name)
    target: Target = cls.from_settings(settings)
    return target

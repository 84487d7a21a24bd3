"""The ``vault`` target: a KV v2 secret that sidecars with ``--source=vault`` poll.

Each rotation writes a new KV v2 version holding ``{TOKENSIDECAR_KEY: <new>}`` with
``cas`` = the version read, so a concurrent job's write makes this one fail with a
check-and-set conflict instead of silently replacing it; the job then reads again, and
writes on top only if the current token is still the one it read. The previous token is
not copied anywhere: KV v2 keeps it as the version before the current one, which is where
the overlap bookkeeping reads it from, and its "rotated out" time is the current
version's ``created_time``.

KV v2 ``custom_metadata`` belongs to the secret, not to a version, and is written after the
data (:meth:`VaultSession.write_kv`): between the two a reader sees the new token with
the old metadata. So the metadata carries the ``fingerprint`` of the token it describes,
and ``expires_at`` is trusted only when that fingerprint matches the current token.
KV v1 has neither versions nor check-and-set and is refused.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from tokensidecar.backends.vault import (
    METADATA_EXPIRES_AT,
    METADATA_FINGERPRINT,
    METADATA_REVOKED_AT,
    METADATA_REVOKED_FINGERPRINT,
    METADATA_ROTATED_AT,
    UNKNOWN_TIME,
)
from tokensidecar.redact import fingerprint
from tokensidecar.rotate.targets import StoreConflict, StoredToken, Target, TargetError, stored_time
from tokensidecar.token import format_time

if TYPE_CHECKING:
    from tokensidecar.backends.vault import KvPath, KvSecret, VaultSession
    from tokensidecar.rotate.settings import VaultTargetSettings
    from tokensidecar.token import Token

log = logging.getLogger(__name__)

__all__ = ["VaultTarget"]


def _time(text: str | None, *, name: str) -> datetime | None:
    if text == UNKNOWN_TIME:
        return None
    return stored_time(text, field="custom_metadata", name=name, log=log)


class VaultTarget(Target):
    kind = "vault"

    def __init__(self, *, session: VaultSession, path: KvPath, key: str) -> None:
        self.session = session
        self.path = path
        self.key = key
        self.where = f"Vault {path}"

    @classmethod
    def from_settings(cls, settings: VaultTargetSettings) -> VaultTarget:
        from tokensidecar.backends.vault import VaultSession

        return cls(session=VaultSession.from_settings(settings.vault), path=settings.path, key=settings.key)

    async def _read_version(self, version: int) -> KvSecret | None:
        from tokensidecar.backends.vault import VaultError

        try:
            return await self.session.read_kv(self.path, version=version)
        except VaultError as exc:
            if exc.status == 404:  # deleted or destroyed version: nothing to read
                return None
            raise TargetError(str(exc)) from None

    async def read(self) -> StoredToken:
        from tokensidecar.backends.vault import VaultError

        try:
            metadata = await self.session.read_kv_metadata(self.path)
        except VaultError as exc:
            if exc.status == 404:
                return StoredToken(where=self.where, revision=None)
            raise TargetError(str(exc)) from None
        version = metadata.current_version
        if version <= 0:
            return StoredToken(where=self.where, revision=None)
        latest = await self._read_version(version)
        before = await self._read_version(version - 1) if version > 1 else None
        current = _string(latest.data.get(self.key)) if latest else None
        previous = _string(before.data.get(self.key)) if before else None
        custom = metadata.custom_metadata
        describes_current = current is not None and custom.get(METADATA_FINGERPRINT) == fingerprint(current)
        revoked = previous is not None and custom.get(METADATA_REVOKED_FINGERPRINT) == fingerprint(previous)
        return StoredToken(
            where=self.where,
            revision=str(version),
            current=current,
            previous=previous,
            expires_at=_time(custom.get(METADATA_EXPIRES_AT), name=METADATA_EXPIRES_AT)
            if describes_current
            else None,
            rotated_at=latest.created_time if latest else None,
            version=version,
            previous_revoked=revoked,
        )

    async def store(self, *, token: Token, replacing: StoredToken, rotated_at: datetime) -> StoredToken:
        from tokensidecar.backends.vault import VaultCasConflict, VaultError

        expires_at = token.expiry()
        cas = int(replacing.revision) if replacing.revision is not None else 0
        try:
            version = await self.session.write_kv(
                self.path,
                {self.key: token.value},
                cas=cas,
                custom_metadata={
                    METADATA_EXPIRES_AT: format_time(expires_at) or UNKNOWN_TIME,
                    METADATA_FINGERPRINT: token.fingerprint,
                    METADATA_ROTATED_AT: format_time(rotated_at) or UNKNOWN_TIME,
                },
            )
        except VaultCasConflict:
            raise StoreConflict(f"check-and-set: {self.path} is no longer at version {cas}") from None
        except VaultError as exc:
            raise TargetError(str(exc)) from None
        return replacing.succeeded_by(
            token,
            where=self.where,
            revision=str(version),
            expires_at=expires_at,
            # Vault's created_time of the new version is within milliseconds of this.
            rotated_at=rotated_at,
            version=version,
        )

    async def mark_previous_revoked(self, *, stored: StoredToken, revoked_at: datetime) -> None:
        from tokensidecar.backends.vault import VaultError

        if not stored.previous_fingerprint:
            return
        try:
            await self.session.write_kv_metadata(
                self.path,
                {
                    METADATA_REVOKED_FINGERPRINT: stored.previous_fingerprint,
                    METADATA_REVOKED_AT: format_time(revoked_at) or UNKNOWN_TIME,
                },
            )
        except VaultError as exc:
            raise TargetError(str(exc)) from None

    async def aclose(self) -> None:
        await self.session.aclose()


def _string(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None

"""The ``vault`` source: the token is a key of a Vault/OpenBao KV secret, polled.

Vault has no watch API for KV, so this source is polled by the refresher every
``TOKENSIDECAR_REFRESH_INTERVAL`` (earlier when the token's expiry is near). To keep a
poll cheap, a KV v2 fetch first reads the secret's *metadata* (current version and
``custom_metadata``, no secret on the wire) and reads the data only when the version
moved: its number *and* its creation time, because a secret deleted and recreated starts
again at version 1. Otherwise it returns the previous token with the expiry from the
fresh metadata, so an ``expires_at`` updated after the data (the rotation job writes data
first, then metadata) is still seen. When the policy does not allow reading metadata,
the source says so once and reads the data at every poll instead. KV v1 has no
versions: every poll reads the data.

``custom_metadata.expires_at`` is trusted only when ``custom_metadata.fingerprint`` (what
the rotation job writes beside it) names the token read, or, with no fingerprint, when it
is in the future: an expiry left over from an older token must not refuse a new one (the
full rule is in :mod:`tokensidecar.sources.expiry`). Those keys are the KV layout declared
in :mod:`tokensidecar.backends.vault`, the one the rotation job writes.

Login, token renewal, re-login and revocation belong to :class:`~tokensidecar.backends.vault.VaultSession`.
Its errors speak of Vault (:class:`~tokensidecar.backends.vault.VaultError`: unavailable or refused);
this source turns them into :class:`~tokensidecar.sources.SourceError` at its boundary,
with the same message and retryability, so the rotation job, which uses the same session,
never sees a "source" error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

from tokensidecar.backends.vault import (
    METADATA_EXPIRES_AT,
    METADATA_FINGERPRINT,
    KvPath,
    KvSecret,
    VaultError,
    VaultPermissionDenied,
    VaultSession,
)
from tokensidecar.sources import Source, SourceError
from tokensidecar.sources.expiry import StoredExpiry
from tokensidecar.token import Token

if TYPE_CHECKING:
    from tokensidecar.sources.settings import VaultSourceSettings

__all__ = ["VaultSource"]

log = logging.getLogger(__name__)


class VaultSource(Source):
    kind: ClassVar[str] = "vault"
    watchable: ClassVar[bool] = False

    def __init__(self, *, session: VaultSession, path: KvPath, key: str, kv_version: int = 2) -> None:
        self.session = session
        self.path = path
        self.key = key
        self.kv_version = kv_version
        self._last: Token | None = None
        #: created_time of the KV v2 version behind ``_last``: with the version number,
        #: it tells a new secret that restarted at version 1 from the one we have.
        self._last_created: datetime | None = None
        self._metadata_allowed = kv_version == 2
        self._stored_expiry = StoredExpiry(
            where=str(path), field=f"custom_metadata.{METADATA_EXPIRES_AT}", log=log
        )

    @classmethod
    def from_settings(cls, settings: VaultSourceSettings) -> VaultSource:
        return cls(
            session=VaultSession.from_settings(settings.vault),
            path=settings.path,
            key=settings.key,
            kv_version=settings.kv_version,
        )

    async def fetch(self) -> Token:
        try:
            return await self._read_through_session()
        except VaultError as exc:
            raise SourceError(str(exc), retryable=exc.retryable) from None

    async def _read_through_session(self) -> Token:
        """The current token: the previous one when KV v2 metadata says it has not moved."""
        if self._metadata_allowed and self._last is not None:
            try:
                metadata = await self.session.read_kv_metadata(self.path)
            except VaultPermissionDenied:
                # Policies often grant only <mount>/data/<path>; the check is an
                # optimisation, so fall back to reading the data at every poll.
                log.warning(
                    "no read access to the secret's metadata; reading its data at every poll",
                    extra={"path": str(self.path)},
                )
                self._metadata_allowed = False
            else:
                unchanged = (
                    str(metadata.current_version) == self._last.version
                    and metadata.current_version_created_time is not None
                    and metadata.current_version_created_time == self._last_created
                )
                if unchanged:
                    expires_at = self._expiry(metadata.custom_metadata, token_value=self._last.value)
                    if expires_at != self._last.expires_at:
                        self._last = self._last.with_expiry(expires_at)
                    return self._last
        secret = await self.session.read_kv(self.path, kv_version=self.kv_version)
        self._last = self._token_from(secret)
        self._last_created = secret.created_time
        return self._last

    async def aclose(self) -> None:
        await self.session.aclose()

    def _token_from(self, secret: KvSecret) -> Token:
        value = secret.data.get(self.key)
        if value is None:
            keys = ", ".join(sorted(str(k) for k in secret.data)) or "none"
            raise SourceError(f"{self.path} has no key {self.key!r} (keys: {keys}); set TOKENSIDECAR_KEY")
        if not isinstance(value, str):
            raise SourceError(f"{self.path} key {self.key!r} is a {type(value).__name__}, not a string")
        return Token(
            value=value,
            source=self.kind,
            version=secret.token_version,
            expires_at=self._expiry(secret.custom_metadata, token_value=value),
        )

    def _expiry(self, custom_metadata: Mapping[str, str], *, token_value: str) -> datetime | None:
        return self._stored_expiry.for_token(
            token_value,
            expires_at=custom_metadata.get(METADATA_EXPIRES_AT),
            written_for=custom_metadata.get(METADATA_FINGERPRINT),
        )

"""The ``kubernetes-secret`` target: the rotating Secret that sidecars watch.

The Secret's layout (data keys, annotations, base64) is :mod:`tokensidecar.backends.secret`,
the one the ``kubernetes-secret`` source reads.

Every write is a merge PATCH that carries the ``metadata.resourceVersion`` the job read:
the API server refuses it with 409 Conflict when anybody wrote the Secret in between, and
the job reads again: it retries on top when only metadata changed, and stands down when
another run stored a new token (see :mod:`tokensidecar.rotate.job`) — two jobs racing both
finish, exactly one rotates, and no token is lost.
Creating an absent Secret is a POST, whose race loser gets 409 AlreadyExists, handled the
same way. The blocking official client runs in :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tokensidecar.backends import secret as layout
from tokensidecar.backends.secret import (
    EXPIRES_AT,
    FINGERPRINT,
    PREVIOUS_FINGERPRINT,
    PREVIOUS_KEY,
    REVOKED_AT,
    REVOKED_FINGERPRINT,
    ROTATED_AT,
    VERSION,
)
from tokensidecar.redact import fingerprint
from tokensidecar.rotate.targets import StoreConflict, StoredToken, Target, TargetError, stored_time
from tokensidecar.token import format_time

if TYPE_CHECKING:
    from tokensidecar.rotate.settings import SecretTargetSettings
    from tokensidecar.token import Token

log = logging.getLogger(__name__)

__all__ = ["SecretTarget"]

MERGE_PATCH = "application/merge-patch+json"


def _decode(encoded: str | None) -> str | None:
    """The stored token, stripped; None when absent or not base64 of UTF-8."""
    if not encoded:
        return None
    try:
        return layout.decode(encoded).strip() or None
    except (binascii.Error, UnicodeDecodeError):
        return None


def _time(text: str | None, *, name: str) -> datetime | None:
    return stored_time(text, field="annotation", name=name, log=log)


class SecretTarget(Target):
    kind = "kubernetes-secret"

    def __init__(self, *, api_client: Any, name: str, namespace: str, key: str) -> None:
        if key == PREVIOUS_KEY:  # SecretTargetSettings refuses it as a setting
            raise ValueError(f"{PREVIOUS_KEY!r} is reserved for the previous token")
        self.api_client = api_client
        self.name = name
        self.namespace = namespace
        self.key = key
        self.where = f"Secret {namespace}/{name}"

    @classmethod
    def from_settings(cls, settings: SecretTargetSettings) -> SecretTarget:
        from tokensidecar.backends import kube

        return cls(
            api_client=kube.api_client(configuration=settings.kubernetes.configuration),
            name=settings.name,
            namespace=settings.namespace,
            key=settings.key,
        )

    def _core(self) -> Any:
        from tokensidecar.backends import kube

        return kube.core_v1(self.api_client)

    async def _call(self, what: str, request: Any, *args: Any, **kwargs: Any) -> Any:
        """One API request in a thread; API errors become redacted :class:`TargetError`s."""
        from kubernetes.client.exceptions import ApiException

        from tokensidecar.backends import kube
        from tokensidecar.backends.kube import describe_error

        try:
            return await asyncio.to_thread(request, *args, _request_timeout=kube.REQUEST_TIMEOUT, **kwargs)
        except ApiException as exc:
            if exc.status == 409:
                reason = "it was created meanwhile" if "AlreadyExists" in str(exc.body) else "resourceVersion"
                raise StoreConflict(f"409 Conflict ({reason})") from None
            if exc.status == 403:
                raise TargetError(
                    f"cannot {what} {self.where}: forbidden (the job's Role must allow it on this Secret)"
                ) from None
            raise TargetError(describe_error(exc, action=f"cannot {what} {self.where}")) from None
        except Exception as exc:  # urllib3 connection errors, timeouts
            raise TargetError(describe_error(exc, action=f"cannot {what} {self.where}")) from None

    async def read(self) -> StoredToken:
        from kubernetes.client.exceptions import ApiException

        from tokensidecar.backends import kube
        from tokensidecar.backends.kube import describe_error

        try:
            secret = await asyncio.to_thread(
                self._core().read_namespaced_secret,
                self.name,
                self.namespace,
                _request_timeout=kube.REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status == 404:
                return StoredToken(where=self.where, revision=None)
            raise TargetError(describe_error(exc, action=f"cannot read {self.where}")) from None
        except Exception as exc:  # urllib3 connection errors, timeouts
            raise TargetError(describe_error(exc, action=f"cannot read {self.where}")) from None
        data = secret.data or {}
        annotations = (secret.metadata.annotations if secret.metadata else None) or {}
        current = _decode(data.get(self.key))
        previous = _decode(data.get(PREVIOUS_KEY))
        try:
            version = int(annotations.get(VERSION, "0"))
        except ValueError:
            version = 0
        # The expiry annotation describes the token it was written with; a token put there
        # by hand (kubectl edit) without updating it would otherwise look fresh.
        written_for = annotations.get(FINGERPRINT)
        expires_at = _time(annotations.get(EXPIRES_AT), name=EXPIRES_AT)
        if current and written_for and written_for != fingerprint(current):
            expires_at = None
        return StoredToken(
            where=self.where,
            revision=secret.metadata.resource_version,
            current=current,
            previous=previous,
            expires_at=expires_at,
            rotated_at=_time(annotations.get(ROTATED_AT), name=ROTATED_AT),
            version=version,
            previous_revoked=bool(previous)
            and annotations.get(REVOKED_FINGERPRINT) == fingerprint(previous or ""),
        )

    async def store(self, *, token: Token, replacing: StoredToken, rotated_at: datetime) -> StoredToken:
        version = replacing.version + 1
        expires_at = token.expiry()
        annotations: dict[str, str | None] = {
            EXPIRES_AT: format_time(expires_at),
            ROTATED_AT: format_time(rotated_at),
            VERSION: str(version),
            FINGERPRINT: token.fingerprint,
            PREVIOUS_FINGERPRINT: replacing.current_fingerprint,
            REVOKED_FINGERPRINT: None,
            REVOKED_AT: None,
        }
        data: dict[str, str | None] = {
            self.key: layout.encode(token.value),
            PREVIOUS_KEY: layout.encode(replacing.current) if replacing.current else None,
        }
        if not replacing.exists:
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {
                    "name": self.name,
                    "namespace": self.namespace,
                    "labels": dict(layout.MANAGED_BY),
                    "annotations": {k: v for k, v in annotations.items() if v is not None},
                },
                "data": {k: v for k, v in data.items() if v is not None},
            }
            created = await self._call("create", self._core().create_namespaced_secret, self.namespace, body)
            revision = created.metadata.resource_version
        else:
            # null deletes a key in a merge patch (RFC 7386): no stale expiry or 'previous'.
            patch = {
                "metadata": {"resourceVersion": replacing.revision, "annotations": annotations},
                "data": data,
            }
            patched = await self._call(
                "update", self._core().patch_namespaced_secret, self.name, self.namespace, patch,
                _content_type=MERGE_PATCH,
            )  # fmt: skip
            revision = patched.metadata.resource_version
        return replacing.succeeded_by(
            token,
            where=self.where,
            revision=revision,
            expires_at=expires_at,
            rotated_at=rotated_at,
            version=version,
        )

    async def mark_previous_revoked(self, *, stored: StoredToken, revoked_at: datetime) -> None:
        if not stored.previous or not stored.exists:
            return
        patch = {
            "metadata": {
                "resourceVersion": stored.revision,
                "annotations": {
                    REVOKED_FINGERPRINT: stored.previous_fingerprint,
                    REVOKED_AT: format_time(revoked_at),
                },
            }
        }
        await self._call(
            "annotate", self._core().patch_namespaced_secret, self.name, self.namespace, patch,
            _content_type=MERGE_PATCH,
        )  # fmt: skip

    async def aclose(self) -> None:
        await asyncio.to_thread(self.api_client.close)

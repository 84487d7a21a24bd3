"""One Vault/OpenBao session: log in, keep the client token alive, read and write KV secrets.

The sidecar's ``vault`` source and the rotation job both talk to Vault through a
:class:`VaultSession`, so there is one place that knows how to log in (``token``,
``approle``, ``kubernetes``, ``jwt``), when to renew, when to log in again and what to
revoke. The behaviour follows Vault Agent's auto-auth:

* The client token is renewed at about 2/3 of its TTL, with jitter, in an asyncio task
  started on first use. When Vault refuses the renewal, or the renewal comes back
  truncated by the token's ``max_ttl``, the session logs in again instead.
* A failed renewal (Vault down, sealed, 5xx) is retried after the project's one
  :class:`~tokensidecar.backoff.Backoff` (full jitter, 1 s doubling to
  ``TOKENSIDECAR_MAX_BACKOFF``) — never after a fraction of what is left of the TTL, which
  near expiry would retry several times a second. Once the TTL has passed, the token is
  gone and renewing it is pointless: the renewal task stops, and the next request logs in
  first. Requests come from the refresher, which backs off on its own, so a sidecar whose
  token expired during an outage sends one login attempt per refresher attempt — and a
  fleet coming back after the outage logs in spread out by that jitter, not in step.
* Vault answers 403 both for a policy that does not allow a path and for a token that no
  longer exists. On a 403 the session asks Vault about its own token (``lookup-self``,
  which the ``default`` policy allows): alive means a real permission denial, reported
  without logging in. Otherwise it logs in again and retries the request once; a second
  403 is a denial too, and it is remembered for that login, so polling a forbidden path
  does not mint a token per poll.
* Every client token the session obtained by logging in is revoked when it is replaced
  (re-login after a refused renewal, at ``max_ttl``, after a 403) unless it is known to be
  gone already, and in :meth:`VaultSession.aclose`. A token the user supplied
  (``VAULT_TOKEN``, a token file) is renewed if renewable, never revoked: it is not ours
  to end.

hvac is synchronous (requests), so every call runs in :func:`asyncio.to_thread`. The
trade-off: one worker thread per in-flight call, which for a sidecar doing one read per
refresh interval is nothing, and in exchange we use the maintained client rather than a
hand-written HTTP layer. Every call has an explicit (connect, read) timeout; a caller
that must not wait even that long (shutdown) cancels the await and abandons the thread.
Login credentials (JWT, AppRole secret_id, token file) are read from their files again at
every login, because kubelet rotates projected tokens.

Every credential read here is registered with :func:`tokensidecar.redact.remember`, and
every hvac/requests error becomes a :class:`VaultError` with a redacted message: a
:class:`VaultUnavailable` when Vault could not answer (retry later), a
:class:`VaultRefused` when it answered no (see :mod:`tokensidecar.backends.errors`).
Neither is a source error: the ``vault`` source translates them at its boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from tokensidecar.backends.credential_file import CredentialUnavailable, read_credential
from tokensidecar.backends.errors import UpstreamError, UpstreamRefused, UpstreamUnavailable
from tokensidecar.backoff import Backoff
from tokensidecar.redact import redact, remember, safe_error
from tokensidecar.token import parse_time

if TYPE_CHECKING:
    import hvac

    from tokensidecar.backends.settings import VaultSettings

__all__ = [
    "METADATA_EXPIRES_AT",
    "METADATA_FINGERPRINT",
    "METADATA_REVOKED_AT",
    "METADATA_REVOKED_FINGERPRINT",
    "METADATA_ROTATED_AT",
    "UNKNOWN_TIME",
    "KvMetadata",
    "KvPath",
    "KvSecret",
    "VaultCasConflict",
    "VaultError",
    "VaultLogin",
    "VaultPermissionDenied",
    "VaultRefused",
    "VaultSession",
    "VaultUnavailable",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Renew at this fraction of the token's TTL (Vault Agent and Vault Secrets Operator
# renew at about 2/3), moved by up to ±10% so a fleet of sidecars does not renew in step.
RENEW_AT = 2 / 3
RENEW_JITTER = 0.1
# Ceiling of the backoff after failed renewals when the caller does not give one
# (TOKENSIDECAR_MAX_BACKOFF's default).
MAX_BACKOFF = 60.0
# requests' (connect, read) timeout for each Vault call: long enough for a busy Vault,
# short enough that an unreachable one does not stall a refresh for minutes. A connect
# that takes seconds on a cluster network means the address is wrong or Vault is down.
REQUEST_TIMEOUT = (5.0, 10.0)


class VaultError(UpstreamError):
    """Vault could not do what was asked. The message is redacted and names the path.

    Raised as one of :class:`VaultUnavailable` and :class:`VaultRefused`; catch this class
    for "anything from Vault".
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(redact(message))
        self.status = status


class VaultUnavailable(VaultError, UpstreamUnavailable):
    """Vault could not answer (unreachable, timed out, sealed, 5xx, 429), or a login
    credential file could not be read yet: the same request can succeed later."""


class VaultRefused(VaultError, UpstreamRefused):
    """Vault answered no (login refused, no secret there, another 4xx), or the session
    cannot ask any more (closed, nothing to log in with): a verdict, not an outage."""


class VaultPermissionDenied(VaultRefused):
    """403 even after logging in again: the policy does not allow this path."""


class VaultCasConflict(VaultRefused):
    """A KV v2 check-and-set write lost: the secret's current version is not the one given."""


# -- the KV layout: what the rotation job writes and the ``vault`` source reads ------------
#
# A token is a key of a KV v2 secret (TOKENSIDECAR_KEY); what the job knows about it goes
# in the secret's ``custom_metadata`` (Vault limits it to 64 keys of at most 512 bytes),
# which belongs to the secret, not to a version, and is written after the data. So the
# expiry carries the fingerprint of the token it describes, and a reader trusts it only
# for that token (tokensidecar/sources/expiry.py). The previous token is the version
# before the current one, and the rotation's check-and-set is the version read.

#: When the token expires (RFC 3339, or epoch seconds when written by hand).
METADATA_EXPIRES_AT = "expires_at"
#: The fingerprint of the token ``expires_at`` describes.
METADATA_FINGERPRINT = "fingerprint"
#: When the current version was stored by the rotation job.
METADATA_ROTATED_AT = "rotated_at"
#: The fingerprint of the previous token once the job has revoked it, and when.
METADATA_REVOKED_FINGERPRINT = "revoked_fingerprint"
METADATA_REVOKED_AT = "revoked_at"
#: What a time is written as when it is not known: Vault refuses empty custom_metadata
#: values, and no reader parses this word as a time, so a stale value never outlives its
#: token.
UNKNOWN_TIME = "unknown"


@dataclass(frozen=True)
class KvPath:
    """A KV secret as users write it, ``<mount>/<path>``: the first segment is the mount."""

    mount: str
    path: str

    @classmethod
    def parse(cls, text: str) -> KvPath:
        mount, _, path = text.strip().strip("/").partition("/")
        path = path.strip("/")
        if not mount or not path:
            raise ValueError(f"{text!r} is not <mount>/<path> (e.g. secret/hf/model-a)")
        return cls(mount=mount, path=path)

    def __str__(self) -> str:
        return f"{self.mount}/{self.path}"


@dataclass(frozen=True)
class KvSecret:
    """One read of a KV secret. ``data`` holds secrets and is never shown by ``repr``."""

    path: KvPath
    data: Mapping[str, Any] = field(repr=False)
    #: KV v2 version number; None for KV v1, which has no versions.
    version: int | None = None
    #: KV v2 ``custom_metadata`` of the secret (shared by all versions); empty for KV v1.
    custom_metadata: Mapping[str, str] = field(default_factory=dict)
    created_time: datetime | None = None

    @property
    def token_version(self) -> str | None:
        """The version as a :class:`~tokensidecar.token.Token` read from it carries it (text);
        None for KV v1."""
        return str(self.version) if self.version is not None else None


@dataclass(frozen=True)
class KvMetadata:
    """KV v2 metadata of a secret: a cheap way to learn whether it changed."""

    path: KvPath
    current_version: int
    custom_metadata: Mapping[str, str] = field(default_factory=dict)
    updated_time: datetime | None = None
    #: When the current version was written. Version numbers start again at 1 when a
    #: secret's metadata is deleted and the secret recreated (or a dev server restarts),
    #: so (version, created_time) is what identifies a version.
    current_version_created_time: datetime | None = None


@dataclass(frozen=True)
class VaultLogin:
    """How to obtain a client token. Files are read at each login, never cached."""

    method: str
    mount: str
    role: str | None = None
    jwt_file: str | None = None
    role_id_file: str | None = None
    secret_id_file: str | None = None
    #: ``VAULT_TOKEN`` from the environment (token auth); kept out of ``repr``.
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None

    @property
    def user_supplied(self) -> bool:
        """True for ``token`` auth: the token belongs to the user and is never revoked."""
        return self.method == "token"


@dataclass
class _ClientToken:
    accessor: str | None
    #: Seconds the token had left when we last learned it; 0 means it never expires.
    ttl: float
    renewable: bool
    #: The TTL granted at login: a renewal that returns less was truncated by max_ttl.
    granted_ttl: float
    learned_at: float

    def expired(self, now: float) -> bool:
        """True once the TTL has passed without a renewal: Vault has dropped the token."""
        return self.ttl > 0 and now - self.learned_at >= self.ttl


def _read_secret_file(path: str, *, setting: str) -> str:
    try:
        return read_credential(path, setting=setting)
    except CredentialUnavailable as exc:
        raise VaultUnavailable(str(exc)) from None


class VaultSession:
    """A logged-in hvac client whose token is kept alive until :meth:`aclose`."""

    def __init__(
        self,
        *,
        addr: str,
        login: VaultLogin,
        namespace: str | None = None,
        verify: bool | str = True,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
        max_backoff: float = MAX_BACKOFF,
    ) -> None:
        self.addr = addr.rstrip("/")
        self.login_method = login
        self.namespace = namespace
        self._verify = verify
        self._timeout = timeout
        self._max_backoff = max_backoff
        self._client: hvac.Client | None = None
        self._token: _ClientToken | None = None
        #: Bumped at each login, so concurrent 403s cause one re-login, not several.
        self._generation = 0
        self._login_lock: asyncio.Lock | None = None
        self._renewal: asyncio.Task[None] | None = None
        #: Requests (by what they do) that got a 403 with a token proven alive or fresh:
        #: a policy denial, answered without asking Vault again until the next login.
        self._denied: dict[str, int] = {}
        self._closed = False
        #: Counters for logs, tests and benchmarks.
        self.logins = 0
        self.renewals = 0
        self.revocations = 0

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: VaultSettings) -> VaultSession:
        """A session for resolved ``settings`` (:class:`~tokensidecar.backends.settings.VaultSettings`)."""
        return cls(
            addr=settings.addr,
            login=settings.login,
            namespace=settings.namespace,
            verify=settings.tls_verify,
            max_backoff=settings.max_backoff,
        )

    # -- public API ---------------------------------------------------------------------

    @property
    def token_accessor(self) -> str | None:
        """Accessor of the current client token (not a credential): lets an operator or a
        test find, inspect or revoke the token without knowing it."""
        return self._token.accessor if self._token else None

    async def read_kv(self, path: KvPath, *, kv_version: int = 2, version: int | None = None) -> KvSecret:
        """Read a KV secret. ``version`` (KV v2 only) reads that version instead of the latest.

        Every string value of the data is registered for redaction: it is all secret.
        """
        if kv_version == 1:
            if version is not None:
                raise ValueError("KV v1 has no versions")
            response = await self._call(
                lambda client: client.secrets.kv.v1.read_secret(path=path.path, mount_point=path.mount),
                what=f"read {path}",
                path=path,
            )
            data = dict(response.get("data") or {})
            _remember_values(data)
            return KvSecret(path=path, data=data)
        response = await self._call(
            lambda client: client.secrets.kv.v2.read_secret_version(
                path=path.path, version=version, mount_point=path.mount, raise_on_deleted_version=True
            ),
            what=f"read {path}" + (f" version {version}" if version is not None else ""),
            path=path,
        )
        body = response.get("data") or {}
        data = dict(body.get("data") or {})
        _remember_values(data)
        metadata = body.get("metadata") or {}
        return KvSecret(
            path=path,
            data=data,
            version=_as_int(metadata.get("version")),
            custom_metadata=dict(metadata.get("custom_metadata") or {}),
            created_time=_as_time(metadata.get("created_time")),
        )

    async def read_kv_metadata(self, path: KvPath) -> KvMetadata:
        """KV v2 metadata only (current version, custom_metadata): no secret crosses the wire.

        Needs ``read`` on ``<mount>/metadata/<path>`` in the policy.
        """
        response = await self._call(
            lambda client: client.secrets.kv.v2.read_secret_metadata(path=path.path, mount_point=path.mount),
            what=f"read metadata of {path}",
            path=path,
        )
        body = response.get("data") or {}
        current_version = _as_int(body.get("current_version")) or 0
        current = (body.get("versions") or {}).get(str(current_version)) or {}
        return KvMetadata(
            path=path,
            current_version=current_version,
            custom_metadata=dict(body.get("custom_metadata") or {}),
            updated_time=_as_time(body.get("updated_time")),
            current_version_created_time=_as_time(current.get("created_time")),
        )

    async def write_kv(
        self,
        path: KvPath,
        data: Mapping[str, Any],
        *,
        cas: int | None = None,
        custom_metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Write a new KV v2 version; return its version number.

        ``cas`` is Vault's check-and-set: 0 writes only if the secret does not exist yet,
        N only if the current version is N; a lost race raises :class:`VaultCasConflict`.
        ``custom_metadata`` is merged into the secret's metadata (PATCH, so keys other
        tools set survive) *after* the data is written: a reader in between sees the new
        data with the old metadata, i.e. an expiry that is too early, never too late.
        """
        _remember_values(dict(data))
        response = await self._call(
            lambda client: client.secrets.kv.v2.create_or_update_secret(
                path=path.path, secret=dict(data), cas=cas, mount_point=path.mount
            ),
            what=f"write {path}",
            path=path,
        )
        version = _as_int((response.get("data") or {}).get("version")) or 0
        if custom_metadata:
            await self.write_kv_metadata(path, custom_metadata)
        return version

    async def write_kv_metadata(self, path: KvPath, custom_metadata: Mapping[str, str]) -> None:
        """Merge ``custom_metadata`` into a KV v2 secret's metadata (PATCH: other keys survive)."""
        metadata_body = {"custom_metadata": {str(k): str(v) for k, v in custom_metadata.items()}}
        await self._call(
            lambda client: client.adapter.request(
                "PATCH",
                f"/v1/{path.mount}/metadata/{path.path}",
                json=metadata_body,
                headers={"Content-Type": "application/merge-patch+json"},
            ),
            what=f"write metadata of {path}",
            path=path,
        )

    async def ensure_login(self) -> None:
        """Log in now if not logged in yet, or if the token's TTL has passed (reads call
        this themselves)."""
        if self._client is None or self._token is None or self._token.expired(_monotonic()):
            await self._login(seen_generation=self._generation)

    async def aclose(self) -> None:
        """Stop renewing; revoke the client token if we obtained it by logging in."""
        if self._closed:
            return
        self._closed = True
        if self._renewal is not None:
            self._renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewal
            self._renewal = None
        client, token = self._client, self._token
        self._client, self._token = None, None
        if client is None:
            return
        if token is not None and not self.login_method.user_supplied and not token.expired(_monotonic()):
            try:
                await asyncio.to_thread(client.auth.token.revoke_self)
                log.info("vault token revoked", extra={"accessor": token.accessor})
            except Exception as exc:  # best effort: the token still expires at its TTL
                log.warning("could not revoke vault token", extra={"error": safe_error(exc)})
        await asyncio.to_thread(client.adapter.close)

    # -- calls, login and renewal ---------------------------------------------------------

    async def _call(self, request: Callable[[hvac.Client], T], *, what: str, path: KvPath | None = None) -> T:
        """Run one hvac request in a thread; on 403 tell a denial from a dead token."""
        if self._closed:
            raise VaultRefused(f"cannot {what}: the Vault session is closed")
        await self.ensure_login()
        for attempt in (1, 2):
            client, generation = self._client, self._generation
            assert client is not None
            try:
                return await asyncio.to_thread(request, client)
            except Exception as exc:
                import hvac.exceptions

                if not isinstance(exc, hvac.exceptions.Forbidden):
                    raise _vault_error(exc, what=what, path=path) from None
                denied = _vault_error(exc, what=what, path=path)
                if attempt == 2 or self._denied.get(what) == generation:
                    # 403 with a token fresh from a login: the policy does not allow it.
                    self._denied[what] = generation
                    raise denied from None
                alive = await self._token_alive(client)
                if alive:
                    self._denied[what] = generation
                    raise denied from None
                # Gone (revoked server-side, expired while Vault was down, a dev server
                # restarted) — or a token without the default policy, which cannot look
                # itself up: log in again and retry once.
                log.info("vault answered 403; logging in again", extra={"path": str(path or "")})
                await self._login(seen_generation=generation)
        raise AssertionError("unreachable")

    async def _token_alive(self, client: hvac.Client) -> bool | None:
        """Ask Vault about the client's own token: True when it exists; None when Vault
        says 403 (gone, or without the ``default`` policy that allows the lookup). Other
        failures raise."""
        import hvac.exceptions

        try:
            await asyncio.to_thread(client.auth.token.lookup_self)
        except hvac.exceptions.Forbidden:
            return None
        except Exception as exc:
            raise _vault_error(exc, what="look up the Vault client token") from None
        return True

    async def _login(self, *, seen_generation: int, superseded_alive: bool = True) -> None:
        """Obtain a new client token; revoke the one it replaces when it may be alive.

        ``superseded_alive``: False when the caller knows the current token is gone.
        """
        if self._login_lock is None:
            self._login_lock = asyncio.Lock()
        async with self._login_lock:
            if self._generation != seen_generation and self._token is not None:
                return  # another caller logged in while we waited
            if self._client is None:
                self._client = await asyncio.to_thread(self._new_client)
            client = self._client
            assert client is not None
            superseded, superseded_value = self._token, client.token
            token = await self._obtain_token(client)
            self._token = token
            self._generation += 1
            self._denied.clear()
            self.logins += 1
            log.info(
                "vault login",
                extra={
                    "auth": self.login_method.method,
                    "mount": self.login_method.mount,
                    "ttl_seconds": token.ttl,
                    "renewable": token.renewable,
                    "accessor": token.accessor,
                },
            )
            if self._renewal is None or self._renewal.done():
                self._renewal = asyncio.create_task(self._keep_token_fresh(), name="vault-token-renewal")
            if (
                superseded is not None
                and superseded_value
                and superseded_alive
                and not self.login_method.user_supplied
                and not superseded.expired(_monotonic())
            ):
                await self._revoke_superseded(superseded_value, accessor=superseded.accessor)

    async def _revoke_superseded(self, value: str, *, accessor: str | None) -> None:
        """Revoke a token this session obtained and no longer uses (best effort: it
        still ends at its TTL). It revokes itself, so no extra policy is needed."""
        import hvac

        client = self._client
        assert client is not None

        def revoke() -> None:
            # A second client on the same connection pool, holding the superseded token.
            hvac.Client(
                url=self.addr,
                token=value,
                namespace=self.namespace,
                verify=self._verify,
                timeout=self._timeout,
                session=client.session,
            ).auth.token.revoke_self()

        try:
            await asyncio.to_thread(revoke)
        except Exception as exc:
            log.info(
                "could not revoke the superseded vault token; it ends at its TTL",
                extra={"accessor": accessor, "error": safe_error(exc)},
            )
            return
        self.revocations += 1
        log.info("superseded vault token revoked", extra={"accessor": accessor})

    def _new_client(self) -> hvac.Client:
        import hvac

        # token="" stops hvac from picking up VAULT_TOKEN or ~/.vault-token on its own:
        # which token is used is decided here, by the configured auth method.
        return hvac.Client(
            url=self.addr, token="", namespace=self.namespace, verify=self._verify, timeout=self._timeout
        )

    async def _obtain_token(self, client: hvac.Client) -> _ClientToken:
        """A client token for ``client``: the one the user supplied, or one from a login.

        Either way ``client`` holds it afterwards, and the answer says its TTL and whether
        it renews, which is all the renewal task needs to know."""
        if self.login_method.user_supplied:
            return await self._adopt_supplied_token(client)
        return await self._log_in(client)

    async def _adopt_supplied_token(self, client: hvac.Client) -> _ClientToken:
        """Use the user's own token (a token file wins over ``VAULT_TOKEN``, and is read again
        now, since it may have been replaced) and ask Vault about it: a supplied token
        carries no TTL of its own, and a wrong one should fail here, not at the first read."""
        login = self.login_method
        if login.token_file:
            value = _read_secret_file(login.token_file, setting="TOKENSIDECAR_VAULT_TOKEN_FILE")
        elif login.token:
            value = login.token
        else:
            raise VaultRefused("no Vault token configured")
        client.token = value
        try:
            response = await asyncio.to_thread(client.auth.token.lookup_self)
        except Exception as exc:
            raise _vault_error(
                exc, what="look up the Vault token (VAULT_TOKEN or token file)", login=True
            ) from None
        info = response.get("data") or {}
        ttl = float(info.get("ttl") or 0)
        return _ClientToken(
            accessor=info.get("accessor") or None,
            ttl=ttl,
            renewable=bool(info.get("renewable")),
            granted_ttl=float(info.get("creation_ttl") or ttl),
            learned_at=_monotonic(),
        )

    async def _log_in(self, client: hvac.Client) -> _ClientToken:
        """Log in with the configured auth method and hand ``client`` the token Vault grants.

        The new token is registered for redaction before anything can log it; its lease
        duration is the TTL granted, which a later renewal compares against to notice
        ``max_ttl``."""
        login = self.login_method
        what = f"log in to Vault with {login.method} auth at auth/{login.mount}"
        request = self._login_request()
        try:
            response = await asyncio.to_thread(request, client)
        except Exception as exc:
            raise _vault_error(exc, what=what, login=True) from None
        auth = response.get("auth") or {}
        client_token = auth.get("client_token")
        if not client_token:
            raise VaultRefused(f"{what}: the response carried no client token")
        remember(client_token)
        client.token = client_token
        ttl = float(auth.get("lease_duration") or 0)
        return _ClientToken(
            accessor=auth.get("accessor") or None,
            ttl=ttl,
            renewable=bool(auth.get("renewable")),
            granted_ttl=ttl,
            learned_at=_monotonic(),
        )

    def _login_request(self) -> Callable[[hvac.Client], Any]:
        """The hvac login call of the configured method, its credentials read from their
        files now: kubelet rotates projected tokens, so a credential is never cached.
        ``use_token=False``: the session, not hvac, decides when the client takes the token."""
        login = self.login_method
        if login.method == "approle":
            role_id = _read_secret_file(login.role_id_file or "", setting="TOKENSIDECAR_VAULT_ROLE_ID_FILE")
            secret_id = (
                _read_secret_file(login.secret_id_file, setting="TOKENSIDECAR_VAULT_SECRET_ID_FILE")
                if login.secret_id_file
                else None
            )
            return lambda client: client.auth.approle.login(
                role_id=role_id, secret_id=secret_id, use_token=False, mount_point=login.mount
            )
        jwt = _read_secret_file(login.jwt_file or "", setting="TOKENSIDECAR_VAULT_JWT_FILE")
        role = login.role or ""
        if login.method == "kubernetes":
            return lambda client: client.auth.kubernetes.login(
                role=role, jwt=jwt, use_token=False, mount_point=login.mount
            )
        return lambda client: client.auth.jwt.jwt_login(role=role, jwt=jwt, use_token=False, path=login.mount)

    async def _keep_token_fresh(self) -> None:
        """Renew (or replace) the client token at ~2/3 of its TTL until the session closes.

        After a failure, the next try follows :class:`Backoff`, whose ``failures`` counts
        the failures in a row. Once the TTL has passed the token cannot be renewed any
        more: the task ends, and the next request logs in (which starts a new renewal task).
        """
        backoff = Backoff(base=1.0, cap=self._max_backoff)
        retry_in = 0.0
        while not self._closed:
            token = self._token
            if token is None or token.ttl <= 0:
                return  # a token without TTL (e.g. a root token) never needs renewing
            if self.login_method.user_supplied and not token.renewable:
                log.warning(
                    "the supplied vault token is not renewable; it expires at its TTL",
                    extra={"ttl_seconds": token.ttl, "accessor": token.accessor},
                )
                return
            if backoff.failures and token.expired(_monotonic()):
                log.warning(
                    "the vault token expired before it could be renewed; logging in at the next request",
                    extra={"accessor": token.accessor, "consecutive_failures": backoff.failures},
                )
                return
            await asyncio.sleep(max(retry_in if backoff.failures else self._renewal_delay(token), 0.0))
            try:
                await self._renew_or_login(seen_generation=self._generation)
            except VaultError as exc:
                retry_in = backoff.next_delay()
                log.warning(
                    "vault token renewal failed",
                    extra={"error": str(exc), "consecutive_failures": backoff.failures},
                )
            else:
                backoff.reset()

    @staticmethod
    def _renewal_delay(token: _ClientToken) -> float:
        """Seconds until ~2/3 of ``token``'s TTL, jittered so a fleet does not renew in step."""
        delay = token.ttl * RENEW_AT * random.uniform(1 - RENEW_JITTER, 1 + RENEW_JITTER)  # noqa: S311
        return delay - (_monotonic() - token.learned_at)

    async def _renew_or_login(self, *, seen_generation: int) -> None:
        token, client = self._token, self._client
        if token is None or client is None:
            return
        by_login = not self.login_method.user_supplied
        if by_login and not token.renewable:
            await self._login(seen_generation=seen_generation)
            return
        import hvac.exceptions

        try:
            response = await asyncio.to_thread(client.auth.token.renew_self)
        except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest) as exc:
            # Refused: 403, the token was revoked or expired (nothing left to revoke);
            # 400, it cannot be renewed (any more) but may live on until its TTL.
            log.info("vault refused to renew the token; logging in again", extra={"error": safe_error(exc)})
            gone = isinstance(exc, hvac.exceptions.Forbidden)
            await self._login(seen_generation=seen_generation, superseded_alive=not gone)
            return
        except Exception as exc:
            raise _vault_error(exc, what="renew the Vault token") from None
        auth = response.get("auth") or {}
        ttl = float(auth.get("lease_duration") or 0)
        token.ttl, token.learned_at = ttl, _monotonic()
        token.renewable = bool(auth.get("renewable", token.renewable))
        self.renewals += 1
        log.debug("vault token renewed", extra={"ttl_seconds": ttl, "accessor": token.accessor})
        if by_login and ttl < token.granted_ttl - 1:
            # Cut short by max_ttl: renewing again cannot outlive it, a fresh login can.
            # Log in now, while this token is still valid, and revoke it.
            log.info("vault token reached its max_ttl; logging in again", extra={"accessor": token.accessor})
            await self._login(seen_generation=seen_generation)


def _monotonic() -> float:
    return asyncio.get_running_loop().time()


def _remember_values(data: Mapping[str, Any]) -> None:
    for value in data.values():
        if isinstance(value, str):
            remember(value)
            remember(value.strip())


def _as_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _as_time(value: Any) -> datetime | None:
    try:
        return parse_time(value) if isinstance(value, str) and value else None
    except ValueError:
        return None


def _vault_error(
    exc: BaseException, *, what: str, path: KvPath | None = None, login: bool = False
) -> VaultError:
    """Turn an hvac or requests exception into a redacted, user-facing :class:`VaultError`.

    ``login``: the request was a login, where 400/403 mean the credentials or the role's
    bindings were refused, not that a policy lacks a path.
    """
    import hvac.exceptions
    import requests

    if isinstance(exc, VaultError):
        return exc
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        kind = "timed out" if isinstance(exc, requests.exceptions.Timeout) else "cannot connect"
        return VaultUnavailable(f"cannot {what}: Vault {kind} ({type(exc).__name__})")
    if isinstance(exc, hvac.exceptions.VaultError):
        # hvac's str() appends the method and URL; the errors list alone says what Vault said.
        detail = ", ".join(str(e) for e in (exc.errors or [])) or str(exc.args[0] if exc.args else "")
        status = {
            hvac.exceptions.InvalidRequest: 400,
            hvac.exceptions.Unauthorized: 401,
            hvac.exceptions.Forbidden: 403,
            hvac.exceptions.InvalidPath: 404,
            hvac.exceptions.RateLimitExceeded: 429,
            hvac.exceptions.InternalServerError: 500,
            hvac.exceptions.VaultNotInitialized: 501,
            hvac.exceptions.BadGateway: 502,
            hvac.exceptions.VaultDown: 503,
        }.get(type(exc))
        if login and isinstance(exc, hvac.exceptions.Forbidden | hvac.exceptions.InvalidRequest):
            return VaultRefused(
                f"cannot {what}: Vault refused the login (check the role, its bound claims and "
                f"the credentials){_detail(detail)}",
                status=status,
            )
        if isinstance(exc, hvac.exceptions.Forbidden):
            return VaultPermissionDenied(
                f"cannot {what}: permission denied (check the role's policies){_detail(detail)}", status=403
            )
        if isinstance(exc, hvac.exceptions.InvalidPath):
            hint = ""
            if path is not None and path.path.startswith(("data/", "metadata/")):
                hint = f" (give the path without '/data/': {path.mount}/{path.path.split('/', 1)[1]})"
            return VaultRefused(f"cannot {what}: no secret there{hint}", status=404)
        if isinstance(exc, hvac.exceptions.InvalidRequest) and "check-and-set" in detail:
            return VaultCasConflict(f"cannot {what}: check-and-set lost{_detail(detail)}", status=400)
        # 429 and 5xx (sealed, not initialized, down) are outages; the other 4xx are answers.
        # An hvac error without a known status (UnexpectedError) is taken as an outage.
        answered = status is not None and 400 <= status < 500 and status != 429
        error = VaultRefused if answered else VaultUnavailable
        return error(f"cannot {what}: Vault answered {status or 'an error'}{_detail(detail)}", status=status)
    if isinstance(exc, asyncio.CancelledError):
        raise exc
    return VaultUnavailable(f"cannot {what}: {safe_error(exc)}")


def _detail(text: str) -> str:
    text = redact(text.strip())
    return f": {text}" if text else ""

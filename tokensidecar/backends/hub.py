"""The Hugging Face Hub as an upstream: verify tokens, exchange credentials for tokens, revoke.

Everything that talks to the Hub lives here, so there is one client for it: huggingface_hub's
own HTTP session (``huggingface_hub.utils.get_session``), with its user agent and headers
(``build_hf_headers``), honouring ``HF_ENDPOINT``. The sidecar's verifier, the
``oidc-exchange`` source and the rotation job's ``oidc-exchange`` / ``enterprise-exchange``
issuers and revocation all go through the functions below. Each call follows a public
document, named where it is made:

* ``GET /api/whoami-v2`` — is the token alive, and what may it do (shapes: huggingface.js
  ``who-am-i.ts``; read by :mod:`tokensidecar.backends.hub_scope`);
* ``GET /api/models/{id}/auth-check`` and ``…/auth-check/write`` — the Hub's own access
  check, what ``HfApi.auth_check`` calls (huggingface_hub ``hf_api.py``): 403 ``GatedRepo``
  for a gated model the token was not granted, 404 ``RepoNotFound`` for one it cannot see.
  ``GET /api/models/{id}`` is *not* an access check: a gated model's metadata is public;
* ``POST /oauth/token`` — RFC 8693: Trusted Publishers (hub-docs ``trusted-publishers.md``,
  a JSON body, no client authentication) and the Enterprise exchange (hub-docs ``oauth.md``
  "Token Exchange for Organizations": a form body, the org app's credentials as HTTP Basic,
  a member's e-mail as subject, optional ``scope``, no lifetime parameter);
* ``POST /api/credentials/revoke`` — hub-docs ``security-tokens.md`` "Revoking a leaked
  token": ``{"credentials": [...]}``, no authentication, ``202 Accepted`` always.

Trade-off: ``HfApi.whoami`` / ``HfApi.auth_check`` would be the obvious calls, but they take
no timeout and huggingface_hub's shared session has none (``timeout=None``): one Hub that
accepts a connection and never answers would pin a worker thread forever, and the refresher
would wait with it. So the same endpoints are called on that same session with an explicit
timeout, and the answer is classified the way the Hub means it:

* 401 / 403 (and 404 from a model the token cannot see) → :class:`TokenRejected`: a verdict;
* connection error, timeout, 5xx, 429 and anything unexpected → :class:`HubUnavailable`:
  no verdict; the refresher applies ``TOKENSIDECAR_VERIFY_ON_HUB_OUTAGE``.

Errors carry the Hub's ``error`` / ``error_description`` text, redacted; never a token.
The blocking client runs in :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import socket
import time
import urllib.parse
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx2
from huggingface_hub import get_session
from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]  # public, lazily exported

from tokensidecar.backends.errors import UpstreamRefused
from tokensidecar.backends.hub_errors import HubMisconfigured, HubUnavailable, TokenRejected
from tokensidecar.backends.hub_scope import TokenScope, judge, scope_from_whoami
from tokensidecar.redact import fingerprint, redact, remember
from tokensidecar.token import parse_lifetime, parse_time

if TYPE_CHECKING:
    from tokensidecar.backends.settings import HubSettings, VerifySettings
    from tokensidecar.token import Token

__all__ = [
    "HUB_AUDIENCE",
    "ExchangeRefused",
    "ExchangedToken",
    "HubVerifier",
    "InvalidSubjectToken",
    "check_subject_token",
    "exchange_enterprise",
    "exchange_id_token",
    "revoke",
]

log = logging.getLogger(__name__)

# whoami and model info answer in milliseconds; ten seconds means the Hub is in trouble.
HUB_TIMEOUT = 10.0

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
USER_EMAIL_TYPE = "urn:huggingface:token-type:user-email"
#: "Its ``aud`` claim **must** be ``https://huggingface.co``" (hub-docs trusted-publishers.md).
HUB_AUDIENCE = "https://huggingface.co"
#: What a Trusted Publisher *user* resource grants (hub-docs trusted-publishers.md "Two flavors").
USER_RESOURCE_SCOPES = ("gated-repos",)


class InvalidSubjectToken(UpstreamRefused):
    """The subject token would be refused by the Hub; the message names the claim, never the token."""


class ExchangeRefused(UpstreamRefused):
    """The Hub answered a token exchange with a refusal (4xx); retrying will not help.

    ``error`` is the OAuth error code (``invalid_grant``, ``invalid_client``…) and the
    message carries the Hub's ``error_description``, redacted.
    """

    def __init__(self, *, status: int, error: str, description: str, what: str = "token exchange") -> None:
        text = f"{what} refused by the Hub (HTTP {status}): {error}"
        if description:
            text += f": {description}"
        super().__init__(redact(text))
        self.status = status
        self.error = error


@dataclass(frozen=True)
class ExchangedToken:
    """What ``POST /oauth/token`` returned. ``value`` is never shown by ``repr``."""

    value: str = field(repr=False)
    expires_in: float | None
    token_type: str
    #: The scopes the Hub granted (space-separated in the answer), when it says or documents them.
    scope: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        remember(self.value)

    def to_token(self, *, source: str, issued_at: datetime) -> Token:
        """This answer as a :class:`Token` of ``source``, its lifetime counted from
        ``issued_at`` (the sidecar passes when it asked, so network time errs early)."""
        from tokensidecar.token import Token

        expires_at = issued_at + timedelta(seconds=self.expires_in) if self.expires_in else None
        return Token(
            value=self.value,
            source=source,
            expires_at=expires_at,
            fetched_at=issued_at,
            granted_scope=self.scope,
        )


def _is_outage(status: int) -> bool:
    return status == 429 or status >= 500


def _hub_error_text(response: httpx2.Response) -> tuple[str, str]:
    """The Hub's ``error`` and ``error_description`` (or ``X-Error-Message``), redacted."""
    error, description = "", response.headers.get("X-Error-Message", "")
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = str(body.get("error") or "")
        description = str(body.get("error_description") or description)
    # Redact before truncating: a cut-off secret would no longer match its remembered value.
    return redact(error)[:200], redact(description)[:500]


def _request(method: str, url: str, *, timeout: float, **kwargs: Any) -> httpx2.Response:
    """One blocking request on huggingface_hub's session; transport failures → HubUnavailable."""
    try:
        return get_session().request(method, url, timeout=timeout, **kwargs)
    except httpx2.TimeoutException:
        raise HubUnavailable(f"the Hub did not answer within {timeout:g}s") from None
    except httpx2.HTTPError as exc:
        if _name_does_not_exist(exc):
            host = urllib.parse.urlsplit(url).hostname
            raise HubMisconfigured(
                f"HF_ENDPOINT: the host {host!r} does not exist (DNS: no such name); "
                "check the endpoint, this is not an outage"
            ) from None
        # The message names the URL and the OS error, never a header.
        raise HubUnavailable(redact(f"cannot reach the Hub: {type(exc).__name__}: {exc}")) from None


# getaddrinfo's "no such name" (NXDOMAIN) answers; EAI_AGAIN (the resolver could not be
# reached or timed out) stays an outage, since it passes.
_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def _name_does_not_exist(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):  # the cause chain: httpx2 → httpcore2 → OSError
        if seen is None:
            return False
        if isinstance(seen, socket.gaierror):
            return seen.errno in _NO_SUCH_NAME
        seen = seen.__cause__ or seen.__context__
    return False


def _exchange_answer(response: httpx2.Response) -> ExchangedToken:
    if _is_outage(response.status_code):
        raise HubUnavailable(f"token exchange failed: the Hub answered HTTP {response.status_code}")
    if response.status_code != 200:
        error, description = _hub_error_text(response)
        raise ExchangeRefused(status=response.status_code, error=error or "error", description=description)
    try:
        body: Any = response.json()
    except ValueError:
        raise HubUnavailable("token exchange answer is not JSON") from None
    value = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise HubUnavailable("token exchange answer has no access_token")
    remember(value)
    scope = body.get("scope")
    return ExchangedToken(
        value=value,
        expires_in=parse_lifetime(body.get("expires_in")),  # InvalidTime (ValueError) when out of range
        token_type=str(body.get("token_type") or "bearer"),
        scope=tuple(scope.split()) if isinstance(scope, str) else None,
    )


def check_subject_token(subject_token: str, *, now: float | None = None) -> None:
    """Check the claims the Hub will check, before sending: a clear error naming the claim.

    The Hub requires ``aud`` = ``https://huggingface.co`` and must fetch the issuer's
    discovery document and keys (``{iss}/.well-known/openid-configuration``), so ``iss``
    must be a public ``https://`` URL. A kubelet-projected token carries ``aud`` as an
    array; it passes when the array holds the Hub's audience (whether the Hub accepts the
    array form is not documented). The signature is the Hub's to check, not ours.
    """
    claims = _jwt_claims(subject_token)
    if claims is None:
        raise InvalidSubjectToken("the subject token is not a JWT (an OIDC id_token is needed)")
    aud = claims.get("aud")
    audiences = (
        [aud]
        if isinstance(aud, str)
        else [a for a in aud if isinstance(a, str)]
        if isinstance(aud, list)
        else []
    )
    if HUB_AUDIENCE not in audiences:
        shown = ", ".join(redact(a)[:100] for a in audiences) or "missing"
        raise InvalidSubjectToken(
            f"claim aud of the subject token is {shown}; the Hub requires {HUB_AUDIENCE} "
            "(set the projected token's audience, e.g. serviceAccountToken.audience)"
        )
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise InvalidSubjectToken("claim exp of the subject token is missing")
    if exp <= (time.time() if now is None else now):
        raise InvalidSubjectToken("claim exp: the subject token has expired")
    iss = claims.get("iss")
    if not isinstance(iss, str) or not iss.startswith("https://"):
        raise InvalidSubjectToken(
            "claim iss of the subject token is not an https:// URL; the Hub fetches the issuer's "
            "discovery document and keys from it"
        )
    host = iss.removeprefix("https://").split("/", 1)[0].split(":", 1)[0]
    if host.endswith((".svc", ".cluster.local", ".local", ".internal")) or "." not in host:
        log.warning(
            "the subject token's issuer does not look public; the Hub must be able to fetch its "
            "discovery document (use the cluster's public OIDC issuer URL)",
            extra={"issuer": redact(iss)[:200]},
        )


async def exchange_id_token(
    *, endpoint: str, subject_token: str, resource: str, request_timeout: float = HUB_TIMEOUT
) -> ExchangedToken:
    """RFC 8693 exchange of an OIDC id_token (Trusted Publishers) for an ``hf_jwt_…`` token.

    ``resource`` is a repository (``namespace/name``, ``datasets/…``, ``spaces/…``): an
    ``hf_jwt_…`` token with write access to that one repository; or a username: an
    ``hf_oauth_…`` read-only token with only the ``gated-repos`` scope, which cannot read
    private repositories. Both last 60 minutes (hub-docs trusted-publishers.md).

    Raises :class:`InvalidSubjectToken` before sending a subject the Hub would refuse,
    :class:`ExchangeRefused` (``invalid_grant``: wrong issuer, audience, expired subject…)
    or :class:`HubUnavailable`.
    """
    remember(subject_token)
    check_subject_token(subject_token)
    url = endpoint.rstrip("/") + "/oauth/token"
    payload = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token_type": ID_TOKEN_TYPE,
        "subject_token": subject_token,
        "resource": resource,
    }
    response = await asyncio.to_thread(
        _request, "POST", url, timeout=request_timeout, json=payload, headers=build_hf_headers(token=False)
    )
    exchanged = _exchange_answer(response)
    if exchanged.scope is None and "/" not in resource:
        exchanged = replace(exchanged, scope=USER_RESOURCE_SCOPES)
    return exchanged


async def exchange_enterprise(
    *,
    endpoint: str,
    client_id: str,
    client_secret: str,
    subject: str,
    scope: str | None = None,
    request_timeout: float = HUB_TIMEOUT,
) -> ExchangedToken:
    """Enterprise token exchange: an org OAuth app acts for a member (``subject`` = e-mail).

    Returns an ``hf_oauth_…`` token limited to the organisation's resources (hub-docs
    oauth.md). Its lifetime is the app's (8 h by default, set by org admins up to 30 days):
    the Hub documents no lifetime parameter. ``scope`` (space-separated) narrows the app's
    scopes; the answer's ``scope`` says what was granted.
    """
    remember(client_secret)
    url = endpoint.rstrip("/") + "/oauth/token"
    form: dict[str, str] = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token_type": USER_EMAIL_TYPE,
        "subject_token": subject,
    }
    if scope:
        form["scope"] = scope
    response = await asyncio.to_thread(
        _request,
        "POST",
        url,
        timeout=request_timeout,
        data=form,
        auth=(client_id, client_secret),
        headers=build_hf_headers(token=False),
    )
    return _exchange_answer(response)


async def revoke(*, endpoint: str, token: str, request_timeout: float = HUB_TIMEOUT) -> None:
    """``POST {HF_ENDPOINT}/api/credentials/revoke`` as hub-docs security-tokens.md documents it.

    Body ``{"credentials": [<token>]}``, no authentication (anyone may invalidate a leaked
    token). The Hub answers ``202 Accepted`` whether or not the token existed, so the answer
    says the request was taken, not that a token died; repeating it is harmless. The Hub
    e-mails the token's owner (once per token): routine rotations notify the owner too.
    Whether it revokes ``hf_jwt_`` / ``hf_oauth_`` tokens before they expire is not
    documented; those expire within hours anyway. An outage raises :class:`HubUnavailable`
    so the caller can retry later.
    """
    remember(token)
    url = endpoint.rstrip("/") + "/api/credentials/revoke"
    response = await asyncio.to_thread(
        _request,
        "POST",
        url,
        timeout=request_timeout,
        json={"credentials": [token]},
        headers=build_hf_headers(token=False),
    )
    if response.status_code in (200, 202, 204):
        kind = _token_prefix(token)
        extra = {"fingerprint": fingerprint(token), "kind": kind or "unknown"}
        if kind in ("hf_jwt_", "hf_oauth_"):
            # Degrade safely: do not claim what the Hub does not say; the token expires anyway.
            claims = _jwt_claims(token.removeprefix("hf_jwt_")) or {}
            exp = claims.get("exp")
            if isinstance(exp, int | float) and not isinstance(exp, bool):
                extra["expires_at"] = datetime.fromtimestamp(exp, UTC).isoformat(timespec="seconds")
            log.warning(
                "revocation accepted by the Hub; whether it invalidates short-lived hf_jwt_/hf_oauth_ tokens "
                "before they expire is not documented, so this one may live until it expires",
                extra=extra,
            )
            return
        log.info("revocation accepted by the Hub", extra=extra)
        return
    if _is_outage(response.status_code):
        raise HubUnavailable(f"revocation failed: the Hub answered HTTP {response.status_code}")
    error, description = _hub_error_text(response)
    raise ExchangeRefused(
        status=response.status_code, error=error or "error", description=description, what="revocation"
    )


def _jwt_claims(value: str) -> dict[str, Any] | None:
    """The claims of a JWT, unverified (the Hub checks the signature), or None."""
    parts = value.split(".")
    if len(parts) != 3:
        return None
    try:
        claims: Any = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def _hub_expiry(whoami: Any) -> datetime | None:
    """``auth.accessToken.expiresAt`` (or ``auth.expiresAt``) from whoami-v2, when present."""
    if not isinstance(whoami, dict):
        return None
    auth = whoami.get("auth")
    if not isinstance(auth, dict):
        return None
    access_token = auth.get("accessToken")
    raw = access_token.get("expiresAt") if isinstance(access_token, dict) else None
    raw = raw or auth.get("expiresAt")
    if raw is None:
        return None
    try:
        return parse_time(str(raw))
    except ValueError:
        return None


def _token_prefix(value: str) -> str:
    """The documented kind prefix (``hf_jwt_``, ``hf_oauth_``, ``hf_``), never more of the token."""
    for prefix in ("hf_jwt_", "hf_oauth_", "hf_"):
        if value.startswith(prefix):
            return prefix
    return ""


class HubVerifier:
    """Verifies a new token at the Hub before it is published (``TOKENSIDECAR_VERIFY``).

    ``whoami``: the Hub knows the token (``GET /api/whoami-v2``). ``repo``: also that it can
    read ``model_id`` (``GET /api/models/{id}/auth-check``, which refuses a gated model the
    token was not granted). ``scope``: ``repo``, plus the token's own permissions
    (:func:`tokensidecar.backends.hub_scope.judge`, with ``…/auth-check/write`` for what whoami-v2
    does not say): a token that can write anywhere but the model is refused. The verified
    token carries its :class:`~tokensidecar.backends.hub_scope.TokenScope` for ``/status``,
    ``token.json`` and the rotation report. The refresher calls :meth:`verify` once per new
    token (whoami is rate-limited), never per poll.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        mode: str = "whoami",
        model_id: str | None = None,
        request_timeout: float = HUB_TIMEOUT,
    ) -> None:
        if mode not in ("whoami", "repo", "scope"):
            raise ValueError(f"unknown verification mode {mode!r}")
        if mode in ("repo", "scope") and not model_id:
            raise ValueError(f"{mode} verification needs a model id")
        self.endpoint = endpoint.rstrip("/")
        self.mode = mode
        self.model_id = model_id
        self.timeout = request_timeout

    @classmethod
    def from_settings(cls, settings: VerifySettings, *, hub: HubSettings) -> HubVerifier:
        """A verifier for resolved ``settings`` (their mode is not ``none``), at ``hub``."""
        return cls(endpoint=hub.endpoint, mode=settings.mode, model_id=settings.model_id)

    async def verify(self, token: Token) -> Token:
        started = time.monotonic()
        expires_at, scope = await asyncio.to_thread(self._verify_blocking, token.value, token.granted_scope)
        extra: dict[str, Any] = {
            "fingerprint": token.fingerprint,
            "mode": self.mode,
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
        }
        if scope is not None:
            extra["scope"] = scope.summary()
        log.info("token verified at the Hub", extra=extra)
        return replace(token, verified=True, expires_at=token.expires_at or expires_at, scope=scope)

    def _verify_blocking(
        self, value: str, granted_scope: tuple[str, ...] | None
    ) -> tuple[datetime | None, TokenScope | None]:
        """Ask the Hub in the order of the modes: whoami, then (``repo``, ``scope``) read
        access to the model, then (``scope``) what else the token may write. Each answer
        that refuses raises before the next request is made."""
        headers = build_hf_headers(token=value)
        prefix = _token_prefix(value)
        whoami = self._whoami(headers=headers, token_prefix=prefix)
        if self.mode == "whoami":
            return _hub_expiry(whoami), scope_from_whoami(
                whoami, token_prefix=prefix, oauth_scopes=granted_scope
            )
        self._check_read_access(headers=headers, granted_scope=granted_scope)
        writes_model = self._writes_model(headers=headers) if self.mode == "scope" else None
        scope = scope_from_whoami(
            whoami,
            model_id=self.model_id,
            token_prefix=prefix,
            oauth_scopes=granted_scope,
            writes_model=writes_model,
        )
        if self.mode == "scope":
            self._enforce_least_privilege(scope)
        return _hub_expiry(whoami), scope

    def _whoami(self, *, headers: dict[str, str], token_prefix: str) -> Any:
        """The whoami-v2 answer, or None for a Trusted Publisher token it refused while a
        model's auth-check is still to give the verdict."""
        response = _request("GET", f"{self.endpoint}/api/whoami-v2", timeout=self.timeout, headers=headers)
        if response.status_code == 401 and token_prefix == "hf_jwt_":
            # Undocumented whether whoami-v2 accepts Trusted Publisher tokens at all. With a model,
            # auth-check is the verdict; without one there is no verdict to be had: report it as
            # "cannot verify" (the outage policy applies, and says so), never as a silent pass.
            if self.mode == "whoami":
                raise HubUnavailable(
                    "whoami-v2 refused a Trusted Publisher (hf_jwt_) token, and whether it accepts them "
                    "is not documented; set --verify=repo with --model-id to verify it with auth-check"
                )
            log.warning(
                "whoami-v2 refused a Trusted Publisher token; judging it by auth-check on the model",
                extra={"model_id": self.model_id},
            )
            return None
        self._judge(response, what="whoami")
        try:
            return response.json()
        except ValueError:
            raise HubMisconfigured(
                "HF_ENDPOINT: the answer to /api/whoami-v2 is not JSON: not a Hugging Face Hub"
            ) from None

    def _check_read_access(self, *, headers: dict[str, str], granted_scope: tuple[str, ...] | None) -> None:
        """The Hub's own read check on the model (it refuses a gated model not granted);
        a refusal of a user-resource Trusted Publisher token says why such a token cannot
        read a private model, since that is the usual cause."""
        response = _request(
            "GET",
            f"{self.endpoint}/api/models/{self.model_id}/auth-check",
            timeout=self.timeout,
            headers=headers,
        )
        try:
            self._judge(response, what=f"read access to {self.model_id}")
        except TokenRejected as refused:
            if granted_scope == USER_RESOURCE_SCOPES and response.headers.get("X-Error-Code") != "GatedRepo":
                # trusted-publishers.md: a user-resource token "cannot read your private repos".
                raise TokenRejected(
                    f"{refused}; a Trusted Publisher token for a user resource is read-only with only the "
                    "gated-repos scope and cannot read private repositories: use the model repository as "
                    "TOKENSIDECAR_OIDC_RESOURCE"
                ) from None
            raise

    def _writes_model(self, *, headers: dict[str, str]) -> bool | None:
        """Whether the token may write to the model (``…/auth-check/write``): what whoami-v2
        does not say for a Trusted Publisher token. A 401/403/404 is a plain no here."""
        response = _request(
            "GET",
            f"{self.endpoint}/api/models/{self.model_id}/auth-check/write",
            timeout=self.timeout,
            headers=headers,
        )
        if response.status_code == 200:
            return True
        if response.status_code in (401, 403, 404):
            return False
        self._judge(response, what=f"write access to {self.model_id}")
        return None

    def _enforce_least_privilege(self, scope: TokenScope) -> None:
        """``--verify=scope``: refuse a token that may write beyond the model, naming why."""
        assert self.model_id is not None
        verdict = judge(scope, model_id=self.model_id)
        if not verdict.ok:
            raise TokenRejected(f"--verify=scope refused the token: {verdict.reason} ({scope.describe()})")

    @staticmethod
    def _judge(response: httpx2.Response, *, what: str) -> None:
        status = response.status_code
        if status == 200:
            return
        error, description = _hub_error_text(response)
        code = response.headers.get("X-Error-Code", "")
        detail = f": {description or error}" if description or error else ""
        if code == "GatedRepo":
            detail = f": gated model, access not granted to this token's owner{detail}"
        if status == 404 and what == "whoami":
            raise HubMisconfigured(
                f"HF_ENDPOINT: {response.request.url.scheme}://{response.request.url.host} is not a "
                "Hugging Face Hub (/api/whoami-v2 answered HTTP 404)"
            )
        if status in (401, 403) or (status == 404 and what != "whoami"):
            raise TokenRejected(f"the Hub rejected the token ({what}: HTTP {status}{detail})")
        raise HubUnavailable(f"the Hub could not verify the token ({what}: HTTP {status}{detail})")

    async def aclose(self) -> None:
        """Nothing to release: huggingface_hub's session is shared by the process."""

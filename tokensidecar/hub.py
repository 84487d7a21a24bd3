"""The Hugging Face Hub as an upstream: verify tokens, exchange credentials for tokens, revoke.

Everything that talks to the Hub lives here, so there is one client for it: huggingface_hub's
own HTTP session (``huggingface_hub.utils.get_session``), with its user agent and headers
(``build_hf_headers``), honouring ``HF_ENDPOINT``. The sidecar's verifier, the
``oidc-exchange`` source and the rotation job's ``oidc-exchange`` / ``enterprise-exchange``
issuers and revocation all go through the functions below.

Trade-off: ``HfApi.whoami`` / ``HfApi.model_info`` would be the obvious calls, but they take
no timeout and huggingface_hub's shared session has none (``timeout=None``): one Hub that
accepts a connection and never answers would pin a worker thread forever, and the refresher
would wait with it. So the same two endpoints (``GET /api/whoami-v2``,
``GET /api/models/{id}``) are called on that same session with an explicit timeout, and the
answer is classified the way the Hub means it:

* 401 / 403 (and 404 from a model the token cannot see) → :class:`TokenRejected`: a verdict;
* connection error, timeout, 5xx, 429 and anything unexpected → :class:`HubUnavailable`:
  no verdict; the refresher applies ``TOKENSIDECAR_VERIFY_ON_HUB_OUTAGE``.

The exchange follows RFC 8693 the way huggingface_hub's own (private) ``_oidc`` helper sends
it — a JSON body to ``POST {HF_ENDPOINT}/oauth/token`` — and the Enterprise variant sends
the org app's client credentials as HTTP Basic (RFC 6749 §2.3.1) with the member's e-mail as
subject. Errors carry the Hub's ``error`` / ``error_description`` text, redacted; never a token.
The blocking client runs in :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx2
from huggingface_hub import get_session
from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]  # public, lazily exported

from tokensidecar.config import ConfigError
from tokensidecar.redact import fingerprint, redact, remember
from tokensidecar.token import parse_lifetime, parse_time
from tokensidecar.verify import HubUnavailable, TokenRejected

if TYPE_CHECKING:
    from tokensidecar.config import Config
    from tokensidecar.token import Token

__all__ = [
    "ExchangeRefused",
    "ExchangedToken",
    "HubVerifier",
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


class ExchangeRefused(Exception):
    """The Hub answered a token exchange with a refusal (4xx); retrying will not help.

    ``error`` is the OAuth error code (``invalid_grant``, ``invalid_client``…) and the
    message carries the Hub's ``error_description``, redacted.
    """

    def __init__(self, *, status: int, error: str, description: str) -> None:
        text = f"token exchange refused by the Hub (HTTP {status}): {error}"
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

    def __post_init__(self) -> None:
        remember(self.value)


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
        # The message names the URL and the OS error, never a header.
        raise HubUnavailable(redact(f"cannot reach the Hub: {type(exc).__name__}: {exc}")) from None


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
    expires_in = body.get("expires_in")
    return ExchangedToken(
        value=value,
        expires_in=parse_lifetime(expires_in),  # InvalidTime (ValueError) when out of range
        token_type=str(body.get("token_type") or "bearer"),
    )


async def exchange_id_token(
    *, endpoint: str, subject_token: str, resource: str, request_timeout: float = HUB_TIMEOUT
) -> ExchangedToken:
    """RFC 8693 exchange of an OIDC id_token (Trusted Publishers) for an ``hf_jwt_…`` token.

    Raises :class:`ExchangeRefused` (``invalid_grant``: wrong issuer, audience, expired
    subject…) or :class:`HubUnavailable`.
    """
    remember(subject_token)
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
    return _exchange_answer(response)


async def exchange_enterprise(
    *,
    endpoint: str,
    client_id: str,
    client_secret: str,
    subject: str,
    requested_lifetime: float | None = None,
    request_timeout: float = HUB_TIMEOUT,
) -> ExchangedToken:
    """Enterprise token exchange: an org OAuth app acts for a member (``subject`` = e-mail).

    Returns an ``hf_oauth_…`` token (8 h by default on the Hub; ``requested_lifetime``
    asks for less).
    """
    remember(client_secret)
    url = endpoint.rstrip("/") + "/oauth/token"
    form: dict[str, str] = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token_type": USER_EMAIL_TYPE,
        "subject_token": subject,
    }
    if requested_lifetime is not None:
        form["expires_in"] = str(int(requested_lifetime))
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
    """``POST {HF_ENDPOINT}/api/credentials/revoke``: the token authorises its own revocation.

    Revoking a token that is already dead is not an error (the Hub answers 200 or 401);
    an outage raises :class:`HubUnavailable` so the caller can retry later.
    """
    remember(token)
    url = endpoint.rstrip("/") + "/api/credentials/revoke"
    response = await asyncio.to_thread(
        _request,
        "POST",
        url,
        timeout=request_timeout,
        json={"token": token},
        headers=build_hf_headers(token=token),
    )
    if response.status_code in (200, 204, 401):
        log.info("token revoked at the Hub", extra={"fingerprint": fingerprint(token)})
        return
    if _is_outage(response.status_code):
        raise HubUnavailable(f"revocation failed: the Hub answered HTTP {response.status_code}")
    error, description = _hub_error_text(response)
    raise ExchangeRefused(status=response.status_code, error=error or "error", description=description)


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


class HubVerifier:
    """Verifies a new token at the Hub before it is published (``TOKENSIDECAR_VERIFY``).

    ``whoami``: the Hub knows the token. ``repo``: also that it can read ``model_id``. The
    refresher calls :meth:`verify` once per new token (whoami is rate-limited), never per poll.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        mode: str = "whoami",
        model_id: str | None = None,
        request_timeout: float = HUB_TIMEOUT,
    ) -> None:
        if mode not in ("whoami", "repo"):
            raise ValueError(f"unknown verification mode {mode!r}")
        if mode == "repo" and not model_id:
            raise ValueError("repo verification needs a model id")
        self.endpoint = endpoint.rstrip("/")
        self.mode = mode
        self.model_id = model_id
        self.timeout = request_timeout

    @classmethod
    def from_config(cls, config: Config) -> HubVerifier:
        if config.verify == "repo":
            model_id = config.require("model_id", when="--verify=repo")
            if str(model_id).count("/") != 1 or any(not part for part in str(model_id).split("/")):
                raise ConfigError("TOKENSIDECAR_MODEL_ID", f"{model_id!r} is not a repository id (org/name)")
        endpoint = str(config.hf_endpoint or "").strip()
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigError("HF_ENDPOINT", f"{endpoint!r} is not an http(s) URL")
        return cls(endpoint=endpoint, mode=config.verify, model_id=config.model_id)

    async def verify(self, token: Token) -> Token:
        started = time.monotonic()
        expires_at = await asyncio.to_thread(self._verify_blocking, token.value)
        log.info(
            "token verified at the Hub",
            extra={
                "fingerprint": token.fingerprint,
                "mode": self.mode,
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        return replace(token, verified=True, expires_at=token.expires_at or expires_at)

    def _verify_blocking(self, value: str) -> datetime | None:
        headers = build_hf_headers(token=value)
        response = _request("GET", f"{self.endpoint}/api/whoami-v2", timeout=self.timeout, headers=headers)
        self._judge(response, what="whoami")
        try:
            whoami: Any = response.json()
        except ValueError:
            raise HubUnavailable("whoami answer is not JSON") from None
        if self.mode == "repo":
            response = _request(
                "GET", f"{self.endpoint}/api/models/{self.model_id}", timeout=self.timeout, headers=headers
            )
            self._judge(response, what=f"read access to {self.model_id}")
        return _hub_expiry(whoami)

    @staticmethod
    def _judge(response: httpx2.Response, *, what: str) -> None:
        status = response.status_code
        if status == 200:
            return
        error, description = _hub_error_text(response)
        detail = f": {description or error}" if description or error else ""
        if status in (401, 403) or (status == 404 and what != "whoami"):
            raise TokenRejected(f"the Hub rejected the token ({what}: HTTP {status}{detail})")
        raise HubUnavailable(f"the Hub could not verify the token ({what}: HTTP {status}{detail})")

    async def aclose(self) -> None:
        """Nothing to release: huggingface_hub's session is shared by the process."""

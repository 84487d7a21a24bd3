"""The ``oidc-exchange`` source: Hugging Face token exchange with the pod's own identity.

No Hugging Face secret is stored anywhere: the pod's projected service-account token (an
OIDC id_token signed by the cluster, audience ``https://huggingface.co``) is exchanged at
``POST {HF_ENDPOINT}/oauth/token`` (RFC 8693, Trusted Publishers) for a 60-minute token:
``hf_jwt_…`` with write access to one repository when the resource is a repository, or a
read-only ``hf_oauth_…`` (``gated-repos`` scope, no private repositories) when it is a
username. The Hub fetches the issuer's discovery document and keys, so the cluster's
service-account issuer must be public (managed clusters publish one); the claims the Hub
checks (``aud``, ``exp``, ``iss``) are checked here first, for an error that names them.
The exchanged token's lifetime comes back as ``expires_in``; the source turns it into
``expires_at`` and the refresher comes back at 2/3 of it.

The subject file is read afresh on every fetch, because kubelet rotates the projected
token in place (at 80% of its lifetime) and a cached copy would expire under us. The
request itself is :func:`tokensidecar.backends.hub.exchange_id_token`, the same one the rotation
job's ``oidc-exchange`` issuer uses.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from tokensidecar.backends.credential_file import CredentialUnavailable, read_credential
from tokensidecar.backends.hub import ExchangeRefused, InvalidSubjectToken, exchange_id_token
from tokensidecar.backends.hub_errors import HubUnavailable
from tokensidecar.sources import Source, SourceError
from tokensidecar.sources.settings import OidcExchangeSettings
from tokensidecar.token import InvalidTime, Token

__all__ = ["OidcExchangeSource"]


class OidcExchangeSource(Source):
    kind = "oidc-exchange"

    def __init__(self, *, endpoint: str, resource: str, subject_token_file: str | Path) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.resource = resource
        self.subject_token_file = Path(subject_token_file)

    @classmethod
    def from_settings(cls, settings: OidcExchangeSettings) -> OidcExchangeSource:
        return cls(
            endpoint=settings.hub.endpoint,
            resource=settings.resource,
            subject_token_file=settings.subject_token_file,
        )

    def _read_subject(self) -> str:
        try:
            return read_credential(
                self.subject_token_file, setting="TOKENSIDECAR_OIDC_TOKEN_FILE", encoding="ascii"
            )
        except CredentialUnavailable as exc:
            raise SourceError(str(exc)) from None

    async def fetch(self) -> Token:
        subject = await asyncio.to_thread(self._read_subject)
        requested_at = datetime.now(UTC)
        try:
            exchanged = await exchange_id_token(
                endpoint=self.endpoint, subject_token=subject, resource=self.resource
            )
        except InvalidSubjectToken as invalid:
            # Named claim, checked before sending: the Hub would refuse it the same way.
            raise SourceError(f"{self.subject_token_file}: {invalid}", retryable=False) from None
        except ExchangeRefused as refused:
            # invalid_grant and friends need a change on the Hub side (trusted issuer,
            # audience, subject claims) or a fresh subject token: retry, but it is not transient.
            raise SourceError(str(refused), retryable=False) from None
        except HubUnavailable as outage:
            raise SourceError(str(outage)) from None
        except InvalidTime as invalid:  # the answer's expires_in, out of any usable range
            raise SourceError(
                f"the Hub's token exchange answer has an unusable lifetime: {invalid}", retryable=False
            ) from None
        # Count the lifetime from when we asked, so that network time errs on the early side.
        return exchanged.to_token(source=self.kind, issued_at=requested_at)

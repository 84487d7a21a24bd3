"""Every upstream's failures speak one vocabulary: unavailable (retry later) or refused.

The sidecar, the rotation job and the gateway decide "try again" or "report a verdict"
from these classes, never from a client's status codes, so each client's errors must be
exactly one of the two.
"""

from __future__ import annotations

import pytest

from tokensidecar.backends.credential_file import CredentialUnavailable
from tokensidecar.backends.errors import UpstreamError, UpstreamRefused, UpstreamUnavailable
from tokensidecar.backends.hub import ExchangeRefused, InvalidSubjectToken
from tokensidecar.backends.hub_errors import HubMisconfigured, HubUnavailable, TokenRejected
from tokensidecar.backends.vault import VaultPermissionDenied, VaultRefused, VaultUnavailable
from tokensidecar.gateway.identity import IdentityUnavailable
from tokensidecar.gateway.upstream import UpstreamUnavailable as GatewayUpstreamUnavailable

UNAVAILABLE = [
    VaultUnavailable,
    CredentialUnavailable,
    HubUnavailable,
    GatewayUpstreamUnavailable,
    IdentityUnavailable,
]
REFUSED = [
    VaultRefused,
    VaultPermissionDenied,
    TokenRejected,
    HubMisconfigured,
    ExchangeRefused,
    InvalidSubjectToken,
]


@pytest.mark.parametrize("error", UNAVAILABLE, ids=lambda error: error.__name__)
def test_an_outage_is_unavailable_and_retryable(error: type[UpstreamError]) -> None:
    assert issubclass(error, UpstreamUnavailable)
    assert not issubclass(error, UpstreamRefused)
    assert error.retryable


@pytest.mark.parametrize("error", REFUSED, ids=lambda error: error.__name__)
def test_a_verdict_is_refused_and_not_retryable(error: type[UpstreamError]) -> None:
    assert issubclass(error, UpstreamRefused)
    assert not issubclass(error, UpstreamUnavailable)
    assert not error.retryable

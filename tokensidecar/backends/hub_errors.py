"""What the Hub said about a token, in classes light enough for every room to import.

The Hub client (:mod:`tokensidecar.backends.hub`) raises these; the sidecar's refresher,
the ``oidc-exchange`` source, the rotation job and the gateway catch them. They live apart
from the client because the client imports huggingface_hub and httpx, and the refresher
(which must decide between a rejection and an outage) should not pay for that when
``TOKENSIDECAR_VERIFY=none``. They speak the vocabulary every upstream shares
(:mod:`tokensidecar.backends.errors`): a rejection is a refusal, an outage is unavailable.
"""

from __future__ import annotations

from tokensidecar.backends.errors import UpstreamRefused, UpstreamUnavailable

__all__ = ["HubMisconfigured", "HubUnavailable", "TokenRejected"]


class TokenRejected(UpstreamRefused):
    """The Hub answered and refused the token (401/403, or no access to the model)."""


class HubMisconfigured(TokenRejected):
    """``HF_ENDPOINT`` does not lead to a Hub: its name does not exist (NXDOMAIN), or what
    answers there is not a Hub (no ``/api/whoami-v2``). A configuration error, never an
    outage: no token is published unverified because of it."""


class HubUnavailable(UpstreamUnavailable):
    """The Hub could not answer (connection error, timeout, 5xx, 429): not a verdict."""

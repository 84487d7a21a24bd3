"""What the refresher needs from verification, without importing the Hub client.

The implementation lives in :mod:`tokensidecar.backends.hub` and is imported only when
``TOKENSIDECAR_VERIFY`` is not ``none``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tokensidecar.config import Config
    from tokensidecar.token import Token

__all__ = ["HubMisconfigured", "HubUnavailable", "TokenRejected", "Verifier", "build_verifier"]


class TokenRejected(Exception):
    """The Hub answered and refused the token (401/403, or no access to the model)."""


class HubMisconfigured(TokenRejected):
    """``HF_ENDPOINT`` does not lead to a Hub: its name does not exist (NXDOMAIN), or what
    answers there is not a Hub (no ``/api/whoami-v2``). A configuration error, never an
    outage: no token is published unverified because of it."""


class HubUnavailable(Exception):
    """The Hub could not answer (connection error, timeout, 5xx, 429): not a verdict."""


class Verifier(Protocol):
    async def verify(self, token: Token) -> Token:
        """Return the token marked verified (with the Hub's expiry when it gives one),
        or raise :class:`TokenRejected` / :class:`HubUnavailable`."""
        ...

    async def aclose(self) -> None: ...


def build_verifier(config: Config) -> Verifier | None:
    if config.verify == "none":
        return None
    from tokensidecar.backends.hub import HubVerifier

    return HubVerifier.from_config(config)

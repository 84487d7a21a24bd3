"""What every command needs from verification, without importing the Hub client.

The sidecar's refresher, the rotation job and the gateway's credentials each verify a token
before using it, through this one protocol and factory.

The implementation lives in :mod:`tokensidecar.backends.hub`, and the Hub's verdicts
(:class:`~tokensidecar.backends.hub_errors.TokenRejected`,
:class:`~tokensidecar.backends.hub_errors.HubUnavailable`) beside it in
:mod:`tokensidecar.backends.hub_errors`; the client is imported only when
``TOKENSIDECAR_VERIFY`` is not ``none``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tokensidecar.backends.settings import VerifySettings
    from tokensidecar.token import Token

__all__ = ["Verifier", "build_verifier"]


class Verifier(Protocol):
    async def verify(self, token: Token) -> Token:
        """Return the token marked verified (with the Hub's expiry when it gives one),
        or raise :class:`~tokensidecar.backends.hub_errors.TokenRejected` /
        :class:`~tokensidecar.backends.hub_errors.HubUnavailable`."""
        ...

    async def aclose(self) -> None: ...


def build_verifier(settings: VerifySettings) -> Verifier | None:
    """The Hub verifier ``settings`` ask for, or None for ``--verify=none``."""
    if settings.hub is None:
        return None
    from tokensidecar.backends.hub import HubVerifier

    return HubVerifier.from_settings(settings, hub=settings.hub)

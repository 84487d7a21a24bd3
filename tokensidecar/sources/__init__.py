"""Sources: where a token comes from. One module per source, one small interface.

A source can always :meth:`Source.fetch` the current token. A source that can see
changes as they happen (a watched Secret, a watched file) also implements
:meth:`Source.watch`; the refresher then publishes changes as soon as they are seen
instead of polling. Heavy clients (hvac, kubernetes, huggingface_hub) are imported by
the source module that needs them, which is imported only when that source is chosen.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from tokensidecar.sources.settings import SourceSettings
    from tokensidecar.token import Token

__all__ = ["Source", "SourceError", "build_source"]


class SourceError(Exception):
    """The source could not deliver a token. The message is redacted and user-facing.

    ``retryable`` carries the upstream's meaning across the source's boundary (see
    :mod:`tokensidecar.backends.errors`): False when the upstream gave a verdict that
    the same request will meet again until something changes (an exchange refused, a
    Vault login refused, a path denied), True for outages and everything else. The
    refresher reports it (``last_error_kind`` in /status and ``error_kind`` in the failure
    log line: ``refused`` or ``unavailable``), so an operator knows whether to chase a
    policy or an outage, and retries both on the same backoff, on purpose: what fixes a
    refusal usually happens outside the pod (a policy edited, kubelet rotating the
    subject token), and the sidecar must pick that up without a restart.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Source(abc.ABC):
    """Fetch the current token; optionally watch for new ones."""

    kind: ClassVar[str]
    #: True when :meth:`watch` is implemented and should be used instead of polling.
    watchable: ClassVar[bool] = False

    @abc.abstractmethod
    async def fetch(self) -> Token:
        """Return the current token, or raise :class:`SourceError`."""

    async def watch(self) -> AsyncIterator[Token | SourceError]:
        """Yield each new token as it is seen, and problems that do not end the watch
        (a deleted Secret, a missing key). Raise when the watch itself breaks; the
        refresher backs off, fetches again and restarts it.
        """
        raise NotImplementedError(f"{self.kind} cannot be watched")
        yield  # type: ignore[unreachable]  # makes this an async generator

    async def aclose(self) -> None:
        """Release connections and credentials (e.g. revoke a Vault login token)."""


_MODULES = {
    "vault": ("tokensidecar.sources.vault", "VaultSource"),
    "kubernetes-secret": ("tokensidecar.sources.kubernetes_secret", "KubernetesSecretSource"),
    "file": ("tokensidecar.sources.file", "FileSource"),
    "oidc-exchange": ("tokensidecar.sources.oidc_exchange", "OidcExchangeSource"),
}


def build_source(settings: SourceSettings) -> Source:
    """Build the source that resolved ``settings`` describe
    (:func:`tokensidecar.sources.settings.resolve_source` checks them)."""
    module_name, class_name = _MODULES[settings.kind]
    cls = getattr(importlib.import_module(module_name), class_name)
    source: Source = cls.from_settings(settings)
    return source

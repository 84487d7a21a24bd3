"""What an upstream's failure means, in words every client shares: unavailable or refused.

The sidecar, the rotation job and the gateway each talk to the same upstreams (Vault, the
Hub, the Kubernetes API) and each must decide the same thing when a call fails: try again
later, or report a verdict that trying again will not change. That decision is made once,
by the client that knows the upstream's protocol, and expressed in these two classes, so
that callers never re-interpret status codes:

* :class:`UpstreamUnavailable` — the upstream could not answer: connection refused, a
  timeout, 5xx, 429, a sealed Vault, a credential file the kubelet has not written yet.
  The same request can succeed later with nothing changed.
* :class:`UpstreamRefused` — the upstream answered, and the answer is no: credentials or
  a login refused, permission denied, no such secret, a lost check-and-set. The same
  request gets the same answer until something changes (configuration, a policy, a new
  credential, a fresh read before the write).

A client's own errors subclass its base error *and* one of these two
(``VaultPermissionDenied`` is a ``VaultError`` and an ``UpstreamRefused``), so code can
catch by upstream or by meaning. Messages are redacted by the raiser and user-facing.
This module imports nothing: every room may use it without pulling in a client.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["UpstreamError", "UpstreamRefused", "UpstreamUnavailable"]


class UpstreamError(Exception):
    """An upstream could not do what was asked: always one of the two subclasses."""

    #: True when trying the same request again later can succeed with nothing changed.
    retryable: ClassVar[bool]


class UpstreamUnavailable(UpstreamError):
    """The upstream could not answer (connection, timeout, 5xx, 429, sealed): retry later."""

    retryable: ClassVar[bool] = True


class UpstreamRefused(UpstreamError):
    """The upstream answered no (refused, denied, not found, conflict): a verdict, not an outage."""

    retryable: ClassVar[bool] = False

"""The Kubernetes Secret that holds a token: its layout, declared once for both sides.

The rotation job writes this Secret (:mod:`tokensidecar.rotate.secret_target`) and the
sidecar's ``kubernetes-secret`` source reads and watches it
(:mod:`tokensidecar.sources.kubernetes_secret`). What one writes the other must find, so
the annotation names, the data keys and how a value is encoded live here, and both import
them. Layout after a rotation::

    data:
      token:    <new>            # TOKENSIDECAR_KEY
      previous: <old>            # overlap: still valid until revoked
    metadata.annotations:
      tokensidecar.io/expires-at:           2026-01-01T12:00:00Z   (absent when unknown)
      tokensidecar.io/rotated-at:           when <new> was stored = when <old> left 'token'
      tokensidecar.io/version:              monotonic rotation counter
      tokensidecar.io/fingerprint:          sha256[:12] of <new>
      tokensidecar.io/previous-fingerprint: sha256[:12] of <old>
      tokensidecar.io/revoked-fingerprint:  set when the job has revoked <old>
      tokensidecar.io/revoked-at:           when it did

The expiry describes the token it was written with, named by the fingerprint beside it:
annotations can be edited apart from the data (``kubectl edit``), so a reader trusts the
expiry only for that token (the sidecar's rule is :mod:`tokensidecar.sources.expiry`).
This module imports nothing heavy: the ``kubernetes`` client stays in :mod:`.kube`.
"""

from __future__ import annotations

import base64

from tokensidecar.redact import remember

__all__ = [
    "ANNOTATION_PREFIX",
    "EXPIRES_AT",
    "FINGERPRINT",
    "MANAGED_BY",
    "PREVIOUS_FINGERPRINT",
    "PREVIOUS_KEY",
    "REVOKED_AT",
    "REVOKED_FINGERPRINT",
    "ROTATED_AT",
    "VERSION",
    "decode",
    "encode",
]

ANNOTATION_PREFIX = "tokensidecar.io/"
#: When the token in the data expires (RFC 3339); absent when unknown.
EXPIRES_AT = ANNOTATION_PREFIX + "expires-at"
#: When the current token was stored, i.e. when the previous one was rotated out.
ROTATED_AT = ANNOTATION_PREFIX + "rotated-at"
#: The rotation counter; the sidecar reports it as the token's version.
VERSION = ANNOTATION_PREFIX + "version"
#: The fingerprint of the token the expiry annotation describes.
FINGERPRINT = ANNOTATION_PREFIX + "fingerprint"
PREVIOUS_FINGERPRINT = ANNOTATION_PREFIX + "previous-fingerprint"
#: The fingerprint of the previous token once the job has revoked it, and when.
REVOKED_FINGERPRINT = ANNOTATION_PREFIX + "revoked-fingerprint"
REVOKED_AT = ANNOTATION_PREFIX + "revoked-at"
#: Where the replaced token stays during the overlap (docs/rotation.md).
PREVIOUS_KEY = "previous"
#: The label a Secret created by the rotation job carries.
MANAGED_BY = {"app.kubernetes.io/managed-by": "tokensidecar-rotate"}


def decode(encoded: str) -> str:
    """The text of a Secret's data value (base64 of UTF-8), registered for redaction.

    Both forms are remembered before anything can log them. Raises ``ValueError``
    (``binascii.Error``, ``UnicodeDecodeError``) when it is not base64 of UTF-8.
    """
    remember(encoded)
    value = base64.b64decode(encoded, validate=True).decode("utf-8")
    remember(value)
    remember(value.strip())
    return value


def encode(value: str) -> str:
    """A Secret's data value for ``value``: base64 of its UTF-8 bytes."""
    return base64.b64encode(value.encode("utf-8")).decode("ascii")

"""A credential read from a file for an upstream call, registered for redaction at once.

Vault logins (a service-account JWT, an AppRole role_id and secret_id, a token file), the
Hub's Trusted Publisher exchange (the subject id_token) and the Enterprise exchange (the
org app's client id and secret) all send a credential that sits in a file. Each is read
here, at every use and never cached, because kubelet rotates projected tokens in place;
and each is given to :func:`tokensidecar.redact.remember` before anything could log it.

A file that is missing, unreadable or empty is :class:`CredentialUnavailable`, an
outage: the kubelet may not have written it yet, and the same read succeeds later.
"""

from __future__ import annotations

from pathlib import Path

from tokensidecar.backends.errors import UpstreamUnavailable
from tokensidecar.redact import remember, safe_error

__all__ = ["CredentialUnavailable", "read_credential"]


class CredentialUnavailable(UpstreamUnavailable):
    """The credential file is missing, unreadable or empty. The message names the setting."""


def read_credential(path: str | Path, *, setting: str, encoding: str = "utf-8") -> str:
    """The credential in ``path`` (surrounding whitespace stripped), already remembered.

    ``setting`` names where the path came from, for the message.
    """
    where = f"{setting} ({path})"
    try:
        value = Path(path).read_text(encoding=encoding).strip()
    except FileNotFoundError:
        raise CredentialUnavailable(f"{where} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = (exc.strerror or safe_error(exc)) if isinstance(exc, OSError) else f"not {encoding.upper()}"
        raise CredentialUnavailable(f"cannot read {where}: {reason}") from None
    remember(value)
    if not value:
        raise CredentialUnavailable(f"{where} is empty")
    return value

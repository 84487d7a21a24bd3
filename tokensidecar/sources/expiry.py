"""Expiry metadata stored beside a token, and when to believe it.

A Vault KV v2 secret's ``custom_metadata`` belongs to the secret, not to a version, and
the rotation job writes it after the data; a Secret's annotations can be changed apart
from its data. So an ``expires_at`` read next to a token may describe an *older* token:
a metadata write that failed after the data write, a ``vault kv put`` or ``kubectl edit``
by hand. Taken at its word, a stale, past ``expires_at`` makes the sidecar refuse a valid
new token as "already expired". The rotation job therefore stores, beside the expiry,
the fingerprint of the token it describes (the layouts both sides share:
:mod:`tokensidecar.backends.vault`, ``custom_metadata.fingerprint``;
:mod:`tokensidecar.backends.secret`, annotation ``tokensidecar.io/fingerprint``). The rule, for both sources:

* a fingerprint is stored and it is this token's: the expiry is trusted, past or future;
* a fingerprint is stored and it is another token's: the expiry is ignored (logged once);
* no fingerprint is stored (written by hand or by another tool): an expiry in the future
  is trusted — if it is stale it is the old token's, usually earlier than the new one's,
  so the sidecar refreshes early, the safe side; an expiry that says the token has
  *already* expired is ignored (logged once): refusing a token on the word of metadata
  that may predate it is the failure this rule exists to prevent, and the Hub's
  verification and a JWT's own ``exp`` still judge the token;
* a value that is not a time means unknown (the rotation job writes ``unknown``; anything
  else unparseable is logged once).

Ignoring ``expires_at`` means the token's expiry falls back to its own ``exp`` when it is
a JWT, else unknown (docs/behaviour.md).
"""

from __future__ import annotations

import logging
from datetime import datetime

from tokensidecar.backends.vault import UNKNOWN_TIME
from tokensidecar.redact import fingerprint, redact
from tokensidecar.token import parse_time, utcnow

__all__ = ["StoredExpiry"]


class StoredExpiry:
    """Reads the ``expires_at`` stored next to tokens of one secret, by the rule above.

    ``where`` names the secret and ``field`` the metadata, for the log lines, which are
    written once per distinct situation (a source polled every minute does not repeat
    them) to ``log``, the source's own logger.
    """

    def __init__(self, *, where: str, field: str, log: logging.Logger) -> None:
        self.where = where
        self.field = field
        self.log = log
        self._last_warning: tuple[str, str, str | None, str] | None = None

    def for_token(
        self, value: str, *, expires_at: str | None, written_for: str | None, now: datetime | None = None
    ) -> datetime | None:
        """The expiry of the token ``value``, or None when the metadata cannot vouch for it."""
        raw = str(expires_at).strip() if expires_at is not None else ""
        if not raw or raw.lower() == UNKNOWN_TIME:
            return None
        token_fingerprint = fingerprint(value)
        try:
            moment = parse_time(raw)
        except (ValueError, OverflowError, OSError):
            self._warn_once(
                "not-a-time", raw, written_for, token_fingerprint, f"{self.field} is not a time; ignoring it"
            )
            return None
        if moment is None:
            return None
        if written_for:
            if written_for.strip() == token_fingerprint:
                return moment
            self._warn_once(
                "other-token",
                raw,
                written_for,
                token_fingerprint,
                f"{self.field} was written for another token; ignoring it",
            )
            return None
        if moment <= (now or utcnow()):
            self._warn_once(
                "past-unattributed",
                raw,
                written_for,
                token_fingerprint,
                f"{self.field} says the token already expired, but no fingerprint says which token "
                "it describes; ignoring it",
            )
            return None
        return moment

    def _warn_once(
        self, kind: str, raw: str, written_for: str | None, token_fingerprint: str, message: str
    ) -> None:
        key = (kind, raw, written_for, token_fingerprint)
        if key == self._last_warning:
            return
        self._last_warning = key
        self.log.warning(
            message,
            extra={
                "secret": self.where,
                # Redacted before it is cut: a cut token would no longer be recognised.
                "expires_at": redact(raw)[:64],
                "written_for_fingerprint": redact(written_for)[:64] if written_for else None,
                "fingerprint": token_fingerprint,
            },
        )

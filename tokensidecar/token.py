"""The token as the rest of the program sees it, and the checks it must pass to be published.

A :class:`Token` carries the secret value and what is known about it (source, version,
expiry). Its ``repr`` never shows the value, and creating one registers the value with
the redactor, so a token that reaches a log line or an exception by mistake is masked.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tokensidecar.redact import fingerprint, remember

if TYPE_CHECKING:
    from tokensidecar.backends.hub_scope import TokenScope

__all__ = [
    "MAX_TOKEN_BYTES",
    "InvalidTime",
    "InvalidToken",
    "Token",
    "format_time",
    "jwt_exp",
    "jwt_expiry",
    "parse_lifetime",
    "parse_time",
    "utcnow",
    "validate",
]

MAX_TOKEN_BYTES = 4096

#: The longest lifetime (``expires_in``) taken at its word. No credential is issued for a
#: century; a larger number is a unit mistake or garbage (``1e400`` parses as infinity), and
#: adding it to "now" would overflow ``datetime`` (year 9999) in whoever does it next.
MAX_LIFETIME_SECONDS = 100 * 365 * 24 * 3600


class InvalidToken(ValueError):
    """The value cannot be a token; the message says why, never what the value was."""


class InvalidTime(ValueError):
    """A time or lifetime that is not one, or lies outside what a datetime can hold
    (``expires-at: 1e20``, ``expires_in: 1e400``). A ``ValueError``, so every caller that
    already treats a malformed time as a validation error handles these too."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with a ``Z``, seconds precision (what token.json and /status show)."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: str | None) -> datetime | None:
    """RFC 3339 / ISO 8601 (``Z`` or offset; naive means UTC) or epoch seconds → aware UTC datetime.

    Raises :class:`InvalidTime` (a ``ValueError``) for anything else, including numbers a
    datetime cannot hold (``1e20``, ``inf``, ``nan``): ``datetime.fromtimestamp`` raises
    ``OverflowError``/``OSError`` for those, which no caller expects from a parser.
    """
    if text is None:
        return None
    raw = str(text).strip()
    if not raw:
        return None
    shown = raw[:40]
    try:
        seconds = float(raw)
    except ValueError:
        seconds = None
    try:
        if seconds is not None:
            if not math.isfinite(seconds):
                raise InvalidTime(f"{shown!r} is not a time")
            return datetime.fromtimestamp(seconds, UTC)
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except InvalidTime:
        raise
    except (OverflowError, OSError):
        raise InvalidTime(f"{shown!r} is out of the range of times (years 1 to 9999)") from None
    except ValueError as exc:
        raise InvalidTime(f"{shown!r} is not an RFC 3339 time or epoch seconds ({exc})") from None


def parse_lifetime(value: object) -> float | None:
    """An ``expires_in`` (seconds, RFC 6749 §5.1, as a number or numeric string) → seconds.

    ``None`` when absent or not positive (the lifetime is then unknown, and the token's own
    ``exp`` is used). Raises :class:`InvalidTime` for a value that is not a number, or is not
    finite, or is longer than :data:`MAX_LIFETIME_SECONDS`.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidTime(f"expires_in {str(value)[:40]!r} is not a number of seconds")
    try:
        seconds = float(value)
    except (ValueError, OverflowError):
        raise InvalidTime(f"expires_in {str(value)[:40]!r} is not a number of seconds") from None
    if math.isnan(seconds) or seconds > MAX_LIFETIME_SECONDS:
        raise InvalidTime(
            f"expires_in {str(value)[:40]} is out of range (at most {MAX_LIFETIME_SECONDS}s, 100 years)"
        )
    return seconds if seconds > 0 else None


def jwt_exp(value: str) -> float | None:
    """The ``exp`` claim (epoch seconds) of a JWT (``hf_jwt_…`` or plain), unchecked.

    Only for scheduling and cache lifetimes: whoever the token is for decides whether it is
    valid (the Hub, the API server's TokenReview).
    """
    candidate = value.removeprefix("hf_jwt_")
    parts = candidate.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims: Any = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        return float(exp)
    return None


def jwt_expiry(value: str) -> datetime | None:
    """:func:`jwt_exp` as a time; None when absent or out of range."""
    exp = jwt_exp(value)
    if exp is None:
        return None
    try:
        return datetime.fromtimestamp(exp, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def validate(value: str) -> str:
    """Return the token stripped of surrounding whitespace, or raise :class:`InvalidToken`.

    Rules (docs/behaviour.md, the token file): non-empty, no whitespace inside, printable
    ASCII, at most 4 KiB.
    """
    token = value.strip()
    if not token:
        raise InvalidToken("token is empty")
    if len(token.encode("utf-8", "surrogatepass")) > MAX_TOKEN_BYTES:
        raise InvalidToken(f"token is longer than {MAX_TOKEN_BYTES} bytes")
    for char in token:
        if char.isspace():
            raise InvalidToken("token contains whitespace")
        if not (0x21 <= ord(char) <= 0x7E):
            raise InvalidToken("token contains a character that is not printable ASCII")
    return token


@dataclass(frozen=True)
class Token:
    """A fetched token and its metadata. ``value`` is never shown by ``repr``."""

    value: str = field(repr=False)
    source: str
    version: str | None = None
    expires_at: datetime | None = None
    fetched_at: datetime = field(default_factory=utcnow)
    verified: bool = False
    #: OAuth scopes an exchange granted (the Hub's whoami-v2 does not list them).
    granted_scope: tuple[str, ...] | None = None
    #: What the Hub says the token may do, set by verification (:mod:`tokensidecar.backends.hub_scope`).
    scope: TokenScope | None = None

    def __post_init__(self) -> None:
        remember(self.value.strip())

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.value)

    def with_expiry(self, expires_at: datetime | None) -> Token:
        return replace(self, expires_at=expires_at)

    def expiry(self) -> datetime | None:
        """The known expiry: the source's metadata first, then the token's own ``exp``."""
        return self.expires_at or jwt_expiry(self.value)

    def is_expired(self, now: datetime | None = None) -> bool:
        expiry = self.expiry()
        return expiry is not None and expiry <= (now or utcnow())

    def metadata(self) -> dict[str, Any]:
        """What token.json holds: everything about the token except the token."""
        return {
            "version": self.version,
            "fingerprint": self.fingerprint,
            "source": self.source,
            "fetched_at": format_time(self.fetched_at),
            "expires_at": format_time(self.expiry()),
            **({"scope": self.scope.summary()} if self.scope is not None else {}),
        }

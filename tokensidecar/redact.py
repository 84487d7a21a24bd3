"""The one redaction path: every log line, status document and error message goes through it.

Two layers, because either alone misses something:

* **Known values.** Every token and credential the process handles is registered with
  :func:`remember` the moment it is read, and replaced by ``[REDACTED sha256:<12 hex>]``
  wherever it appears, even inside an upstream's error text.
* **Shapes.** Values the process never saw as a token (an HTTP body echoing a header, a
  Vault client token inside an hvac exception) are caught by pattern: Hugging Face tokens
  (``hf_…``), JWTs, Vault tokens (``hvs.``/``s.``/``b.``), and ``Bearer …`` headers.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict

__all__ = ["fingerprint", "redact", "remember", "safe_error"]

_PATTERNS = re.compile(
    r"(?:"
    # Hugging Face tokens: hf_…, hf_oauth_…, and hf_jwt_<header>.<payload>.<signature>,
    # whose dotted tail must go too (the header is guessable; payload + signature are not).
    r"\bhf_[A-Za-z0-9_\-]{8,}(?:\.[A-Za-z0-9_\-]+)*"
    r"|\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*"  # JWTs
    r"|\b(?:hvs|hvb|hvr|s|b|r)\.[A-Za-z0-9_\-]{20,}"  # Vault/OpenBao tokens
    r"|(?<=(?i:bearer) )[^\s\"',]+"  # the auth scheme is case-insensitive (RFC 9110 §11.1)
    r")"
)

_lock = threading.Lock()
# Most recent secrets first; bounded so a sidecar that rotates for months does not grow.
_known: OrderedDict[str, str] = OrderedDict()
_known_by_length: tuple[tuple[str, str], ...] = ()
MAX_REMEMBERED = 256

# Values this short are not worth hiding and would garble ordinary words if replaced.
_MIN_SECRET_LEN = 6


def fingerprint(value: str) -> str:
    """First 12 hex digits of sha256: safe to show, enough to tell tokens apart."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def remember(value: str | None) -> None:
    """Register a secret so that it is redacted wherever it later appears."""
    global _known_by_length
    if not value or len(value) < _MIN_SECRET_LEN:
        return
    with _lock:
        if value in _known:
            _known.move_to_end(value, last=False)
            return
        _known[value] = f"[REDACTED sha256:{fingerprint(value)}]"
        _known.move_to_end(value, last=False)
        while len(_known) > MAX_REMEMBERED:
            _known.popitem(last=True)
        # Longest first, so a secret that contains another is replaced whole.
        _known_by_length = tuple(sorted(_known.items(), key=lambda item: len(item[0]), reverse=True))


def redact(text: str) -> str:
    """Return ``text`` with every known secret and every token-shaped string replaced."""
    if not text:
        return text
    for value, mask in _known_by_length:
        if value in text:
            text = text.replace(value, mask)
    return _PATTERNS.sub(lambda m: f"[REDACTED sha256:{fingerprint(m.group(0))}]", text)


def safe_error(exc: BaseException) -> str:
    """A one-line, redacted description of an exception for logs, /status and stderr."""
    text = str(exc).strip().replace("\n", " ")
    name = type(exc).__name__
    return redact(f"{name}: {text}" if text else name)

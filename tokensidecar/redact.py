"""The one redaction path: every log line, status document and error message goes through it.

Two layers, because either alone misses something:

* **Known values.** Every token and credential the process handles is registered with
  :func:`remember` the moment it is read, and replaced by ``[REDACTED sha256:<12 hex>]``
  wherever it appears, even inside an upstream's error text.
  A remembered value is also hidden in the encodings it travels in: base64 (a Secret's
  ``data`` holds ``base64(token)``; an HTTP Basic header holds ``base64(id:secret)``, where
  the secret sits at any byte offset, so the three alignments are registered) and
  percent-encoding.
* **Shapes.** Values the process never saw as a token (an HTTP body echoing a header, a
  Vault client token inside an hvac exception) are caught by pattern: Hugging Face tokens
  (``hf_…``, org tokens ``api_org_…``) wherever they start — glued to a word
  (``my_hf_…``) or to an escape (``%22hf_…``, ``\u0022hf_…``) — JWTs (dots possibly
  percent-encoded), Vault tokens (``hvs.``/``s.``/``b.``), the credential after ``Bearer``
  (any run of spaces or tabs), whatever follows an ``Authorization:`` header name (``token``,
  ``Basic``, any scheme), and a ``Basic`` credential anywhere when it decodes to
  ``user:password`` (RFC 7617).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
import urllib.parse
from collections import OrderedDict

__all__ = ["fingerprint", "redact", "remember", "safe_error"]

# Where an encoded or glued-on token may start: not after a letter or digit, or right after
# a %XX, \uXXXX or \xXX escape (whose last character is a hex digit).
_START = r"(?:(?<![A-Za-z0-9])|(?<=%[0-9A-Fa-f]{2})|(?<=\\u[0-9A-Fa-f]{4})|(?<=\\x[0-9A-Fa-f]{2}))"
# A JWT's dots, as they are or percent-encoded.
_DOT = r"(?:\.|%2[Ee])"

_SHAPES = re.compile(
    r"(?:"
    # Hugging Face tokens: hf_…, hf_oauth_…, and hf_jwt_<header>.<payload>.<signature>,
    # whose dotted tail must go too (the header is guessable; payload + signature are not).
    # No left boundary: "my_hf_…" and "x%22hf_…" hide a token as well as " hf_…" does.
    r"hf_[A-Za-z0-9_\-]{8,}(?:" + _DOT + r"[A-Za-z0-9_\-]+)*"
    r"|api_org_[A-Za-z0-9]{8,}"  # Hugging Face organisation API tokens
    # JWTs
    r"|" + _START + r"eyJ[A-Za-z0-9_\-]{4,}" + _DOT + r"[A-Za-z0-9_\-]{4,}" + _DOT + r"[A-Za-z0-9_\-]*"
    r"|" + _START + r"(?:hvs|hvb|hvr|s|b|r)\.[A-Za-z0-9_\-]{20,}"  # Vault/OpenBao tokens
    r")"
)

# Credentials that follow a keyword: only the credential is masked, the keyword stays.
_SCHEMES = re.compile(
    # "Authorization: <scheme> <credential>" (or authorization=…, "authorization": "…"):
    # whatever the scheme (Bearer, token, Basic, Digest…), what follows is a secret.
    r"(?P<header>(?i:\b(?:proxy-)?authorization)[\"']?[ \t]*[:=][ \t]*[\"']?"
    r"(?:(?i:bearer|token|basic|digest|negotiate|apikey)[ \t]+)?)(?P<header_credential>[^\s\"',;]+)"
    # "Bearer <credential>" anywhere: the scheme is case-insensitive (RFC 9110 §11.1) and
    # may be followed by several spaces or a tab.
    r"|(?P<bearer>(?i:\bbearer)[ \t]+)(?P<bearer_credential>[^\s\"',;]+)"
    # "Basic <base64>" anywhere, masked only when it decodes to user:password (RFC 7617),
    # so that "Basic authentication failed" keeps its words.
    r"|(?P<basic>(?i:\bbasic)[ \t]+)(?P<basic_credential>[A-Za-z0-9+/]{4,}={0,2})"
)

_lock = threading.Lock()
# Most recent secrets first, each with the encoded forms it is also hidden in; bounded so a
# sidecar that rotates for months does not grow.
_known: OrderedDict[str, tuple[str, ...]] = OrderedDict()
# First _MIN_SECRET_LEN characters of each form -> (form, mask), longest form first.
_index: dict[str, tuple[tuple[str, str], ...]] = {}
# The remembered values each indexed form hides, the one it masks as first.
_users: dict[str, list[str]] = {}
MAX_REMEMBERED = 256

# Values this short are not worth hiding and would garble ordinary words if replaced.
_MIN_SECRET_LEN = 6


def fingerprint(value: str) -> str:
    """First 12 hex digits of sha256: safe to show, enough to tell tokens apart."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _mask(value: str) -> str:
    return f"[REDACTED sha256:{fingerprint(value)}]"


def _encoded_forms(value: str) -> tuple[str, ...]:
    """``value`` plus the strings it turns into inside base64 and percent-encoded text.

    For base64, the value may start at any byte offset of what was encoded (``id:secret``
    in a Basic header), which shifts its encoding through three alignments; the characters
    that also depend on neighbouring bytes are left out of each, so every form appears
    verbatim in any base64 text that encodes the value (standard or URL-safe alphabet).
    """
    raw = value.encode("utf-8", "surrogatepass")
    forms = {value, urllib.parse.quote(value, safe="")}
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode("ascii")
        first = -(-offset * 8 // 6)  # ceil: the first character made of value bits only
        last = (offset + len(raw)) * 8 // 6  # floor: past the last such character
        core = encoded[first:last]
        if len(core) >= _MIN_SECRET_LEN + 2:
            forms.add(core)
            forms.add(core.replace("+", "-").replace("/", "_"))
    return tuple(sorted(forms, key=len, reverse=True))


def _set_entry(form: str, mask: str | None) -> None:
    """Put ``form`` in the index with ``mask`` (None: take it out), longest form first."""
    prefix = form[:_MIN_SECRET_LEN]
    entries = [entry for entry in _index.get(prefix, ()) if entry[0] != form]
    if mask is not None:
        entries.append((form, mask))
        entries.sort(key=lambda entry: len(entry[0]), reverse=True)
    if entries:
        _index[prefix] = tuple(entries)
    else:
        _index.pop(prefix, None)


def _index_forms(value: str, forms: tuple[str, ...]) -> None:
    """Add a newly remembered value's forms to the index. Called with ``_lock`` held.

    One pass over the text with a dict lookup per position costs the same whether 1 or
    1,000 forms are known (a regex alternation of them, or ``in`` per form, grows with the
    count); forms sharing a prefix are tried longest first, so a secret that contains
    another is replaced whole. The index changes per value, never rebuilt whole: a process
    that sees many tokens (the gateway's callers) pays microseconds per new one. Values can
    share a form (a truncated base64 core), so each form counts the values it hides.
    """
    for form in forms:
        users = _users.setdefault(form, [])
        users.append(value)
        if len(users) == 1:
            _set_entry(form, _mask(value))


def _unindex_forms(value: str, forms: tuple[str, ...]) -> None:
    """Drop an evicted value's forms from the index. Called with ``_lock`` held."""
    for form in forms:
        users = _users.get(form, [])
        was_first = bool(users) and users[0] == value
        if value in users:
            users.remove(value)
        if not users:
            _users.pop(form, None)
            _set_entry(form, None)
        elif was_first:
            _set_entry(form, _mask(users[0]))


def _replace_known(text: str) -> str:
    index = _index
    if not index:
        return text
    pieces: list[str] = []
    last = position = 0
    end = len(text) - _MIN_SECRET_LEN + 1
    while position < end:
        entries = index.get(text[position : position + _MIN_SECRET_LEN])
        if entries:
            for form, mask in entries:
                if text.startswith(form, position):
                    pieces += (text[last:position], mask)
                    position = last = position + len(form)
                    break
            else:
                position += 1
        else:
            position += 1
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


def remember(value: str | None) -> None:
    """Register a secret so that it is redacted wherever it later appears, encoded or not."""
    if not value or len(value) < _MIN_SECRET_LEN:
        return
    with _lock:
        if value in _known:
            _known.move_to_end(value, last=False)
            return
        forms = _encoded_forms(value)
        _known[value] = forms
        _known.move_to_end(value, last=False)
        _index_forms(value, forms)
        while len(_known) > MAX_REMEMBERED:
            evicted, evicted_forms = _known.popitem(last=True)
            _unindex_forms(evicted, evicted_forms)


def _basic_credentials(candidate: str) -> bool:
    """Whether ``candidate`` is base64 of ``user:password`` (RFC 7617)."""
    try:
        decoded = base64.b64decode(candidate + "=" * (-len(candidate) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in decoded


def _mask_scheme(match: re.Match[str]) -> str:
    for name in ("header", "bearer", "basic"):
        credential = match.group(f"{name}_credential")
        if credential is None:
            continue
        if credential.startswith("[REDACTED"):
            return match.group(0)
        if name == "basic" and not _basic_credentials(credential):
            return match.group(0)
        return match.group(name) + _mask(credential)
    return match.group(0)


def redact(text: str) -> str:
    """Return ``text`` with every known secret and every token-shaped string replaced."""
    if not text:
        return text
    text = _replace_known(text)
    text = _SHAPES.sub(lambda m: _mask(m.group(0)), text)
    return _SCHEMES.sub(_mask_scheme, text)


def safe_error(exc: BaseException) -> str:
    """A one-line, redacted description of an exception for logs, /status and stderr."""
    text = str(exc).strip().replace("\n", " ")
    name = type(exc).__name__
    return redact(f"{name}: {text}" if text else name)

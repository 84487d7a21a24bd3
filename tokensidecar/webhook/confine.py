"""What a pod's annotations may choose: Vault addresses, sidecar images, Secret namespaces,
token audiences.

Anyone who can create a pod in a namespace writes its annotations, and those annotations
decide where the pod's service-account token is sent (``vault-addr``), whom that token is
minted for (``token-audience``), which image holds the Hugging Face token (``image``) and
whose Secret the sidecar reads (``secret-namespace``). The platform team draws the boundary
with the webhook's settings (docs/security.md); this module holds the rules, as pure
functions the injection calls:

* a Vault address must be the webhook's default (``--inject-vault-addr``) or listed in
  ``--allowed-vault-addrs``; addresses compare as ``scheme://host[:port]`` (host in lower
  case, default ports dropped, a trailing ``/`` ignored), never as prefixes, so
  ``https://vault.corp.evil.example`` does not pass for ``https://vault.corp``;
* a plain ``http://`` Vault address is refused unless ``--allow-insecure-vault``: the
  token it carries would cross the network in clear;
* an image must be the default (``--sidecar-image``) or match a ``--allowed-images``
  pattern (``*`` matches any run of characters, nothing else is special);
* a Secret namespace other than the pod's own must be in ``--allowed-secret-namespaces``
  (``*`` allows any);
* a token audience must be one of the webhook's own (``--vault-token-audience``,
  ``--oidc-token-audience``) or listed in ``--allowed-token-audiences``, compared exactly
  (as the API server's TokenReview compares them), and never the gateway's
  (``--inject-gateway-audience``), listed or not.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence

__all__ = [
    "image_allowed",
    "normalize_vault_addr",
    "parse_audiences",
    "parse_image_patterns",
    "parse_namespaces",
    "parse_vault_addrs",
]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_vault_addr(text: str) -> str:
    """``HTTPS://Vault.Vault:443/`` → ``https://vault.vault``; ``ValueError`` if not a bare origin."""
    try:
        parts = urllib.parse.urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} is not an http(s) URL") from None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s) URL")
    if parts.username is not None or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ValueError(f"{text!r} must be scheme://host[:port] with nothing after it")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_vault_addrs(text: str) -> tuple[str, ...]:
    return tuple(normalize_vault_addr(item) for item in _items(text))


def _words(text: str, *, what: str) -> tuple[str, ...]:
    """The comma list's items, none with whitespace inside (``what`` names one in the error)."""
    words = _items(text)
    for word in words:
        if any(c.isspace() for c in word):
            raise ValueError(f"{word!r} is not {what}")
    return tuple(words)


def parse_image_patterns(text: str) -> tuple[str, ...]:
    return _words(text, what="an image pattern")


def parse_audiences(text: str) -> tuple[str, ...]:
    return _words(text, what="a token audience")


def parse_namespaces(text: str) -> tuple[str, ...]:
    namespaces = _items(text)
    for namespace in namespaces:
        if namespace != "*" and not _DNS_LABEL.match(namespace):
            raise ValueError(f"{namespace!r} is not a namespace name (or *)")
    return tuple(namespaces)


def image_allowed(image: str, *, default: str, patterns: Sequence[str]) -> bool:
    """True for the default image and for any image a pattern matches (``*`` = any run)."""
    if image == default:
        return True
    for pattern in patterns:
        regex = ".*".join(re.escape(part) for part in pattern.split("*"))
        if re.fullmatch(regex, image):
            return True
    return False

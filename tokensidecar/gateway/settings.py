"""Settings of ``tokensidecar gateway`` (docs/gateway.md).

The gateway's own settings (listen address, upstream, cache, policy, audience, TLS) plus the
sidecar's source settings: without ``TOKENSIDECAR_GATEWAY_CREDENTIALS``, those define the one
upstream credential named ``default``. ``HF_ENDPOINT`` is deliberately absent: the gateway's
upstream is ``TOKENSIDECAR_GATEWAY_UPSTREAM`` only, so a pod-wide ``HF_ENDPOINT`` (which may
point at the gateway itself) can never loop it back onto itself.

This module stays light (no aiohttp): the CLI imports it for ``--help``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tokensidecar.backends.settings import HUB_SETTINGS, KUBERNETES_SETTINGS, VAULT_SETTINGS
from tokensidecar.config import (
    COMMON_SETTINGS,
    TLS_SETTINGS,
    Config,
    ConfigError,
    Setting,
    parse_duration,
    parse_listen,
    register,
)
from tokensidecar.sidecar.settings import SIDECAR_SETTINGS
from tokensidecar.sources.settings import OIDC_SETTINGS

__all__ = ["GATEWAY_SETTINGS", "SETTINGS", "GatewaySettings", "parse_size"]

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGTP]i?)?B?", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}
_UNITS.update({f"{unit}i": 1024 ** (index + 1) for index, unit in enumerate("kmgtp")})


def parse_size(text: str) -> int:
    """``500Gi``, ``100G``, ``1.5TiB`` or a bare number of bytes → bytes (Kubernetes units)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size (use e.g. 500Gi, 100G or bytes)")
    size = int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
    if size <= 0:
        raise ValueError("must be greater than zero")
    return size


GATEWAY_SETTINGS = register(
    Setting(
        "gateway_listen",
        "TOKENSIDECAR_GATEWAY_LISTEN",
        "Address of the Hub API, /healthz, /readyz and /metrics (port 0 picks a free port).",
        default="0.0.0.0:8080",
        parse=parse_listen,
        flag="--listen",
        section="gateway",
    ),
    Setting(
        "gateway_upstream",
        "TOKENSIDECAR_GATEWAY_UPSTREAM",
        "The Hub or Hub-compatible mirror that misses are fetched from (HF_ENDPOINT is not used).",
        default="https://huggingface.co",
        flag="--upstream",
        section="gateway",
    ),
    Setting(
        "gateway_credentials",
        "TOKENSIDECAR_GATEWAY_CREDENTIALS",
        "YAML file of named upstream credentials, each one of the sidecar's sources "
        "(default: the source settings below define one credential named 'default').",
        flag="--credentials",
        section="gateway",
    ),
    Setting(
        "gateway_policy",
        "TOKENSIDECAR_GATEWAY_POLICY",
        "YAML file of rules granting workloads read access to repos (reloaded on change; default deny).",
        flag="--policy",
        section="gateway",
    ),
    Setting(
        "gateway_audience",
        "TOKENSIDECAR_GATEWAY_AUDIENCE",
        "Audience the callers' projected service-account tokens must carry (TokenReview).",
        default="tokensidecar-gateway",
        flag="--audience",
        section="gateway",
    ),
    Setting(
        "gateway_cache_dir",
        "TOKENSIDECAR_GATEWAY_CACHE_DIR",
        "Directory of the cache (a PersistentVolume): blobs by content, metadata by commit.",
        default="/var/cache/tokensidecar-gateway",
        flag="--cache-dir",
        section="gateway",
    ),
    Setting(
        "gateway_cache_size",
        "TOKENSIDECAR_GATEWAY_CACHE_SIZE",
        "Bound of the cached files; least recently used files are evicted past it "
        "(Kubernetes units: 500Gi, 100G, or bytes).",
        default="100Gi",
        parse=parse_size,
        flag="--cache-size",
        section="gateway",
    ),
    Setting(
        "gateway_revision_ttl",
        "TOKENSIDECAR_GATEWAY_REVISION_TTL",
        "How long a branch or tag resolves to the same commit before it is asked again upstream.",
        default="5m",
        parse=parse_duration,
        flag="--revision-ttl",
        section="gateway",
    ),
    Setting(
        "gateway_stale_if_error",
        "TOKENSIDECAR_GATEWAY_STALE_IF_ERROR",
        "During an upstream outage, branches and tags are served from their last resolution "
        "for this long (pinned commits are served from the cache regardless).",
        default="24h",
        parse=parse_duration,
        flag="--stale-if-error",
        section="gateway",
    ),
)

# The credential named "default" when there is no credentials file: the sidecar's source
# and verification settings, without what only a pod-local sidecar has (token file, probes,
# notifications) and without HF_ENDPOINT (the upstream is --upstream).
_SOURCE = tuple(
    s for s in SIDECAR_SETTINGS if s.name in ("source", "source_file", "refresh_interval", "max_backoff")
)
_HUB = tuple(s for s in HUB_SETTINGS if s.name != "hf_endpoint")

SETTINGS: tuple[Setting, ...] = (
    COMMON_SETTINGS
    + GATEWAY_SETTINGS
    + TLS_SETTINGS
    + _SOURCE
    + _HUB
    + VAULT_SETTINGS
    + KUBERNETES_SETTINGS
    + OIDC_SETTINGS
)


@dataclass(frozen=True)
class GatewaySettings:
    """The gateway's own settings, resolved and checked. Its upstream credentials are
    resolved apart (:class:`tokensidecar.gateway.credentials.CredentialStore`): from the
    credentials file, or from the sidecar's source settings for the one named ``default``."""

    #: ``TOKENSIDECAR_GATEWAY_LISTEN``: (host, port).
    listen: tuple[str, int]
    #: ``TOKENSIDECAR_GATEWAY_UPSTREAM``: the Hub the gateway fetches from.
    upstream: str
    #: ``TOKENSIDECAR_GATEWAY_CREDENTIALS``: the credentials file, or None for ``default``.
    credentials_file: str | None
    #: ``TOKENSIDECAR_GATEWAY_POLICY``: who may read what.
    policy_file: str
    #: ``TOKENSIDECAR_GATEWAY_AUDIENCE``: the audience of workload tokens.
    audience: str
    #: ``TOKENSIDECAR_GATEWAY_CACHE_DIR`` and ``…_CACHE_SIZE`` (bytes).
    cache_dir: str
    cache_size: int
    #: ``TOKENSIDECAR_GATEWAY_REVISION_TTL`` and ``…_STALE_IF_ERROR``, seconds.
    revision_ttl: float
    stale_if_error: float
    #: ``TOKENSIDECAR_TLS_CERT_FILE`` and ``…_KEY_FILE``, both or neither.
    tls_cert_file: str | None
    tls_key_file: str | None
    #: ``KUBECONFIG`` (TokenReview), or None for in-cluster config.
    kubeconfig: str | None

    @classmethod
    def resolve(cls, config: Config) -> GatewaySettings:
        policy_file = config.require("gateway_policy", when="running the gateway")
        cert_file = config.optional("tls_cert_file", str)
        key_file = config.optional("tls_key_file", str)
        if bool(cert_file) != bool(key_file):
            raise ConfigError("TOKENSIDECAR_TLS_KEY_FILE", "--tls-cert-file and --tls-key-file go together")
        return cls(
            listen=config.address("gateway_listen"),
            upstream=config.get("gateway_upstream", str),
            credentials_file=config.optional("gateway_credentials", str),
            policy_file=policy_file,
            audience=config.get("gateway_audience", str),
            cache_dir=config.get("gateway_cache_dir", str),
            cache_size=config.get("gateway_cache_size", int),
            revision_ttl=config.get("gateway_revision_ttl", float),
            stale_if_error=config.get("gateway_stale_if_error", float),
            tls_cert_file=cert_file,
            tls_key_file=key_file,
            kubeconfig=config.optional("kubeconfig", str),
        )

"""Settings of each source: what ``--source`` reads, resolved and checked at the door.

A source's settings are resolved once, by :func:`resolve_source`, into the frozen value of
the chosen source (:class:`VaultSourceSettings`, :class:`KubernetesSecretSourceSettings`,
:class:`FileSourceSettings`, :class:`OidcExchangeSettings`); the source is then built
from that value (:func:`tokensidecar.sources.build_source`) and never sees the
configuration. Every missing or malformed setting is a
:class:`~tokensidecar.config.ConfigError` raised here, before anything starts. The token
exchange's own settings (``TOKENSIDECAR_OIDC_*``) are declared here; the upstreams' are in
:mod:`tokensidecar.backends.settings`.

This module is imported by ``--help``, so it stays light: no clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tokensidecar.backends.settings import HubSettings, KubernetesSettings, VaultSettings
from tokensidecar.backends.vault import MAX_BACKOFF, KvPath
from tokensidecar.config import Config, ConfigError, Setting, register

__all__ = [
    "OIDC_SETTINGS",
    "FileSourceSettings",
    "KubernetesSecretSourceSettings",
    "OidcExchangeSettings",
    "SourceSettings",
    "VaultSourceSettings",
    "parse_kv_path",
    "resolve_source",
    "secret_namespace",
]

OIDC_SETTINGS = register(
    Setting(
        "oidc_resource",
        "TOKENSIDECAR_OIDC_RESOURCE",
        "Resource requested in the Hugging Face token exchange (RFC 8693 'resource').",
        section="hub",
    ),
    Setting(
        "oidc_token_file",
        "TOKENSIDECAR_OIDC_TOKEN_FILE",
        "Projected service-account token used as the exchange's id_token subject "
        "(read again at each exchange: kubelet rotates it).",
        section="hub",
    ),
)


@dataclass(frozen=True)
class VaultSourceSettings:
    """``--source=vault``: a key of a KV secret, read through a Vault session."""

    kind: ClassVar[str] = "vault"

    vault: VaultSettings
    #: ``TOKENSIDECAR_VAULT_PATH``, parsed.
    path: KvPath
    #: ``TOKENSIDECAR_KEY``: the key of the token in the secret's data.
    key: str = "token"
    #: ``TOKENSIDECAR_VAULT_KV_VERSION``: 1 or 2.
    kv_version: int = 2

    @classmethod
    def resolve(cls, config: Config, *, max_backoff: float = MAX_BACKOFF) -> VaultSourceSettings:
        when = "--source=vault"
        config.require("vault_addr", when=when)
        path = parse_kv_path(config.require("vault_path", when=when), setting="TOKENSIDECAR_VAULT_PATH")
        return cls(
            vault=VaultSettings.resolve(config, max_backoff=max_backoff),
            path=path,
            key=config.optional("key", str) or "token",
            kv_version=config.optional("vault_kv_version", int) or 2,
        )


def parse_kv_path(text: str, *, setting: str) -> KvPath:
    """``<mount>/<path>`` as a :class:`KvPath`; a ConfigError naming ``setting``."""
    try:
        return KvPath.parse(text)
    except ValueError as exc:
        raise ConfigError(setting, str(exc)) from None


@dataclass(frozen=True)
class KubernetesSecretSourceSettings:
    """``--source=kubernetes-secret``: a key of a named Secret, watched."""

    kind: ClassVar[str] = "kubernetes-secret"

    #: ``TOKENSIDECAR_SECRET_NAME``.
    name: str
    #: ``TOKENSIDECAR_SECRET_NAMESPACE``, else the pod's own namespace.
    namespace: str
    kubernetes: KubernetesSettings
    #: ``TOKENSIDECAR_KEY``.
    key: str = "token"

    @classmethod
    def resolve(cls, config: Config) -> KubernetesSecretSourceSettings:
        name = config.require("secret_name", when="--source=kubernetes-secret")
        return cls(
            name=name,
            namespace=secret_namespace(config),
            kubernetes=KubernetesSettings.resolve(config),
            key=config.get("key", str),
        )


_NAMESPACE_UNKNOWN = (
    "not set, and the pod's namespace is unknown (no POD_NAMESPACE, no service-account "
    "namespace file, no namespace in the kubeconfig context)"
)


def secret_namespace(config: Config, *, unknown: str = _NAMESPACE_UNKNOWN) -> str:
    """``TOKENSIDECAR_SECRET_NAMESPACE``, else the pod's namespace; a ConfigError saying
    ``unknown`` when neither is known."""
    from tokensidecar.backends import kube

    kubeconfig = config.optional("kubeconfig", str)
    namespace = config.optional("secret_namespace", str) or kube.pod_namespace(kubeconfig=kubeconfig)
    if not namespace:
        raise ConfigError("TOKENSIDECAR_SECRET_NAMESPACE", unknown)
    return namespace


@dataclass(frozen=True)
class FileSourceSettings:
    """``--source=file``: a mounted file, watched."""

    kind: ClassVar[str] = "file"

    #: ``TOKENSIDECAR_SOURCE_FILE``.
    path: str

    @classmethod
    def resolve(cls, config: Config) -> FileSourceSettings:
        return cls(path=config.require("source_file", when="--source=file"))


@dataclass(frozen=True)
class OidcExchangeSettings:
    """A Hugging Face token exchange with an OIDC id_token as subject: the sidecar's
    ``--source=oidc-exchange`` and the rotation job's ``--issuer=oidc-exchange``."""

    kind: ClassVar[str] = "oidc-exchange"

    #: ``TOKENSIDECAR_OIDC_RESOURCE``: the repository or user the token is for.
    resource: str
    #: ``TOKENSIDECAR_OIDC_TOKEN_FILE``: the projected token, read again at each exchange.
    subject_token_file: str
    hub: HubSettings

    @classmethod
    def resolve(cls, config: Config, *, when: str = "--source=oidc-exchange") -> OidcExchangeSettings:
        """``when`` says, in an error about a missing setting, what required it."""
        resource = config.require("oidc_resource", when=when)
        token_file = config.require("oidc_token_file", when=when)
        return cls(resource=resource, subject_token_file=token_file, hub=HubSettings.resolve(config))


SourceSettings = (
    VaultSourceSettings | KubernetesSecretSourceSettings | FileSourceSettings | OidcExchangeSettings
)


def resolve_source(config: Config, *, max_backoff: float = MAX_BACKOFF) -> SourceSettings:
    """The settings of the source ``TOKENSIDECAR_SOURCE`` names, checked (raises ConfigError).

    ``max_backoff`` bounds a Vault session's renewal retries (the sidecar's
    ``TOKENSIDECAR_MAX_BACKOFF``).
    """
    kind = config.get("source", str)
    if kind == "vault":
        return VaultSourceSettings.resolve(config, max_backoff=max_backoff)
    if kind == "kubernetes-secret":
        return KubernetesSecretSourceSettings.resolve(config)
    if kind == "file":
        return FileSourceSettings.resolve(config)
    if kind == "oidc-exchange":
        return OidcExchangeSettings.resolve(config)
    raise ConfigError("TOKENSIDECAR_SOURCE", f"unknown source {kind!r}")

"""Settings of ``tokensidecar rotate``: where a fresh token comes from and where it goes.

The job reuses the sidecar's names wherever the meaning is the same (docs/rotation.md): the
*target* is described by the settings a sidecar reads from (``TOKENSIDECAR_SECRET_NAME``,
``TOKENSIDECAR_VAULT_PATH``, ``TOKENSIDECAR_KEY``), so one ConfigMap can feed both. Only
what is new to minting lives here, and a Vault *issuer* path gets its own name because it
is never the path the sidecars read. This module is imported by ``--help``, so it stays
light: no clients, only declarations and parsers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import ClassVar

from tokensidecar.backends.settings import (
    HUB_SETTINGS,
    KUBERNETES_SETTINGS,
    VAULT_SETTINGS,
    HubSettings,
    KubernetesSettings,
    VaultSettings,
    VerifySettings,
)
from tokensidecar.backends.vault import KvPath
from tokensidecar.config import (
    COMMON_SETTINGS,
    Config,
    ConfigError,
    Setting,
    parse_bool,
    parse_duration,
    parse_positive_duration,
    register,
)
from tokensidecar.sources.settings import OIDC_SETTINGS, OidcExchangeSettings, parse_kv_path, secret_namespace

__all__ = [
    "ISSUERS",
    "ROTATE_SETTINGS",
    "SETTINGS",
    "TARGETS",
    "CommandIssuerSettings",
    "EnterpriseExchangeIssuerSettings",
    "IssuerSettings",
    "RotationSettings",
    "SecretTargetSettings",
    "TargetSettings",
    "VaultIssuerSettings",
    "VaultTargetSettings",
    "parse_argv",
    "parse_env_names",
]

ISSUERS = ("oidc-exchange", "enterprise-exchange", "vault", "command")
TARGETS = ("kubernetes-secret", "vault")


def parse_argv(text: str) -> tuple[str, ...]:
    """A JSON list of strings (``["mint-hf-token", "--org", "acme"]``): run without a shell,
    so no quoting rules and no injection through the value."""
    try:
        argv = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError('must be a JSON list of strings, e.g. ["mint-hf-token", "--org", "acme"]') from None
    if not isinstance(argv, list) or not argv or not all(isinstance(arg, str) for arg in argv):
        raise ValueError('must be a non-empty JSON list of strings, e.g. ["mint-hf-token"]')
    if not argv[0]:
        raise ValueError("the program name (first element) is empty")
    return tuple(argv)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\*?")


def parse_env_names(text: str) -> tuple[str, ...]:
    """Comma-separated environment variable names (``NAME`` or ``PREFIX*``): names, never
    values, so the setting itself holds no secret."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"{name[:40]!r} is not an environment variable name (NAME or PREFIX*)")
    return names


ROTATE_SETTINGS = register(
    Setting(
        "issuer",
        "TOKENSIDECAR_ISSUER",
        "Where a fresh token comes from: oidc-exchange (Trusted Publishers, the job's projected "
        "service-account token as subject), enterprise-exchange (Enterprise token exchange with the "
        "org's OAuth app), vault (copy from --issuer-vault-path), or command (run --issuer-command).",
        choices=ISSUERS,
        section="rotate",
    ),
    Setting(
        "target",
        "TOKENSIDECAR_TARGET",
        "Where the token is stored for the sidecars: kubernetes-secret (--secret-name) or vault "
        "(KV v2 at --vault-path).",
        default="kubernetes-secret",
        choices=TARGETS,
        section="rotate",
    ),
    Setting(
        "issuer_command",
        "TOKENSIDECAR_ISSUER_COMMAND",
        "Program for --issuer=command, as a JSON list (no shell). It prints the token on stdout, or "
        'a JSON object {"token", "expires_at" | "expires_in"}; non-zero exit or no output fails.',
        parse=parse_argv,
        section="rotate",
    ),
    Setting(
        "issuer_command_env",
        "TOKENSIDECAR_ISSUER_COMMAND_ENV",
        "Environment variables passed to --issuer-command, comma-separated (NAME or PREFIX*). The "
        "command otherwise gets only PATH, HOME, LANG, LANGUAGE, LC_ALL, LC_CTYPE, TZ, SSL_CERT_FILE, "
        "SSL_CERT_DIR, REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE: not the job's credentials (VAULT_TOKEN, "
        "TOKENSIDECAR_*) nor proxies (name HTTPS_PROXY, NO_PROXY here if it needs them).",
        default="",
        parse=parse_env_names,
        metavar="NAMES",
        section="rotate",
    ),
    Setting(
        "issuer_command_mints",
        "TOKENSIDECAR_ISSUER_COMMAND_MINTS",
        "The command mints a new credential on every run, so a token the job does not store (dry run, "
        "a concurrent run rotated first, a failed write) is revoked instead of left to expire. Leave it "
        "off when the command prints a token that something else keeps using.",
        default="false",
        parse=parse_bool,
        is_bool=True,
        section="rotate",
    ),
    Setting(
        "issuer_timeout",
        "TOKENSIDECAR_ISSUER_TIMEOUT",
        "How long the issuer may take (the command and every process it started are killed after it).",
        default="60s",
        parse=parse_positive_duration,
        section="rotate",
    ),
    Setting(
        "issuer_vault_path",
        "TOKENSIDECAR_ISSUER_VAULT_PATH",
        "KV secret (<mount>/<path>) copied by --issuer=vault; never the --vault-path the sidecars read.",
        section="rotate",
    ),
    Setting(
        "issuer_vault_key",
        "TOKENSIDECAR_ISSUER_VAULT_KEY",
        "Key of the token inside --issuer-vault-path.",
        default="token",
        section="rotate",
    ),
    Setting(
        "enterprise_client_id_file",
        "TOKENSIDECAR_ENTERPRISE_CLIENT_ID_FILE",
        "File holding the org OAuth app's client_id (--issuer=enterprise-exchange).",
        section="rotate",
    ),
    Setting(
        "enterprise_client_secret_file",
        "TOKENSIDECAR_ENTERPRISE_CLIENT_SECRET_FILE",
        "File holding the org OAuth app's client_secret (--issuer=enterprise-exchange).",
        section="rotate",
    ),
    Setting(
        "enterprise_subject",
        "TOKENSIDECAR_ENTERPRISE_SUBJECT",
        "Member or service identity (email) the Enterprise exchange issues the token for.",
        section="rotate",
    ),
    Setting(
        "enterprise_scope",
        "TOKENSIDECAR_ENTERPRISE_SCOPE",
        "OAuth scopes asked of the Enterprise exchange, space-separated (e.g. 'read-repos'); "
        "unset: the org app's scopes. The granted scopes are what --verify=scope judges.",
        section="rotate",
    ),
    Setting(
        "requested_lifetime",
        "TOKENSIDECAR_REQUESTED_LIFETIME",
        "Removed: the Hub documents no lifetime parameter for token exchanges (the org OAuth app's "
        "token duration decides, 8h by default). Setting it is an error.",
        parse=parse_positive_duration,
        section="rotate",
    ),
    Setting(
        "revoke_after",
        "TOKENSIDECAR_REVOKE_AFTER",
        "Overlap: revoke the token kept under 'previous' once it was rotated out this long ago "
        "(POST {HF_ENDPOINT}/api/credentials/revoke). Unset: never revoke a token that was stored "
        "(each one dropped from 'previous' is logged as left to expire).",
        parse=parse_duration,
        section="rotate",
    ),
    Setting(
        "min_remaining",
        "TOKENSIDECAR_MIN_REMAINING",
        "Skip (exit 0) while the stored token has more than this left, so the CronJob can run "
        "often and cheaply. Unset: always rotate.",
        parse=parse_duration,
        section="rotate",
    ),
    Setting(
        "dry_run",
        "TOKENSIDECAR_DRY_RUN",
        "Mint and verify, but store nothing and revoke nothing that is stored; print the fingerprints "
        "that would change. The token minted to check the issuer is revoked again (oidc-exchange, "
        "enterprise-exchange, or a command with TOKENSIDECAR_ISSUER_COMMAND_MINTS).",
        default="false",
        parse=parse_bool,
        is_bool=True,
        section="rotate",
    ),
    Setting(
        "metrics_file",
        "TOKENSIDECAR_METRICS_FILE",
        "Write the job's outcome here in node-exporter textfile format (path ending in .prom).",
        section="rotate",
    ),
)

SETTINGS: tuple[Setting, ...] = (
    COMMON_SETTINGS + ROTATE_SETTINGS + HUB_SETTINGS + VAULT_SETTINGS + KUBERNETES_SETTINGS + OIDC_SETTINGS
)


# -- resolved: what the job's parts take ----------------------------------------------------


@dataclass(frozen=True)
class CommandIssuerSettings:
    """``--issuer=command``: a program that prints the token."""

    kind: ClassVar[str] = "command"

    #: ``TOKENSIDECAR_ISSUER_COMMAND``, run without a shell.
    argv: tuple[str, ...]
    #: ``TOKENSIDECAR_ISSUER_TIMEOUT``, seconds.
    timeout: float
    #: ``TOKENSIDECAR_ISSUER_COMMAND_ENV``: variables (``NAME`` or ``PREFIX*``) it may see.
    pass_env: tuple[str, ...] = ()
    #: ``TOKENSIDECAR_ISSUER_COMMAND_MINTS``: its tokens are new (revocable) ones.
    mints: bool = False

    @classmethod
    def resolve(cls, config: Config) -> CommandIssuerSettings:
        argv = config.require("issuer_command", tuple, when="--issuer=command")
        return cls(
            argv=tuple(str(arg) for arg in argv),
            timeout=config.get("issuer_timeout", float),
            pass_env=tuple(str(name) for name in config.optional("issuer_command_env", tuple) or ()),
            mints=config.get("issuer_command_mints", bool),
        )


@dataclass(frozen=True)
class EnterpriseExchangeIssuerSettings:
    """``--issuer=enterprise-exchange``: the org's OAuth app asks for a member's token."""

    kind: ClassVar[str] = "enterprise-exchange"

    hub: HubSettings
    #: ``TOKENSIDECAR_ENTERPRISE_CLIENT_ID_FILE`` and ``…_CLIENT_SECRET_FILE``.
    client_id_file: str
    client_secret_file: str
    #: ``TOKENSIDECAR_ENTERPRISE_SUBJECT``: the member's e-mail.
    subject: str
    #: ``TOKENSIDECAR_ENTERPRISE_SCOPE``, whitespace normalised; None for the app's scopes.
    scope: str | None = None

    @classmethod
    def resolve(cls, config: Config) -> EnterpriseExchangeIssuerSettings:
        when = "--issuer=enterprise-exchange"
        hub = HubSettings.resolve(config)
        return cls(
            hub=hub,
            client_id_file=config.require("enterprise_client_id_file", when=when),
            client_secret_file=config.require("enterprise_client_secret_file", when=when),
            subject=config.require("enterprise_subject", when=when),
            scope=" ".join((config.optional("enterprise_scope", str) or "").split()) or None,
        )


@dataclass(frozen=True)
class VaultIssuerSettings:
    """``--issuer=vault``: copy the token kept at another KV path."""

    kind: ClassVar[str] = "vault"

    vault: VaultSettings
    #: ``TOKENSIDECAR_ISSUER_VAULT_PATH``, never the target's path.
    path: KvPath
    #: ``TOKENSIDECAR_ISSUER_VAULT_KEY``.
    key: str
    #: ``TOKENSIDECAR_VAULT_KV_VERSION``.
    kv_version: int

    @classmethod
    def resolve(cls, config: Config) -> VaultIssuerSettings:
        path = parse_kv_path(
            config.require("issuer_vault_path", when="--issuer=vault"),
            setting="TOKENSIDECAR_ISSUER_VAULT_PATH",
        )
        target_path = config.optional("vault_path", str)
        if config.get("target", str) == "vault" and target_path and KvPath.parse(target_path) == path:
            raise ConfigError(
                "TOKENSIDECAR_ISSUER_VAULT_PATH", "is the same secret as TOKENSIDECAR_VAULT_PATH (the target)"
            )
        return cls(
            vault=VaultSettings.resolve(config),
            path=path,
            key=config.get("issuer_vault_key", str),
            kv_version=config.get("vault_kv_version", int),
        )


IssuerSettings = (
    CommandIssuerSettings | OidcExchangeSettings | EnterpriseExchangeIssuerSettings | VaultIssuerSettings
)

_ISSUERS: dict[str, type[CommandIssuerSettings | EnterpriseExchangeIssuerSettings | VaultIssuerSettings]] = {
    "command": CommandIssuerSettings,
    "enterprise-exchange": EnterpriseExchangeIssuerSettings,
    "vault": VaultIssuerSettings,
}


def resolve_issuer(config: Config) -> IssuerSettings:
    """The chosen issuer's settings, checked (raises ConfigError)."""
    issuer = config.require("issuer", when="running rotate")
    if config.optional("requested_lifetime", float) is not None:
        raise ConfigError(
            "TOKENSIDECAR_REQUESTED_LIFETIME",
            "is no longer supported: the Hub documents no lifetime parameter for token exchanges "
            "(the org OAuth app's token duration decides); unset it",
        )
    if issuer == "oidc-exchange":  # Trusted Publishers, as the sidecar's source does it
        return OidcExchangeSettings.resolve(config, when="--issuer=oidc-exchange")
    return _ISSUERS[issuer].resolve(config)


@dataclass(frozen=True)
class SecretTargetSettings:
    """``--target=kubernetes-secret``: the rotating Secret."""

    kind: ClassVar[str] = "kubernetes-secret"

    #: ``TOKENSIDECAR_SECRET_NAME``.
    name: str
    #: ``TOKENSIDECAR_SECRET_NAMESPACE``, else the pod's own.
    namespace: str
    #: ``TOKENSIDECAR_KEY``: never ``previous``, which holds the token rotated out.
    key: str
    kubernetes: KubernetesSettings

    @classmethod
    def resolve(cls, config: Config) -> SecretTargetSettings:
        from tokensidecar.backends.secret import PREVIOUS_KEY

        name = config.require("secret_name", when="--target=kubernetes-secret")
        namespace = secret_namespace(config, unknown="not set, and this pod's namespace cannot be found")
        kubernetes = KubernetesSettings.resolve(config)
        key = config.get("key", str)
        if key == PREVIOUS_KEY:
            raise ConfigError("TOKENSIDECAR_KEY", f"{PREVIOUS_KEY!r} is reserved for the previous token")
        return cls(name=name, namespace=namespace, key=key, kubernetes=kubernetes)


@dataclass(frozen=True)
class VaultTargetSettings:
    """``--target=vault``: the rotating KV v2 secret."""

    kind: ClassVar[str] = "vault"

    vault: VaultSettings
    #: ``TOKENSIDECAR_VAULT_PATH``.
    path: KvPath
    #: ``TOKENSIDECAR_KEY``.
    key: str

    @classmethod
    def resolve(cls, config: Config) -> VaultTargetSettings:
        path = parse_kv_path(
            config.require("vault_path", when="--target=vault"), setting="TOKENSIDECAR_VAULT_PATH"
        )
        if config.get("vault_kv_version", int) != 2:
            raise ConfigError(
                "TOKENSIDECAR_VAULT_KV_VERSION", "--target=vault needs KV v2 (versions and check-and-set)"
            )
        return cls(vault=VaultSettings.resolve(config), path=path, key=config.get("key", str))


TargetSettings = SecretTargetSettings | VaultTargetSettings


@dataclass(frozen=True)
class RotationSettings:
    """Everything one run of ``tokensidecar rotate`` needs, resolved and checked."""

    issuer: IssuerSettings
    target: TargetSettings
    #: Verification of the fresh token; ``whoami`` with a model named proves ``repo`` access.
    verify: VerifySettings
    #: ``HF_ENDPOINT`` for revocation, or None to revoke nothing.
    revoke_endpoint: str | None
    #: ``TOKENSIDECAR_MIN_REMAINING`` and ``TOKENSIDECAR_REVOKE_AFTER``, seconds, or None.
    min_remaining: float | None
    revoke_after: float | None
    #: ``TOKENSIDECAR_DRY_RUN``.
    dry_run: bool
    #: Store a token the Hub could not judge: only when ``--verify-on-hub-outage=publish``
    #: is given (the job holds by default, unlike the sidecar).
    store_unverified_on_outage: bool
    #: ``TOKENSIDECAR_METRICS_FILE``, or None.
    metrics_file: str | None

    @classmethod
    def resolve(cls, config: Config) -> RotationSettings:
        """Issuer first, then target, then verification (raises ConfigError before anything runs)."""
        issuer = resolve_issuer(config)
        target: TargetSettings
        if config.get("target", str) == "vault":
            target = VaultTargetSettings.resolve(config)
        else:
            target = SecretTargetSettings.resolve(config)
        return cls(
            issuer=issuer,
            target=target,
            verify=_rotation_verify(config),
            revoke_endpoint=config.optional("hf_endpoint", str),
            min_remaining=config.optional("min_remaining", float),
            revoke_after=config.optional("revoke_after", float),
            dry_run=config.get("dry_run", bool),
            store_unverified_on_outage=config.is_set("verify_on_hub_outage")
            and config.get("verify_on_hub_outage", str) == "publish",
            metrics_file=config.optional("metrics_file", str),
        )


def _rotation_verify(config: Config) -> VerifySettings:
    """The sidecar's verification, with ``repo`` access proven when a model is named."""
    model_id = config.optional("model_id", str)
    if config.get("verify", str) == "whoami" and model_id:
        return VerifySettings.resolve(replace(config, values={**config.values, "verify": "repo"}))
    return VerifySettings.resolve(config)

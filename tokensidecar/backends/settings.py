"""Settings of the upstreams every command talks to: the Hub, Vault and Kubernetes.

The declarations (:class:`~tokensidecar.config.Setting`) of ``HF_ENDPOINT``,
``TOKENSIDECAR_VERIFY``, ``VAULT_*`` and ``KUBECONFIG`` live here, beside the frozen values
they resolve to: :class:`HubSettings`, :class:`VerifySettings`, :class:`VaultSettings` and
:class:`KubernetesSettings`. The sidecar, the rotation job and the gateway all resolve an
upstream's settings through the one resolver here, so each check (an ``http(s)`` endpoint,
an ``org/name`` model id, a Vault login's required files, a usable kubeconfig) is written
once and raises the :class:`~tokensidecar.config.ConfigError` that names the setting.
The clients (:mod:`.hub`, :mod:`.vault`, :mod:`.kube`) take these values and never see a
configuration.

This module is imported by ``--help``, so it stays light: the Kubernetes client is
imported only when a Kubernetes setting is resolved.
"""

from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tokensidecar.backends.vault import MAX_BACKOFF, VaultLogin
from tokensidecar.config import (
    SA_TOKEN_FILE,
    VAULT_AUTH_METHODS,
    VERIFY_MODES,
    Config,
    ConfigError,
    Setting,
    parse_bool,
    register,
)
from tokensidecar.redact import remember

if TYPE_CHECKING:
    from kubernetes.client import Configuration

__all__ = [
    "HUB_SETTINGS",
    "KUBERNETES_SETTINGS",
    "VAULT_SETTINGS",
    "HubSettings",
    "KubernetesSettings",
    "VaultSettings",
    "VerifySettings",
    "is_model_id",
]

# Settings the sidecar (run, once) shares with the rotation job and the gateway: where
# tokens live and how they are verified.
HUB_SETTINGS = register(
    Setting(
        "hf_endpoint",
        "HF_ENDPOINT",
        "Hugging Face Hub base URL (verification, token exchange, revocation).",
        default="https://huggingface.co",
        section="hub",
    ),
    Setting(
        "verify",
        "TOKENSIDECAR_VERIFY",
        "Check a new token at the Hub before publishing it: none, whoami "
        "(GET /api/whoami-v2), repo (whoami plus GET /api/models/{id}/auth-check: read access "
        "to --model-id, gated access included), or scope (repo, and refuse a token that can "
        "write to any other repository or whose fine-grained scope lacks --model-id).",
        default="whoami",
        choices=VERIFY_MODES,
        section="hub",
    ),
    Setting(
        "verify_on_hub_outage",
        "TOKENSIDECAR_VERIFY_ON_HUB_OUTAGE",
        "When the Hub cannot be reached (connection error, 5xx, 429) and no valid token is "
        "published yet (none, or the published one expired): publish the new token unverified, "
        "or hold it until the Hub answers. A verified, unexpired token is never displaced by an "
        "unverified one, and a rejection (401/403) always holds.",
        default="publish",
        choices=("publish", "hold"),
        section="hub",
    ),
    Setting(
        "model_id",
        "TOKENSIDECAR_MODEL_ID",
        "Model repository (org/name) that --verify=repo and --verify=scope prove read access to.",
        section="hub",
    ),
    Setting(
        "key",
        "TOKENSIDECAR_KEY",
        "Key of the token inside the Vault secret data or the Kubernetes Secret data.",
        default="token",
    ),
)

VAULT_SETTINGS = register(
    Setting("vault_addr", "VAULT_ADDR", "Vault/OpenBao address.", section="vault"),
    Setting(
        "vault_token",
        "VAULT_TOKEN",
        "Vault token for --vault-auth=token (environment only: never put a token in argv).",
        section="vault",
        env_only=True,
    ),
    Setting(
        "vault_token_file",
        "TOKENSIDECAR_VAULT_TOKEN_FILE",
        "File holding the Vault token for --vault-auth=token (read again at each login).",
        section="vault",
    ),
    Setting("vault_namespace", "VAULT_NAMESPACE", "Vault Enterprise / OpenBao namespace.", section="vault"),
    Setting("vault_cacert", "VAULT_CACERT", "CA bundle that signs Vault's TLS certificate.", section="vault"),
    Setting(
        "vault_skip_verify",
        "VAULT_SKIP_VERIFY",
        "Do not verify Vault's TLS certificate (testing only).",
        default="false",
        parse=parse_bool,
        is_bool=True,
        # 0.1.0's --help showed `--vault-skip-verify VAULT_SKIP_VERIFY`: a value still works.
        switch_takes_value=True,
        section="vault",
    ),
    Setting(
        "vault_path",
        "TOKENSIDECAR_VAULT_PATH",
        "KV secret holding the token, as <mount>/<path> (e.g. secret/hf/model-a).",
        section="vault",
    ),
    Setting(
        "vault_kv_version",
        "TOKENSIDECAR_VAULT_KV_VERSION",
        "KV secrets engine version of the mount.",
        default="2",
        choices=("1", "2"),
        parse=int,
        section="vault",
    ),
    Setting(
        "vault_auth",
        "TOKENSIDECAR_VAULT_AUTH",
        "How to log in to Vault: kubernetes (role + service-account JWT), jwt, approle, "
        "or token (VAULT_TOKEN or --vault-token-file).",
        default="kubernetes",
        choices=VAULT_AUTH_METHODS,
        section="vault",
    ),
    Setting("vault_role", "TOKENSIDECAR_VAULT_ROLE", "Vault role for kubernetes/jwt auth.", section="vault"),
    Setting(
        "vault_auth_mount",
        "TOKENSIDECAR_VAULT_AUTH_MOUNT",
        "Mount path of the auth method (default: the method's name).",
        section="vault",
    ),
    Setting(
        "vault_jwt_file",
        "TOKENSIDECAR_VAULT_JWT_FILE",
        "JWT presented for kubernetes/jwt auth (read again at each login: kubelet rotates it).",
        default=SA_TOKEN_FILE,
        section="vault",
    ),
    Setting(
        "vault_role_id_file", "TOKENSIDECAR_VAULT_ROLE_ID_FILE", "AppRole role_id file.", section="vault"
    ),
    Setting(
        "vault_secret_id_file",
        "TOKENSIDECAR_VAULT_SECRET_ID_FILE",
        "AppRole secret_id file.",
        section="vault",
    ),
)

KUBERNETES_SETTINGS = register(
    Setting(
        "secret_name",
        "TOKENSIDECAR_SECRET_NAME",
        "Kubernetes Secret holding the token.",
        section="kubernetes",
    ),
    Setting(
        "secret_namespace",
        "TOKENSIDECAR_SECRET_NAMESPACE",
        "Namespace of the Secret (default: the pod's own namespace).",
        section="kubernetes",
    ),
    Setting(
        "kubeconfig",
        "KUBECONFIG",
        "Kubeconfig file for running outside a cluster (default: in-cluster config).",
        section="kubernetes",
    ),
)


# Each part starts with a letter or digit, then letters, digits, ".", "_" and "-": no part is
# "." or "..", which in the /api/models/{id}/auth-check URL would name another path.
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_model_id(text: str) -> bool:
    """True for a repository id as the Hub writes it, ``org/name``. The one check of a model
    id: ``--model-id`` here, and ``tokensidecar.io/model-id`` in the webhook, which so admits
    no pod whose sidecar would refuse its setting."""
    return _MODEL_ID.fullmatch(text) is not None  # not match(): "$" also matches before a final newline


@dataclass(frozen=True)
class HubSettings:
    """Where the Hub is (``HF_ENDPOINT``), checked to be an ``http(s)`` URL."""

    #: Base URL without a trailing slash (``https://huggingface.co``).
    endpoint: str

    @classmethod
    def resolve(cls, config: Config) -> HubSettings:
        endpoint = (config.optional("hf_endpoint", str) or "").strip()
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigError("HF_ENDPOINT", f"{endpoint!r} is not an http(s) URL")
        return cls(endpoint=endpoint.rstrip("/"))


@dataclass(frozen=True)
class VerifySettings:
    """How a new token is checked at the Hub before it is used (``TOKENSIDECAR_VERIFY``)."""

    #: ``none``, ``whoami``, ``repo`` or ``scope``.
    mode: str
    #: The model (``org/name``) that ``repo`` and ``scope`` prove read access to.
    model_id: str | None = None
    #: Where the Hub is; None exactly when ``mode`` is ``none``.
    hub: HubSettings | None = None

    @classmethod
    def resolve(cls, config: Config) -> VerifySettings:
        mode = config.get("verify", str)
        model_id = config.optional("model_id", str)
        if mode in ("repo", "scope"):
            model_id = config.require("model_id", when=f"--verify={mode}")
            if not is_model_id(model_id):
                raise ConfigError("TOKENSIDECAR_MODEL_ID", f"{model_id!r} is not a repository id (org/name)")
        if mode == "none":
            return cls(mode=mode, model_id=model_id)
        return cls(mode=mode, model_id=model_id, hub=HubSettings.resolve(config))


@dataclass(frozen=True)
class VaultSettings:
    """How to reach and log in to Vault / OpenBao (``VAULT_*``, ``TOKENSIDECAR_VAULT_AUTH*``)."""

    #: ``VAULT_ADDR``, an ``http(s)`` URL.
    addr: str
    #: The auth method and the files (or token) it logs in with.
    login: VaultLogin
    #: ``VAULT_NAMESPACE``, or None.
    namespace: str | None = None
    #: TLS verification as requests takes it: True, False (``VAULT_SKIP_VERIFY``) or the
    #: path of a CA bundle (``VAULT_CACERT``).
    tls_verify: bool | str = True
    #: Ceiling of the backoff between failed token renewals (the sidecar's
    #: ``TOKENSIDECAR_MAX_BACKOFF``; the rotation job runs once and keeps the default).
    max_backoff: float = MAX_BACKOFF

    @classmethod
    def resolve(cls, config: Config, *, max_backoff: float = MAX_BACKOFF) -> VaultSettings:
        addr = config.require("vault_addr", when="Vault is used")
        if not addr.startswith(("http://", "https://")):
            raise ConfigError("VAULT_ADDR", f"{addr!r} is not an http:// or https:// URL")
        tls_verify: bool | str = not config.get("vault_skip_verify", bool)
        login = _vault_login(config)
        cacert = config.optional("vault_cacert", str)
        if cacert:
            if not pathlib.Path(cacert).is_file():
                raise ConfigError("VAULT_CACERT", f"{cacert} is not a readable file")
            tls_verify = cacert
        return cls(
            addr=addr,
            login=login,
            namespace=config.optional("vault_namespace", str),
            tls_verify=tls_verify,
            max_backoff=max_backoff,
        )


def _vault_login(config: Config) -> VaultLogin:
    method = config.get("vault_auth", str)
    mount = (config.optional("vault_auth_mount", str) or method).strip("/")
    when = f"--vault-auth={method}"
    if method in ("kubernetes", "jwt"):
        return VaultLogin(
            method=method,
            mount=mount,
            role=config.require("vault_role", when=when),
            jwt_file=config.require("vault_jwt_file", when=when),
        )
    if method == "approle":
        return VaultLogin(
            method=method,
            mount=mount,
            role_id_file=config.require("vault_role_id_file", when=when),
            secret_id_file=config.optional("vault_secret_id_file", str),
        )
    if method == "token":
        token = config.optional("vault_token", str)
        token_file = config.optional("vault_token_file", str)
        if not token and not token_file:
            raise ConfigError("", f"VAULT_TOKEN or TOKENSIDECAR_VAULT_TOKEN_FILE is required when {when}")
        remember(token)
        return VaultLogin(method=method, mount=mount, token=token, token_file=token_file)
    # The Setting's choices make this unreachable from the CLI.
    raise ConfigError("TOKENSIDECAR_VAULT_AUTH", f"unknown auth method {method!r}")


@dataclass(frozen=True)
class KubernetesSettings:
    """Which API server to talk to: ``KUBECONFIG``, or the pod's in-cluster service account."""

    #: ``KUBECONFIG`` (a path or a ``:``-separated list), or None for in-cluster config.
    kubeconfig: str | None
    #: The client configuration loaded from it, checked at resolution.
    configuration: Configuration = field(repr=False, compare=False)

    @classmethod
    def resolve(cls, config: Config) -> KubernetesSettings:
        return cls.for_kubeconfig(config.optional("kubeconfig", str))

    @classmethod
    def for_kubeconfig(cls, kubeconfig: str | None) -> KubernetesSettings:
        """Load ``kubeconfig`` (or the in-cluster config); a ConfigError naming ``KUBECONFIG``."""
        from tokensidecar.backends import kube

        try:
            configuration = kube.client_configuration(kubeconfig=kubeconfig)
        except kube.KubeconfigUnusable as exc:
            raise ConfigError("KUBECONFIG", str(exc)) from None
        return cls(kubeconfig=kubeconfig, configuration=configuration)

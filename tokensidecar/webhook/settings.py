"""Settings of ``tokensidecar webhook``: how it serves TLS, and what it injects by default.

Two kinds of settings live here. The server's own (listen address, certificates,
``--self-signed`` bootstrap, what to do with invalid annotations) and the defaults it
stamps into every injected sidecar (image, resources, Vault address, verification mode,
service-account token audiences). A pod's annotations override the second kind, pod by
pod; the first kind is the platform team's alone.

:meth:`WebhookSettings.resolve` reads both once, at the door, into frozen values (the
second kind as :class:`~tokensidecar.webhook.inject.InjectionSettings`, which the pure
patch logic takes). This module stays light (no kubernetes, no aiohttp): the CLI imports
it for ``--help``.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass

from tokensidecar import __version__
from tokensidecar.backends.settings import KUBERNETES_SETTINGS
from tokensidecar.config import (
    COMMON_SETTINGS,
    TLS_SETTINGS,
    VERIFY_MODES,
    Config,
    ConfigError,
    Setting,
    parse_bool,
    parse_listen,
    register,
)
from tokensidecar.webhook.confine import (
    parse_audiences,
    parse_image_patterns,
    parse_namespaces,
    parse_vault_addrs,
)
from tokensidecar.webhook.inject import InjectionSettings
from tokensidecar.webhook.quantity import check_quantity

__all__ = [
    "MAX_REVIEW_BYTES",
    "SETTINGS",
    "WEBHOOK_SETTINGS",
    "SelfSignedSettings",
    "WebhookSettings",
    "parse_positive_int",
]

# The API server reads at most 3 MiB of a request body that creates an object
# (MaxRequestBodyBytes in k8s.io/apiserver/pkg/server/config.go: "1.5MB is the recommended
# client request size ... the etcd server should accept ... we allow 2x as the largest
# request body size to be accepted and decoded in a write request"). The pod in a review
# is that object after defaulting, wrapped in a few KiB of AdmissionReview (uid, kinds,
# userInfo, options): 128 KiB of headroom covers both. The webhook only reviews CREATE,
# so there is no oldObject beside it.
MAX_REVIEW_BYTES = 3 * 1024 * 1024 + 128 * 1024


INJECT_MODES = ("sidecar", "gateway")


def parse_gateway_url(text: str) -> str:
    parts = urllib.parse.urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"{text!r} is not an http(s) URL")
    return text.strip().rstrip("/")


def parse_namespace(text: str) -> str:
    (namespace,) = parse_namespaces(text) or ("",)
    if namespace in ("", "*"):
        raise ValueError(f"{text!r} is not a namespace name")
    return namespace


def parse_localmodel_annotations(text: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except ValueError:
        raise ValueError("is not a JSON object") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("must be a JSON object of strings")
    for key in value:
        if key.startswith("tokensidecar.io/") or key in ("inject", "mode", "status"):
            raise ValueError(
                f"{key!r}: give annotation names without the prefix; inject and mode are implied"
            )
    return dict(value)


def parse_positive_int(text: str) -> int:
    value = int(text.strip())
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def parse_token_lifetime(text: str) -> int:
    # The API server refuses projected service-account tokens shorter than 10 minutes.
    value = int(text.strip())
    if value < 600:
        raise ValueError("must be at least 600 (the API server's minimum)")
    return value


def parse_port(text: str) -> int:
    value = int(text.strip())
    if not 1 <= value <= 65535:
        raise ValueError("must be a port number between 1 and 65535")
    return value


_LISTEN = register(
    Setting(
        "webhook_listen",
        "TOKENSIDECAR_WEBHOOK_LISTEN",
        "HTTPS address of /mutate, /healthz and /metrics (port 0 picks a free port).",
        default="0.0.0.0:8443",
        parse=parse_listen,
        section="webhook",
    ),
)

_SERVER_AND_INJECTION = register(
    Setting(
        "self_signed",
        "TOKENSIDECAR_SELF_SIGNED",
        "Generate a CA (shared by all replicas through --ca-secret-name) and a serving "
        "certificate at start, and patch the CA bundle into --webhook-config-name.",
        default="false",
        parse=parse_bool,
        is_bool=True,
        section="webhook",
    ),
    Setting(
        "webhook_config_name",
        "TOKENSIDECAR_WEBHOOK_CONFIG_NAME",
        "MutatingWebhookConfiguration whose webhooks get the CA bundle (--self-signed).",
        default="tokensidecar",
        section="webhook",
    ),
    Setting(
        "service_name",
        "TOKENSIDECAR_WEBHOOK_SERVICE",
        "Service in front of the webhook: the serving certificate names <service>, "
        "<service>.<namespace>, <service>.<namespace>.svc and <service>.<namespace>.svc.cluster.local.",
        default="tokensidecar-webhook",
        flag="--service-name",
        section="webhook",
    ),
    Setting(
        "service_namespace",
        "TOKENSIDECAR_WEBHOOK_NAMESPACE",
        "Namespace of that Service and of the CA Secret (default: the webhook pod's own).",
        flag="--service-namespace",
        section="webhook",
    ),
    Setting(
        "ca_secret_name",
        "TOKENSIDECAR_WEBHOOK_CA_SECRET",
        "Secret through which replicas share one CA (created by the first, read by the others).",
        default="tokensidecar-webhook-ca",
        flag="--ca-secret-name",
        section="webhook",
    ),
    Setting(
        "ca_configmap_name",
        "TOKENSIDECAR_WEBHOOK_CA_CONFIGMAP",
        "With --self-signed: ConfigMap (key ca.crt) where the CA certificate, never its key, is "
        "published for clients that verify the webhook, such as Prometheus. Empty: not published.",
        default="tokensidecar-webhook-ca",
        flag="--ca-configmap-name",
        section="webhook",
    ),
    Setting(
        "legacy_sidecar",
        "TOKENSIDECAR_LEGACY_SIDECAR",
        "For clusters without native sidecars (Kubernetes < 1.29): inject an init container "
        "running 'once' plus a regular container running 'run'.",
        default="false",
        parse=parse_bool,
        is_bool=True,
        section="webhook",
    ),
    Setting(
        "on_invalid",
        "TOKENSIDECAR_ON_INVALID",
        "A pod asks for injection with invalid annotations: deny it (the user sees which "
        "annotation is wrong) or skip injection and admit it with a warning.",
        default="deny",
        choices=("deny", "skip"),
        section="webhook",
    ),
    Setting(
        "max_body_bytes",
        "TOKENSIDECAR_WEBHOOK_MAX_BODY_BYTES",
        "Largest AdmissionReview accepted; a larger one is answered 413 unread. The default "
        "is the API server's request limit for an object (3 MiB) plus 128 KiB for the "
        "review around it and the fields defaulting adds.",
        default=str(MAX_REVIEW_BYTES),
        parse=parse_positive_int,
        section="webhook",
    ),
    Setting(
        "max_inflight_bytes",
        "TOKENSIDECAR_WEBHOOK_MAX_INFLIGHT_BYTES",
        "Total size of the AdmissionReviews read and parsed at once; a review past it waits "
        "its turn (in arrival order) with its bytes left in the socket. Parsing costs many "
        "times a body's size: this bounds the webhook's memory under a flood of large pods.",
        default=str(MAX_REVIEW_BYTES),
        parse=parse_positive_int,
        section="webhook",
    ),
    # What every injected sidecar gets unless the pod's annotations say otherwise.
    Setting(
        "sidecar_image",
        "TOKENSIDECAR_SIDECAR_IMAGE",
        "Image of the injected sidecar (annotation tokensidecar.io/image overrides).",
        default=f"ghcr.io/tokensidecar/tokensidecar:{__version__}",
        section="injection",
    ),
    Setting(
        "sidecar_cpu_request",
        "TOKENSIDECAR_SIDECAR_CPU_REQUEST",
        "CPU request of the injected sidecar (it is idle between refreshes).",
        default="10m",
        parse=check_quantity,
        section="injection",
    ),
    Setting(
        "sidecar_cpu_limit",
        "TOKENSIDECAR_SIDECAR_CPU_LIMIT",
        "CPU limit of the injected sidecar (default none: a throttled sidecar misses its "
        "refresh deadline, and CPU is compressible anyway).",
        parse=check_quantity,
        section="injection",
    ),
    Setting(
        "sidecar_memory_request",
        "TOKENSIDECAR_SIDECAR_MEMORY_REQUEST",
        "Memory request of the injected sidecar.",
        default="64Mi",
        parse=check_quantity,
        section="injection",
    ),
    Setting(
        "sidecar_memory_limit",
        "TOKENSIDECAR_SIDECAR_MEMORY_LIMIT",
        "Memory limit of the injected sidecar (measured steady RSS with the heaviest source, "
        "kubernetes-secret: 79 MiB; docs/performance.md).",
        default="128Mi",
        parse=check_quantity,
        section="injection",
    ),
    Setting(
        "sidecar_port",
        "TOKENSIDECAR_SIDECAR_PORT",
        "Port of the injected sidecar's /healthz and /readyz (shared pod network: change it "
        "if a model server already listens there).",
        default="8099",
        parse=parse_port,
        section="injection",
    ),
    Setting(
        "inject_vault_addr",
        "TOKENSIDECAR_INJECT_VAULT_ADDR",
        "VAULT_ADDR given to injected sidecars (annotation tokensidecar.io/vault-addr overrides).",
        section="injection",
    ),
    Setting(
        "inject_verify",
        "TOKENSIDECAR_INJECT_VERIFY",
        "Verification mode of injected sidecars (annotation tokensidecar.io/verify overrides).",
        default="whoami",
        choices=VERIFY_MODES,
        section="injection",
    ),
    Setting(
        "inject_hf_endpoint",
        "TOKENSIDECAR_INJECT_HF_ENDPOINT",
        "HF_ENDPOINT given to injected sidecars (default: the sidecar's own default, the public Hub).",
        section="injection",
    ),
    Setting(
        "vault_token_audience",
        "TOKENSIDECAR_VAULT_TOKEN_AUDIENCE",
        "Audience of the projected service-account token injected for Vault kubernetes and jwt "
        "auth: the Vault role's audience (bound_audiences for jwt) must match. The pod's own "
        "token, whose audience is the API server, is never what the sidecar sends to Vault.",
        default="vault",
        section="injection",
    ),
    # Gateway mode (docs/annotations.md): no sidecar, no Hugging Face credential in the pod; the
    # pod's own projected identity goes to the cluster's gateway instead.
    Setting(
        "inject_mode",
        "TOKENSIDECAR_INJECT_MODE",
        "Mode of a pod that does not choose one with tokensidecar.io/mode: sidecar (a token "
        "sidecar in the pod) or gateway (HF_ENDPOINT points at the gateway, which the pod "
        "authenticates to with its projected service-account token).",
        default="sidecar",
        choices=INJECT_MODES,
        section="injection",
    ),
    Setting(
        "inject_gateway_url",
        "TOKENSIDECAR_INJECT_GATEWAY_URL",
        "The gateway's URL, given as HF_ENDPOINT to pods in gateway mode (required for gateway "
        "mode, e.g. http://tokensidecar-gateway.tokensidecar-system.svc:8080).",
        parse=parse_gateway_url,
        section="injection",
    ),
    Setting(
        "inject_gateway_audience",
        "TOKENSIDECAR_INJECT_GATEWAY_AUDIENCE",
        "Audience of the projected service-account token given to pods in gateway mode: the "
        "gateway's --gateway-audience (TOKENSIDECAR_GATEWAY_AUDIENCE) must match.",
        default="tokensidecar-gateway",
        section="injection",
    ),
    Setting(
        "inject_gateway_policy",
        "TOKENSIDECAR_INJECT_GATEWAY_POLICY",
        "The gateway's policy file (the same ConfigMap the gateway reads, reloaded on change): a "
        "gateway-mode pod whose hf:// storage URI its service account may not read is denied at "
        "admission instead of failing at download time. Unset: no admission check.",
        flag="--gateway-policy",
        section="injection",
    ),
    # KServe's LocalModelCache (docs/annotations.md): its download Job pods carry no annotations of
    # ours; they are recognised by namespace and container name.
    Setting(
        "localmodel_namespace",
        "TOKENSIDECAR_LOCALMODEL_NAMESPACE",
        "Namespace of the download Jobs of KServe's LocalModelNode controller (its localModel.jobNamespace).",
        default="kserve-localmodel-jobs",
        parse=parse_namespace,
        section="injection",
    ),
    Setting(
        "localmodel_mode",
        "TOKENSIDECAR_LOCALMODEL_MODE",
        "How the LocalModelCache download pods (container kserve-localmodel-download, no "
        "tokensidecar.io/ annotations, in --localmodel-namespace) are injected: gateway, "
        "sidecar (with --localmodel-annotations), or off.",
        default="off",
        choices=(*INJECT_MODES, "off"),
        section="injection",
    ),
    Setting(
        "localmodel_annotations",
        "TOKENSIDECAR_LOCALMODEL_ANNOTATIONS",
        "The tokensidecar.io/ annotations a LocalModelCache download pod is injected with, "
        'as a JSON object of names without the prefix (e.g. {"source": "kubernetes-secret", '
        '"secret-name": "hf-cache-token"}); the webhook\'s defaults fill the rest.',
        default="{}",
        parse=parse_localmodel_annotations,
        section="injection",
    ),
    # What a pod's annotations may choose (docs/security.md). Anything outside is denied,
    # naming the annotation.
    Setting(
        "allowed_vault_addrs",
        "TOKENSIDECAR_ALLOWED_VAULT_ADDRS",
        "Vault addresses that annotation tokensidecar.io/vault-addr may choose, comma-separated "
        "scheme://host[:port] (default: only --inject-vault-addr). The pod's service-account "
        "token goes there.",
        parse=parse_vault_addrs,
        section="injection",
    ),
    Setting(
        "allow_insecure_vault",
        "TOKENSIDECAR_ALLOW_INSECURE_VAULT",
        "Allow plain http:// Vault addresses (the service-account token and the Hugging Face "
        "token would cross the network unencrypted).",
        default="false",
        parse=parse_bool,
        is_bool=True,
        section="injection",
    ),
    Setting(
        "allowed_token_audiences",
        "TOKENSIDECAR_ALLOWED_TOKEN_AUDIENCES",
        "Audiences that annotation tokensidecar.io/token-audience may choose, comma-separated, "
        "besides the source's own default (--vault-token-audience for vault, "
        "--oidc-token-audience for oidc-exchange; without this list, only that one). "
        "The projected service-account token minted for it goes to Vault or the Hub's token "
        "exchange, and is a credential wherever its audience is accepted; the gateway's "
        "(--inject-gateway-audience) is refused even if listed.",
        parse=parse_audiences,
        section="injection",
    ),
    Setting(
        "allowed_images",
        "TOKENSIDECAR_ALLOWED_IMAGES",
        "Images that annotation tokensidecar.io/image may choose, comma-separated; * matches "
        "any run of characters (e.g. ghcr.io/tokensidecar/tokensidecar:*). Default: only "
        "--sidecar-image. The sidecar holds the token.",
        parse=parse_image_patterns,
        section="injection",
    ),
    Setting(
        "allowed_secret_namespaces",
        "TOKENSIDECAR_ALLOWED_SECRET_NAMESPACES",
        "Namespaces besides the pod's own whose Secrets annotation tokensidecar.io/secret-namespace "
        "may name, comma-separated; * for any (default: the pod's own namespace only).",
        parse=parse_namespaces,
        section="injection",
    ),
    Setting(
        "oidc_token_audience",
        "TOKENSIDECAR_OIDC_TOKEN_AUDIENCE",
        "Audience of the projected service-account token injected for --source=oidc-exchange "
        "(must match the Hugging Face Trusted Publisher's audience).",
        default="https://huggingface.co",
        section="injection",
    ),
    Setting(
        "token_lifetime_seconds",
        "TOKENSIDECAR_PROJECTED_TOKEN_SECONDS",
        "Requested lifetime of the projected service-account token (kubelet renews it at 80%).",
        default="3600",
        parse=parse_token_lifetime,
        flag="--projected-token-seconds",
        section="injection",
    ),
)

#: The webhook's settings, in the order its reference lists them: where it listens, its
#: serving certificate (shared with the gateway, declared in tokensidecar.config), the rest.
WEBHOOK_SETTINGS: tuple[Setting, ...] = _LISTEN + TLS_SETTINGS + _SERVER_AND_INJECTION

# --self-signed talks to the API server: in-cluster by default, KUBECONFIG outside.
_KUBECONFIG = tuple(setting for setting in KUBERNETES_SETTINGS if setting.name == "kubeconfig")

SETTINGS: tuple[Setting, ...] = COMMON_SETTINGS + WEBHOOK_SETTINGS + _KUBECONFIG


@dataclass(frozen=True)
class SelfSignedSettings:
    """``--self-signed``: where the shared CA lives and what to keep patched with its bundle."""

    #: ``TOKENSIDECAR_WEBHOOK_CONFIG_NAME``: the MutatingWebhookConfiguration whose caBundle is kept.
    webhook_config_name: str
    #: ``TOKENSIDECAR_WEBHOOK_SERVICE``: the Service the serving certificate names.
    service_name: str
    #: ``TOKENSIDECAR_WEBHOOK_NAMESPACE``, else the pod's own.
    service_namespace: str | None
    #: ``TOKENSIDECAR_WEBHOOK_CA_SECRET``: the Secret holding the shared CA.
    ca_secret_name: str
    #: ``TOKENSIDECAR_WEBHOOK_CA_CONFIGMAP``: where the CA certificate is published, or None.
    ca_configmap_name: str | None
    #: ``KUBECONFIG``, or None for in-cluster config.
    kubeconfig: str | None


@dataclass(frozen=True)
class WebhookSettings:
    """Everything ``tokensidecar webhook`` needs, resolved and checked."""

    #: ``TOKENSIDECAR_WEBHOOK_LISTEN``: (host, port).
    listen: tuple[str, int]
    #: The certificate files; None with ``--self-signed``.
    tls_cert_file: str | None
    tls_key_file: str | None
    #: Set with ``--self-signed``: the webhook makes and publishes its own CA.
    self_signed: SelfSignedSettings | None
    #: ``TOKENSIDECAR_ON_INVALID``: what a pod with invalid annotations gets.
    on_invalid: str
    #: ``TOKENSIDECAR_WEBHOOK_MAX_BODY_BYTES`` and ``…_MAX_INFLIGHT_BYTES``.
    max_body_bytes: int
    max_inflight_bytes: int
    #: ``TOKENSIDECAR_INJECT_GATEWAY_POLICY``: the gateway's policy file, or None.
    gateway_policy_file: str | None
    #: The defaults stamped into every injected sidecar.
    injection: InjectionSettings

    @classmethod
    def resolve(cls, config: Config) -> WebhookSettings:
        """Certificates first, then the injection defaults (raises ConfigError)."""
        self_signed: SelfSignedSettings | None = None
        if config.get("self_signed", bool):
            for name, env in (
                ("tls_cert_file", "TOKENSIDECAR_TLS_CERT_FILE"),
                ("tls_key_file", "TOKENSIDECAR_TLS_KEY_FILE"),
            ):
                if config.optional(name, str):
                    raise ConfigError(env, "cannot be combined with --self-signed (choose one)")
            self_signed = SelfSignedSettings(
                webhook_config_name=config.get("webhook_config_name", str),
                service_name=config.get("service_name", str),
                service_namespace=config.optional("service_namespace", str),
                ca_secret_name=config.get("ca_secret_name", str),
                ca_configmap_name=config.optional("ca_configmap_name", str),
                kubeconfig=config.optional("kubeconfig", str),
            )
            cert_file = key_file = None
        else:
            cert_file = config.require("tls_cert_file", when="--self-signed is not set")
            key_file = config.require("tls_key_file", when="--self-signed is not set")
        return cls(
            listen=config.address("webhook_listen"),
            tls_cert_file=cert_file,
            tls_key_file=key_file,
            self_signed=self_signed,
            on_invalid=config.get("on_invalid", str),
            max_body_bytes=config.get("max_body_bytes", int),
            max_inflight_bytes=config.get("max_inflight_bytes", int),
            gateway_policy_file=config.optional("inject_gateway_policy", str),
            injection=_injection(config),
        )


def _injection(config: Config) -> InjectionSettings:
    """The injection defaults (:class:`InjectionSettings` checks how they combine)."""
    return InjectionSettings(
        image=config.get("sidecar_image", str),
        cpu_request=config.get("sidecar_cpu_request", str),
        cpu_limit=config.optional("sidecar_cpu_limit", str),
        memory_request=config.get("sidecar_memory_request", str),
        memory_limit=config.optional("sidecar_memory_limit", str),
        port=config.get("sidecar_port", int),
        legacy_sidecar=config.get("legacy_sidecar", bool),
        vault_addr=config.optional("inject_vault_addr", str),
        verify=config.get("inject_verify", str),
        hf_endpoint=config.optional("inject_hf_endpoint", str),
        vault_token_audience=config.get("vault_token_audience", str),
        oidc_token_audience=config.get("oidc_token_audience", str),
        token_lifetime_seconds=config.get("token_lifetime_seconds", int),
        allowed_vault_addrs=config.optional("allowed_vault_addrs", tuple) or (),
        allow_insecure_vault=config.get("allow_insecure_vault", bool),
        allowed_token_audiences=config.optional("allowed_token_audiences", tuple) or (),
        allowed_images=config.optional("allowed_images", tuple) or (),
        allowed_secret_namespaces=config.optional("allowed_secret_namespaces", tuple) or (),
        mode=config.get("inject_mode", str),
        gateway_url=config.optional("inject_gateway_url", str),
        gateway_audience=config.get("inject_gateway_audience", str),
        localmodel_namespace=config.get("localmodel_namespace", str),
        localmodel_mode=config.get("localmodel_mode", str),
        localmodel_annotations=config.optional("localmodel_annotations", dict) or {},
    )

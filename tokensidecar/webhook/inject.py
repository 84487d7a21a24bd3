"""Injection as a pure function: a pod (as the AdmissionReview carries it) in, a JSON patch out.

No I/O happens here, so every rule of the injection can be tested over plain dicts and the
HTTPS server around it stays thin. The function is written to *converge*, because the API
server may call the webhook several times for one pod: KServe's own pod mutator runs after
this webhook and appends a ``storage-initializer`` that reads ``HF_TOKEN`` from a Secret, and
with ``reinvocationPolicy: IfNeeded`` the pod comes back here. Each review therefore compares
the pod with what an injected pod must look like and patches only the difference — a second
review adds the mount and ``HF_TOKEN_PATH`` to the new container and nothing else, a third
returns an empty patch. The trade-off: a container that was already injected is never
rewritten, so changing a pod's annotations after injection has no effect (pods are
immutable after admission anyway).

The annotations are read into a typed plan per source (each value checked as it is read,
with the rules of :mod:`tokensidecar.webhook.confine` and the sidecar's own parsers), and the
plan renders the sidecar's environment under the names the sidecar's settings declare
(:mod:`tokensidecar.sidecar.settings`), so the two cannot drift apart.

Patches address list items by index, so the order of operations matters: changes to
existing containers come first, at their original indices, and the sidecar is inserted at
``/spec/initContainers/0`` last, so no earlier operation's index moves under it.
"""

from __future__ import annotations

import abc
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from tokensidecar.backends.settings import is_model_id
from tokensidecar.backends.vault import KvPath
from tokensidecar.config import SOURCES, VERIFY_MODES, ConfigError, parse_positive_duration
from tokensidecar.sidecar.settings import SETTINGS as RUN_SETTINGS
from tokensidecar.webhook.confine import image_allowed, normalize_vault_addr
from tokensidecar.webhook.quantity import check_quantity, parse_quantity

if TYPE_CHECKING:
    from tokensidecar.gateway.policy import Policy

__all__ = [
    "ANNOTATION_PREFIX",
    "INJECT_ANNOTATION",
    "STATUS_ANNOTATION",
    "InjectionSettings",
    "InvalidInjection",
    "inject",
    "wants_injection",
]

ANNOTATION_PREFIX = "tokensidecar.io/"
INJECT_ANNOTATION = ANNOTATION_PREFIX + "inject"
STATUS_ANNOTATION = ANNOTATION_PREFIX + "status"
STATUS_INJECTED = "injected"

# Names the webhook owns inside the pod. Convergence finds earlier work by these names.
SIDECAR_NAME = "tokensidecar"
LEGACY_INIT_NAME = "tokensidecar-init"
TOKEN_VOLUME = "tokensidecar-token"
# Gateway mode: the pod's projected identity for the gateway, where the token file would be.
IDENTITY_VOLUME = "tokensidecar-identity"
SA_TOKEN_VOLUME = "tokensidecar-sa-token"
KUBE_API_VOLUME = "tokensidecar-kube-api-access"

# Where the token lands: readers find it through HF_TOKEN_PATH, which huggingface_hub
# re-reads on every Hub request, so a rotation needs no restart.
TOKEN_DIR = "/var/run/tokensidecar"
TOKEN_PATH = TOKEN_DIR + "/token"
# Projected service-account token for Vault jwt/kubernetes auth and the HF token exchange;
# kubelet rewrites it before it expires and the sidecar reads it again at each login.
SA_TOKEN_DIR = "/var/run/secrets/tokensidecar"
SA_TOKEN_PATH = SA_TOKEN_DIR + "/token"
# The path in-cluster Kubernetes clients read their credentials from.
KUBE_API_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# Where a --source=file volume is mounted in the sidecar.
SOURCE_DIR = "/var/run/tokensidecar-source"

# tmpfs, because the file holds the HF token: it must never touch the node's disk. 1Mi
# is far above a 4 KiB token plus token.json and its temporary twin during a swap, and
# a memory-backed emptyDir counts against the pod's memory, so keep it small.
TOKEN_VOLUME_SPEC: dict[str, Any] = {
    "name": TOKEN_VOLUME,
    "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"},
}

# Variables that make huggingface_hub ignore HF_TOKEN_PATH: HF_TOKEN wins over the file,
# and HUGGING_FACE_HUB_TOKEN is its legacy spelling (huggingface_hub utils/_auth.py).
OVERRIDING_TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

# Non-root IDs of the sidecar (the distroless "nonroot" user). runAsNonRoot alone fails
# for an image whose USER is a name, so the numbers are set explicitly.
SIDECAR_UID = 65532

# The startup probe gates every later init container and the app: up to 2 minutes
# (120 x 1s) covers a Vault login, a Hub verification and a few backoff rounds.
STARTUP_PERIOD_SECONDS = 1
STARTUP_FAILURE_THRESHOLD = 120
# Readiness uses /healthz, not /readyz: an expired token must not take a replica that
# already loaded its model out of its Service (serving needs no token; the failure is
# visible in tokensidecar_ready and the rotation metrics).
PROBE_PERIOD_SECONDS = 10
LIVENESS_FAILURE_THRESHOLD = 3

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,511}$")

# Vault auth methods whose credentials the webhook can provide by itself. approle and
# token need secret files the user would have to mount into the sidecar.
WEBHOOK_VAULT_AUTH = ("kubernetes", "jwt")

_SOURCE_ANNOTATIONS: dict[str, frozenset[str]] = {
    "vault": frozenset(
        {"vault-addr", "vault-path", "vault-role", "vault-auth", "vault-auth-mount", "vault-kv-version"}
    ),
    "kubernetes-secret": frozenset({"secret-name", "secret-namespace"}),
    "file": frozenset({"source-volume", "source-file"}),
    "oidc-exchange": frozenset({"oidc-resource"}),
}
_GENERAL_ANNOTATIONS = frozenset(
    {
        "inject",
        "status",
        "mode",
        "source",
        "key",
        "model-id",
        "verify",
        "containers",
        "image",
        "cpu-request",
        "cpu-limit",
        "memory-request",
        "memory-limit",
        "token-audience",
        "refresh-interval",
    }
)
KNOWN_ANNOTATIONS = _GENERAL_ANNOTATIONS.union(*_SOURCE_ANNOTATIONS.values())
# What still means something in gateway mode: there is no sidecar to configure.
_GATEWAY_ANNOTATIONS = frozenset({"inject", "status", "mode", "containers"})
MODES = ("sidecar", "gateway")

# KServe's LocalModelNode controller names its download container so
# (pkg/controller/v1alpha1/localmodelnode/controller.go: DownloadContainerName).
LOCALMODEL_CONTAINER = "kserve-localmodel-download"


class InvalidInjection(ValueError):
    """The pod asks for injection but cannot get it; ``subject`` is the annotation at fault."""

    def __init__(self, subject: str, problem: str) -> None:
        super().__init__(f"{subject}: {problem}")
        self.subject = subject
        self.problem = problem


@dataclass(frozen=True)
class InjectionSettings:
    """The webhook's defaults for every injected sidecar (annotations override them)."""

    image: str
    cpu_request: str = "10m"
    cpu_limit: str | None = None
    memory_request: str = "64Mi"
    memory_limit: str | None = "128Mi"
    port: int = 8099
    legacy_sidecar: bool = False
    vault_addr: str | None = None
    verify: str = "whoami"
    hf_endpoint: str | None = None
    vault_token_audience: str = "vault"
    oidc_token_audience: str = "https://huggingface.co"
    token_lifetime_seconds: int = 3600
    # What annotations may choose (tokensidecar.webhook.confine); empty = the defaults only.
    allowed_vault_addrs: tuple[str, ...] = ()
    allow_insecure_vault: bool = False
    #: Beyond ``vault_token_audience`` and ``oidc_token_audience``; never ``gateway_audience``.
    allowed_token_audiences: tuple[str, ...] = ()
    allowed_images: tuple[str, ...] = ()
    allowed_secret_namespaces: tuple[str, ...] = ()
    # Gateway mode and KServe's LocalModelCache download pods.
    mode: str = "sidecar"
    gateway_url: str | None = None
    gateway_audience: str = "tokensidecar-gateway"
    #: The gateway's policy (--gateway-policy), in force now: a gateway-mode pod whose
    #: ``hf://`` model its service account may not read is denied at admission.
    gateway_policy: Policy | None = None
    localmodel_namespace: str = "kserve-localmodel-jobs"
    localmodel_mode: str = "off"
    localmodel_annotations: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for env, mode in (
            ("TOKENSIDECAR_INJECT_MODE", self.mode),
            ("TOKENSIDECAR_LOCALMODEL_MODE", self.localmodel_mode),
        ):
            if mode == "gateway" and not self.gateway_url:
                raise ConfigError("", f"TOKENSIDECAR_INJECT_GATEWAY_URL is required when {env}=gateway")
        if self.vault_addr is not None:
            try:
                normalize_vault_addr(self.vault_addr)
            except ValueError as exc:
                raise ConfigError("TOKENSIDECAR_INJECT_VAULT_ADDR", str(exc)) from None
        if not self.allow_insecure_vault:
            for env, addresses in (
                ("TOKENSIDECAR_INJECT_VAULT_ADDR", (self.vault_addr or "",)),
                ("TOKENSIDECAR_ALLOWED_VAULT_ADDRS", self.allowed_vault_addrs),
            ):
                for address in addresses:
                    if address.lower().startswith("http://"):
                        raise ConfigError(
                            env, f"{address!r} is plain http:// (set --allow-insecure-vault to allow it)"
                        )


# --- plans: what a pod's annotations ask for, checked, and the env each renders ---------

# The variable the sidecar (run, once) reads each of its settings from, as the declarations say
# (tokensidecar.sidecar.settings): what the webhook writes is what the sidecar reads.
_SIDECAR_ENV = {setting.name: setting.env for setting in RUN_SETTINGS}


def _env_name(setting: str) -> str:
    """``vault_path`` → ``TOKENSIDECAR_VAULT_PATH``; a LookupError for a setting the sidecar lacks."""
    try:
        return _SIDECAR_ENV[setting]
    except KeyError:
        raise LookupError(f"{setting!r} is not a setting of the sidecar") from None


def _env(**values: str | None) -> list[dict[str, Any]]:
    """Env entries of the sidecar's settings, in the order given; a None value is left out."""
    return [{"name": _env_name(name), "value": value} for name, value in values.items() if value is not None]


class SourcePlan(abc.ABC):
    """One source's part of the plan: its env, and what the sidecar must be given for it.

    Each source says all three of what it needs, as a field or a class attribute, so its
    plan reads whole (no default here: a dataclass field would inherit it)."""

    #: The value of ``TOKENSIDECAR_SOURCE``.
    name: ClassVar[str]
    #: The audience of the projected service-account token the source logs in with, if any.
    sa_token_audience: str | None
    #: The source reads the Kubernetes API, so the sidecar needs the service-account files.
    needs_kube_api: bool
    #: The pod volume the source reads the token file from, if any.
    source_volume: str | None

    @abc.abstractmethod
    def env(self) -> list[dict[str, Any]]:
        """The source's settings, as the sidecar's environment."""


@dataclass(frozen=True)
class VaultPlan(SourcePlan):
    """A KV secret read with a Vault login (kubernetes or jwt) by a projected token."""

    name: ClassVar[str] = "vault"
    needs_kube_api = False
    source_volume = None
    #: ``VAULT_ADDR``: the pod's (an allowed one) or the webhook's default.
    address: str
    #: ``<mount>/<path>`` as the pod wrote it: checked with the sidecar's own parser
    #: (:class:`~tokensidecar.backends.vault.KvPath`), passed on unchanged.
    path: str
    #: ``kubernetes`` or ``jwt`` (:data:`WEBHOOK_VAULT_AUTH`).
    auth: str
    role: str
    auth_mount: str | None
    #: ``"1"``, ``"2"``, or None for the sidecar's own detection.
    kv_version: str | None
    sa_token_audience: str

    def env(self) -> list[dict[str, Any]]:
        return _env(
            vault_addr=self.address,
            vault_path=self.path,
            vault_auth=self.auth,
            vault_role=self.role,
            vault_auth_mount=self.auth_mount,
            vault_kv_version=self.kv_version,
            vault_jwt_file=SA_TOKEN_PATH,
        )


@dataclass(frozen=True)
class SecretPlan(SourcePlan):
    """A Kubernetes Secret, watched through the API with the pod's service account."""

    name: ClassVar[str] = "kubernetes-secret"
    sa_token_audience = None
    needs_kube_api = True
    source_volume = None
    secret_name: str
    #: The Secret's namespace when the pod names one (and may); None for the pod's own.
    namespace: str | None

    def env(self) -> list[dict[str, Any]]:
        env = _env(secret_name=self.secret_name, secret_namespace=self.namespace)
        if self.namespace is None:
            # The downward API names the namespace even when no service-account files are mounted.
            env.append(
                {
                    "name": _env_name("secret_namespace"),
                    "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
                }
            )
        return env


@dataclass(frozen=True)
class FilePlan(SourcePlan):
    """A token file in one of the pod's own volumes."""

    name: ClassVar[str] = "file"
    sa_token_audience = None
    needs_kube_api = False
    source_volume: str
    #: The token file's path inside that volume (relative, never leaving it).
    file: str

    def env(self) -> list[dict[str, Any]]:
        return _env(source_file=f"{SOURCE_DIR}/{self.file}")


@dataclass(frozen=True)
class OidcPlan(SourcePlan):
    """A Hugging Face token exchanged for a projected service-account token."""

    name: ClassVar[str] = "oidc-exchange"
    needs_kube_api = False
    source_volume = None
    #: The resource requested in the token exchange.
    resource: str
    sa_token_audience: str

    def env(self) -> list[dict[str, Any]]:
        return _env(oidc_resource=self.resource, oidc_token_file=SA_TOKEN_PATH)


@dataclass(frozen=True)
class VerificationPlan:
    """The key, what the Hub must confirm, and how often to read: the same for every source."""

    #: ``TOKENSIDECAR_KEY``; None when not asked, and for the file source, which names its
    #: file with it instead.
    key: str | None
    verify: str
    model_id: str | None
    #: The webhook's ``--inject-hf-endpoint``; None leaves the sidecar's default.
    hf_endpoint: str | None
    refresh_interval: str | None

    def env(self) -> list[dict[str, Any]]:
        return _env(
            key=self.key,
            verify=self.verify,
            model_id=self.model_id,
            hf_endpoint=self.hf_endpoint,
            refresh_interval=self.refresh_interval,
        )


@dataclass(frozen=True)
class SidecarPlan:
    """A pod in sidecar mode: the sidecar to inject, and the containers that read its token."""

    source: SourcePlan
    verification: VerificationPlan
    image: str
    resources: dict[str, dict[str, str]]
    #: The containers named by ``tokensidecar.io/containers``; None for every one.
    targets: frozenset[str] | None

    def env(self) -> list[dict[str, Any]]:
        """The sidecar's settings from the annotations, as its environment."""
        return [*_env(source=self.source.name), *self.source.env(), *self.verification.env()]


@dataclass(frozen=True)
class GatewayPlan:
    """A pod in gateway mode: no sidecar, only the containers that reach the gateway."""

    targets: frozenset[str] | None


Plan = SidecarPlan | GatewayPlan


def wants_injection(pod: Mapping[str, Any]) -> bool:
    """True when the pod carries ``tokensidecar.io/inject: "true"`` (ASCII case aside).

    Exactly what the ``matchConditions`` expression of the MutatingWebhookConfiguration
    asks (``...['tokensidecar.io/inject'].lowerAscii() == 'true'``), so the webhook never
    decides differently from the API server that chose to call it: no whitespace is
    stripped (``" true"`` is never sent here), and only ASCII letters change case (CEL's
    ``lowerAscii``, unlike ``str.lower``).
    """
    value = _annotations(pod).get(INJECT_ANNOTATION)
    return isinstance(value, str) and value.translate(_ASCII_LOWER) == "true"


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def inject(
    pod: Mapping[str, Any], *, settings: InjectionSettings, namespace: str | None = None
) -> list[dict[str, Any]]:
    """The RFC 6902 patch that makes ``pod`` an injected pod; ``[]`` when it already is one
    or does not ask for injection. Raises :class:`InvalidInjection` for bad annotations.
    ``namespace`` (the review's) stands in when the pod itself names none.

    A pod asks with ``tokensidecar.io/inject: "true"``; a LocalModelCache download pod
    (see :func:`is_localmodel_download`) asks through the webhook's ``--localmodel-*``
    settings instead."""
    namespace = _pod_namespace(pod) or namespace
    localmodel = not wants_injection(pod)
    if localmodel and not is_localmodel_download(pod, settings=settings, namespace=namespace):
        return []
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        raise InvalidInjection("spec", "the pod has no spec")
    if not localmodel:
        plan = _read_annotations(pod, ours=_our_annotations(pod), settings=settings, namespace=namespace)
    else:
        ours = {"inject": "true", "mode": settings.localmodel_mode, **settings.localmodel_annotations}
        try:
            plan = _read_annotations(pod, ours=ours, settings=settings, namespace=namespace)
        except InvalidInjection as exc:
            # The pod carries none of these: the webhook's own setting is at fault.
            raise InvalidInjection(
                f"TOKENSIDECAR_LOCALMODEL_ANNOTATIONS ({exc.subject})", exc.problem
            ) from None
    patch: list[dict[str, Any]] = []
    patch += _status_patch(pod)
    patch += _volume_patch(spec, plan=plan, settings=settings)
    patch += _target_patch(spec, plan=plan, settings=settings)
    if isinstance(plan, SidecarPlan):
        patch += _sidecar_patch(spec, plan=plan, settings=settings)
    elif settings.gateway_policy is not None:
        _check_gateway_policy(pod, spec, namespace=namespace, policy=settings.gateway_policy)
    return patch


# Where a KServe pod names its model: the annotation the InferenceService controller puts on
# the predictor pod (kserve pkg/constants: StorageInitializerSourceUriInternalAnnotationKey),
# and the first argument of the storage-initializer and of the LocalModelCache download
# container (``[<storage URI>, <destination>]``).
STORAGE_URI_ANNOTATION = "internal.serving.kserve.io/storage-initializer-sourceuri"
_STORAGE_URI_CONTAINERS = frozenset({"storage-initializer", LOCALMODEL_CONTAINER})


def storage_uris(pod: Mapping[str, Any]) -> list[str]:
    """Every storage URI the pod is about to download, in the order found, once each."""
    found: list[str] = []
    annotated = _annotations(pod).get(STORAGE_URI_ANNOTATION)
    if isinstance(annotated, str) and annotated:
        found.append(annotated)
    spec = pod.get("spec")
    for key in ("initContainers", "containers"):
        for container in _list(spec, key):
            if not isinstance(container, Mapping) or container.get("name") not in _STORAGE_URI_CONTAINERS:
                continue
            args = container.get("args")
            if isinstance(args, list) and args and isinstance(args[0], str) and args[0] not in found:
                found.append(args[0])
    return found


def _check_gateway_policy(
    pod: Mapping[str, Any], spec: Mapping[str, Any], *, namespace: str | None, policy: Policy
) -> None:
    """Deny now what the gateway would refuse at download time (a pod stuck in Init otherwise)."""
    from tokensidecar.gateway.policy import admission_decision

    account = spec.get("serviceAccountName")
    service_account = account if isinstance(account, str) and account else "default"
    for uri in storage_uris(pod):
        try:
            decision = admission_decision(
                policy, namespace=namespace or "default", service_account=service_account, storage_uri=uri
            )
        except ValueError as exc:
            raise InvalidInjection("storageUri", str(exc)) from None
        if decision is not None and not decision.allowed:
            raise InvalidInjection(
                "storageUri",
                f"{uri} may not be read by service account {namespace}/{service_account} under the "
                f"gateway's policy ({decision.reason})",
            )


def is_localmodel_download(
    pod: Mapping[str, Any], *, settings: InjectionSettings, namespace: str | None
) -> bool:
    """A download pod of KServe's LocalModelNode controller that the webhook is set to inject:
    in ``--localmodel-namespace``, with the ``kserve-localmodel-download`` container, and no
    ``tokensidecar.io/`` annotation of its own (``status``, which this webhook writes, aside)."""
    if settings.localmodel_mode == "off" or namespace != settings.localmodel_namespace:
        return False
    if any(
        isinstance(key, str) and key.startswith(ANNOTATION_PREFIX) and key != STATUS_ANNOTATION
        for key in _annotations(pod)
    ):
        return False
    spec = pod.get("spec")
    return any(
        isinstance(item, Mapping) and item.get("name") == LOCALMODEL_CONTAINER
        for item in _list(spec, "containers")
    )


# --- annotations ------------------------------------------------------------------------


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = pod.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    return annotations if isinstance(annotations, Mapping) else {}


def _pod_namespace(pod: Mapping[str, Any]) -> str | None:
    metadata = pod.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    return namespace if isinstance(namespace, str) and namespace else None


def _our_annotations(pod: Mapping[str, Any]) -> dict[str, str]:
    """The pod's ``tokensidecar.io/`` annotations by short name, values stripped."""
    ours: dict[str, str] = {}
    for key, value in _annotations(pod).items():
        if not isinstance(key, str) or not key.startswith(ANNOTATION_PREFIX):
            continue
        short = key[len(ANNOTATION_PREFIX) :]
        if short not in KNOWN_ANNOTATIONS:
            raise InvalidInjection(key, f"unknown annotation (known: {', '.join(sorted(KNOWN_ANNOTATIONS))})")
        if not isinstance(value, str):
            raise InvalidInjection(key, "annotation values must be strings")
        ours[short] = value.strip()
    return ours


def _name(short: str) -> str:
    return ANNOTATION_PREFIX + short


def _gateway_plan(ours: Mapping[str, str], *, settings: InjectionSettings) -> GatewayPlan:
    """Gateway mode: which containers, and nothing else to choose."""
    for short in sorted(ours.keys() - _GATEWAY_ANNOTATIONS):
        raise InvalidInjection(_name(short), "does not apply to mode 'gateway' (no sidecar is injected)")
    if not settings.gateway_url:
        raise InvalidInjection(
            _name("mode"), "gateway mode needs the webhook's --inject-gateway-url, which is not set"
        )
    return GatewayPlan(targets=_targets(ours))


def _targets(ours: Mapping[str, str]) -> frozenset[str] | None:
    if "containers" not in ours:
        return None
    names = [part.strip() for part in ours["containers"].split(",") if part.strip()]
    if not names:
        raise InvalidInjection(_name("containers"), "lists no container")
    for container_name in names:
        if not _DNS_LABEL.match(container_name):
            raise InvalidInjection(_name("containers"), f"{container_name!r} is not a container name")
        if container_name in (SIDECAR_NAME, LEGACY_INIT_NAME):
            raise InvalidInjection(_name("containers"), f"{container_name!r} is the sidecar itself")
    return frozenset(names)


@dataclass(frozen=True)
class _Asked:
    """A pod's annotations (short names), and the source they are read for."""

    ours: Mapping[str, str]
    source: str

    def get(self, short: str, default: str | None = None) -> str | None:
        return self.ours.get(short, default)

    def __contains__(self, short: str) -> bool:
        return short in self.ours

    def required(self, short: str, what: str) -> str:
        value = self.ours.get(short, "")
        if not value:
            raise InvalidInjection(_name(short), f"is required for source {self.source!r} ({what})")
        return value


def _read_annotations(
    pod: Mapping[str, Any], *, ours: Mapping[str, str], settings: InjectionSettings, namespace: str | None
) -> Plan:
    """Annotations → a checked plan: the mode, the source's plan, then what every sidecar
    takes (verification, image, resources, targets). Each piece is checked as it is read,
    in this order, so a pod with several faults is always told about the same one first."""
    mode = ours.get("mode", settings.mode)
    if mode not in MODES:
        raise InvalidInjection(_name("mode"), f"{mode!r} is not one of {', '.join(MODES)}")
    if mode == "gateway":
        return _gateway_plan(ours, settings=settings)
    asked = _Asked(ours=ours, source=_source(ours))
    source = _source_plan(asked, pod=pod, settings=settings, namespace=namespace)
    _check_token_audience(asked, source=source, settings=settings)
    return SidecarPlan(
        source=source,
        verification=_verification_plan(asked, settings=settings),
        image=_sidecar_image(asked, settings=settings),
        resources=_resources(ours, settings=settings),
        targets=_targets(ours),
    )


def _source(ours: Mapping[str, str]) -> str:
    """The source asked for, with no annotation of another source beside it."""
    source = ours.get("source", "vault")
    if source not in SOURCES:
        raise InvalidInjection(_name("source"), f"{source!r} is not one of {', '.join(SOURCES)}")
    for other, keys in _SOURCE_ANNOTATIONS.items():
        if other == source:
            continue
        for short in sorted(keys & ours.keys()):
            raise InvalidInjection(_name(short), f"does not apply to source {source!r} (it is for {other!r})")
    return source


def _source_plan(
    asked: _Asked, *, pod: Mapping[str, Any], settings: InjectionSettings, namespace: str | None
) -> SourcePlan:
    if asked.source == "vault":
        return _vault_plan(asked, settings=settings)
    if asked.source == "kubernetes-secret":
        return _secret_plan(asked, settings=settings, namespace=namespace)
    if asked.source == "file":
        return _file_plan(asked, pod=pod)
    return _oidc_plan(asked, settings=settings)


def _vault_plan(asked: _Asked, *, settings: InjectionSettings) -> VaultPlan:
    address = _vault_addr(asked, settings=settings)
    path = _vault_path(asked)
    auth = _vault_auth(asked)
    return VaultPlan(
        address=address,
        path=path,
        auth=auth,
        role=asked.required("vault-role", f"the Vault role for {auth} auth"),
        auth_mount=asked.get("vault-auth-mount") or None,
        kv_version=_vault_kv_version(asked),
        # A projected token with a dedicated audience for both methods: Vault (its kubernetes
        # auth through a TokenReview with the role's audience) accepts it, and anyone who reads
        # it there cannot replay it against the API server, which the pod's own
        # service-account token would allow.
        sa_token_audience=asked.get("token-audience") or _default_audience(asked.source, settings=settings),
    )


def _vault_addr(asked: _Asked, *, settings: InjectionSettings) -> str:
    """The pod's Vault address if it may choose it, else the webhook's default."""
    address = asked.get("vault-addr") or settings.vault_addr
    if not address:
        raise InvalidInjection(
            _name("vault-addr"), "is required: the webhook has no default (--inject-vault-addr)"
        )
    if "vault-addr" in asked:
        _confine_vault_addr(address, settings=settings, subject=_name("vault-addr"))
    return address


def _vault_path(asked: _Asked) -> str:
    """The KV secret as the pod wrote it, if the sidecar's own parser reads it."""
    path = asked.required("vault-path", "the KV secret as <mount>/<path>, e.g. secret/hf/model-a")
    try:
        KvPath.parse(path)
    except ValueError:
        raise InvalidInjection(_name("vault-path"), f"{path!r} is not <mount>/<path>") from None
    return path


def _vault_auth(asked: _Asked) -> str:
    auth = asked.get("vault-auth", "kubernetes") or ""
    if auth not in WEBHOOK_VAULT_AUTH:
        raise InvalidInjection(
            _name("vault-auth"),
            f"{auth!r} is not one of {', '.join(WEBHOOK_VAULT_AUTH)} "
            "(approle and token need credential files the webhook cannot provide)",
        )
    return auth


def _vault_kv_version(asked: _Asked) -> str | None:
    kv_version = asked.get("vault-kv-version")
    if kv_version is not None and kv_version not in ("1", "2"):
        raise InvalidInjection(_name("vault-kv-version"), "must be 1 or 2")
    return kv_version


def _secret_plan(asked: _Asked, *, settings: InjectionSettings, namespace: str | None) -> SecretPlan:
    secret_name = asked.required("secret-name", "the Secret holding the token")
    if not _DNS_SUBDOMAIN.match(secret_name):
        raise InvalidInjection(_name("secret-name"), f"{secret_name!r} is not a valid Secret name")
    return SecretPlan(
        secret_name=secret_name, namespace=_secret_namespace(asked, settings=settings, namespace=namespace)
    )


def _secret_namespace(asked: _Asked, *, settings: InjectionSettings, namespace: str | None) -> str | None:
    """The namespace the pod names for its Secret, if it may; None for the pod's own."""
    secret_namespace = asked.get("secret-namespace")
    if not secret_namespace:
        return None
    if not _DNS_LABEL.match(secret_namespace):
        raise InvalidInjection(_name("secret-namespace"), f"{secret_namespace!r} is not a namespace")
    _confine_secret_namespace(
        secret_namespace, namespace=namespace, settings=settings, subject=_name("secret-namespace")
    )
    return secret_namespace


def _file_plan(asked: _Asked, *, pod: Mapping[str, Any]) -> FilePlan:
    volume = asked.required("source-volume", "the pod volume holding the token file")
    volumes = [v.get("name") for v in _list(pod.get("spec"), "volumes") if isinstance(v, Mapping)]
    if volume not in volumes:
        raise InvalidInjection(_name("source-volume"), f"the pod has no volume named {volume!r}")
    if volume in (TOKEN_VOLUME, SA_TOKEN_VOLUME, KUBE_API_VOLUME):
        raise InvalidInjection(_name("source-volume"), f"{volume!r} is the webhook's own volume")
    relative = asked.get("source-file") or asked.get("key") or "token"
    parts = relative.split("/")
    if relative.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise InvalidInjection(
            _name("source-file"), f"{relative!r} must be a relative path inside the volume"
        )
    return FilePlan(source_volume=volume, file=relative)


def _oidc_plan(asked: _Asked, *, settings: InjectionSettings) -> OidcPlan:
    return OidcPlan(
        resource=asked.required("oidc-resource", "the resource requested in the token exchange"),
        sa_token_audience=asked.get("token-audience") or _default_audience(asked.source, settings=settings),
    )


def _check_token_audience(asked: _Asked, *, source: SourcePlan, settings: InjectionSettings) -> None:
    """``tokensidecar.io/token-audience``: not empty, only for a source that logs in with one,
    and one the webhook allows."""
    if "token-audience" not in asked:
        return
    audience = asked.get("token-audience")
    if not audience:
        raise InvalidInjection(_name("token-audience"), "must not be empty")
    if source.sa_token_audience is None:
        raise InvalidInjection(_name("token-audience"), f"does not apply to source {asked.source!r}")
    _confine_token_audience(
        audience,
        default=_default_audience(asked.source, settings=settings),
        settings=settings,
        subject=_name("token-audience"),
    )


def _default_audience(source: str, *, settings: InjectionSettings) -> str:
    """The audience a source's projected token gets without ``tokensidecar.io/token-audience``,
    and the one it may always choose: Vault's for ``vault``, the Hub's for ``oidc-exchange``."""
    return settings.vault_token_audience if source == "vault" else settings.oidc_token_audience


def _verification_plan(asked: _Asked, *, settings: InjectionSettings) -> VerificationPlan:
    key = _key(asked)
    verify = asked.get("verify", settings.verify) or ""
    if verify not in VERIFY_MODES:
        raise InvalidInjection(_name("verify"), f"{verify!r} is not one of {', '.join(VERIFY_MODES)}")
    return VerificationPlan(
        key=None if asked.source == "file" else key,
        verify=verify,
        model_id=_model_id(asked, verify=verify),
        hf_endpoint=settings.hf_endpoint or None,
        refresh_interval=_refresh_interval(asked),
    )


def _key(asked: _Asked) -> str | None:
    key = asked.get("key")
    if key is not None and (not key or any(c.isspace() for c in key)):
        raise InvalidInjection(_name("key"), "must be a non-empty key without whitespace")
    return key


def _model_id(asked: _Asked, *, verify: str) -> str | None:
    model_id = asked.get("model-id")
    if model_id is None:
        if verify in ("repo", "scope"):
            raise InvalidInjection(
                _name("model-id"), f"is required when tokensidecar.io/verify is {verify!r}"
            )
        return None
    if not is_model_id(model_id):
        raise InvalidInjection(_name("model-id"), f"{model_id!r} is not <org>/<name>")
    return model_id


def _refresh_interval(asked: _Asked) -> str | None:
    interval = asked.get("refresh-interval")
    if interval is not None:
        try:
            parse_positive_duration(interval)
        except ValueError as exc:
            raise InvalidInjection(_name("refresh-interval"), str(exc)) from None
    return interval


def _sidecar_image(asked: _Asked, *, settings: InjectionSettings) -> str:
    image = asked.get("image", settings.image) or ""
    if not _IMAGE.match(image):
        raise InvalidInjection(_name("image"), f"{image!r} is not an image reference")
    if not image_allowed(image, default=settings.image, patterns=settings.allowed_images):
        raise InvalidInjection(
            _name("image"),
            f"{image!r} is not an allowed image (the default {settings.image!r} or "
            f"--allowed-images: {', '.join(settings.allowed_images) or 'none'})",
        )
    return image


def _confine_vault_addr(address: str, *, settings: InjectionSettings, subject: str) -> None:
    """An annotation's Vault address: the default or a listed one, https unless allowed."""
    try:
        chosen = normalize_vault_addr(address)
    except ValueError as exc:
        raise InvalidInjection(subject, str(exc)) from None
    if chosen.startswith("http://") and not settings.allow_insecure_vault:
        raise InvalidInjection(
            subject, f"{address!r} is plain http:// (the webhook requires https for Vault)"
        )
    allowed = set(settings.allowed_vault_addrs)
    if settings.vault_addr:
        allowed.add(normalize_vault_addr(settings.vault_addr))
    if chosen not in allowed:
        raise InvalidInjection(
            subject,
            f"{address!r} is not an allowed Vault address "
            f"(--inject-vault-addr or --allowed-vault-addrs: {', '.join(sorted(allowed)) or 'none'})",
        )


def _confine_token_audience(
    audience: str, *, default: str, settings: InjectionSettings, subject: str
) -> None:
    """An annotation's audience: the source's own default (``--vault-token-audience`` for
    Vault, ``--oidc-token-audience`` for the exchange) or a listed one, never the gateway's.

    The token minted for it is sent to Vault or the Hub's exchange, where whoever reads it can
    replay it at any service that accepts its audience: a Vault source may not pick the Hub's
    audience (Vault would then hold a token the Hub exchanges), nor the reverse, unless listed."""
    # The gateway takes a token of its audience as the pod's identity (a TokenReview names the
    # service account, and its policy grants that account models), so one sent elsewhere would
    # let whoever reads it there download as the pod. No list may allow that.
    if audience == settings.gateway_audience:
        raise InvalidInjection(
            subject,
            f"{audience!r} is the gateway's audience (--inject-gateway-audience): a token for it "
            "is the pod's identity at the gateway and is never sent elsewhere",
        )
    allowed = {default, *settings.allowed_token_audiences}
    allowed.discard(settings.gateway_audience)
    if audience not in allowed:
        raise InvalidInjection(
            subject,
            f"{audience!r} is not an allowed token audience (the source's default or "
            f"--allowed-token-audiences: {', '.join(sorted(allowed)) or 'none'})",
        )


def _confine_secret_namespace(
    secret_namespace: str, *, namespace: str | None, settings: InjectionSettings, subject: str
) -> None:
    """A Secret outside the pod's own namespace only where --allowed-secret-namespaces says."""
    if secret_namespace == namespace:
        return
    allowed = settings.allowed_secret_namespaces
    if "*" in allowed or secret_namespace in allowed:
        return
    raise InvalidInjection(
        subject,
        f"{secret_namespace!r} is not the pod's namespace ({namespace or 'unknown'}) "
        f"nor in --allowed-secret-namespaces ({', '.join(allowed) or 'none'})",
    )


def _resources(ours: Mapping[str, str], *, settings: InjectionSettings) -> dict[str, dict[str, str]]:
    chosen: dict[str, tuple[str, str | None]] = {}  # "cpu-request" → (value, annotation or None)
    defaults = {
        "cpu-request": settings.cpu_request,
        "cpu-limit": settings.cpu_limit,
        "memory-request": settings.memory_request,
        "memory-limit": settings.memory_limit,
    }
    for short, default in defaults.items():
        if short in ours:
            try:
                chosen[short] = (check_quantity(ours[short]), ANNOTATION_PREFIX + short)
            except ValueError as exc:
                raise InvalidInjection(ANNOTATION_PREFIX + short, str(exc)) from None
        elif default:
            chosen[short] = (default, None)
    for kind in ("cpu", "memory"):
        request, limit = chosen.get(f"{kind}-request"), chosen.get(f"{kind}-limit")
        if request and limit and parse_quantity(request[0]) > parse_quantity(limit[0]):
            # Name the annotation the user wrote; the other value is the webhook's default.
            culprit = request[1] or limit[1] or f"{ANNOTATION_PREFIX}{kind}-limit"
            raise InvalidInjection(
                culprit, f"{kind} request {request[0]} is above the {kind} limit {limit[0]}"
            )
    resources: dict[str, dict[str, str]] = {}
    for short, (value, _) in chosen.items():
        kind, bound = short.split("-")
        resources.setdefault("requests" if bound == "request" else "limits", {})[kind] = value
    return resources


# --- patch pieces -----------------------------------------------------------------------


def _pointer(*parts: str | int) -> str:
    """RFC 6901 JSON pointer: ``~`` → ``~0`` and ``/`` → ``~1`` (annotation keys hold a ``/``)."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


def _list(parent: Any, key: str) -> list[Any]:
    value = parent.get(key) if isinstance(parent, Mapping) else None
    return value if isinstance(value, list) else []


def _status_patch(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    metadata = pod.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    if isinstance(annotations, Mapping) and annotations.get(STATUS_ANNOTATION) == STATUS_INJECTED:
        return []
    if isinstance(annotations, Mapping):
        op = "replace" if STATUS_ANNOTATION in annotations else "add"
        return [
            {
                "op": op,
                "path": _pointer("metadata", "annotations", STATUS_ANNOTATION),
                "value": STATUS_INJECTED,
            }
        ]
    # A LocalModelCache download pod may carry no annotations at all.
    return [{"op": "add", "path": "/metadata/annotations", "value": {STATUS_ANNOTATION: STATUS_INJECTED}}]


def _volumes_wanted(
    spec: Mapping[str, Any], *, plan: SidecarPlan, settings: InjectionSettings
) -> list[dict[str, Any]]:
    wanted: list[dict[str, Any]] = [TOKEN_VOLUME_SPEC]
    if plan.source.sa_token_audience:
        wanted.append(
            {
                "name": SA_TOKEN_VOLUME,
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": plan.source.sa_token_audience,
                                "expirationSeconds": settings.token_lifetime_seconds,
                                "path": "token",
                            }
                        }
                    ]
                },
            }
        )
    if plan.source.needs_kube_api and _kube_api_mount(spec) is None:
        # automountServiceAccountToken: false (or a review before the ServiceAccount
        # admission plugin ran): give the sidecar the same three files kubelet would.
        wanted.append(
            {
                "name": KUBE_API_VOLUME,
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": "namespace",
                                        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                                    }
                                ]
                            }
                        },
                    ]
                },
            }
        )
    return wanted


def _identity_volume(settings: InjectionSettings) -> dict[str, Any]:
    # The kubelet rewrites the token before it expires; huggingface_hub reads the file again
    # on every request (HF_TOKEN_PATH), so the gateway always sees a live identity.
    return {
        "name": IDENTITY_VOLUME,
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": settings.gateway_audience,
                        "expirationSeconds": settings.token_lifetime_seconds,
                        "path": "token",
                    }
                }
            ]
        },
    }


def _volume_patch(
    spec: Mapping[str, Any], *, plan: Plan, settings: InjectionSettings
) -> list[dict[str, Any]]:
    existing = {v.get("name") for v in _list(spec, "volumes") if isinstance(v, Mapping)}
    if isinstance(plan, GatewayPlan):
        missing = [_identity_volume(settings)] if IDENTITY_VOLUME not in existing else []
    elif _sidecar_present(spec):
        # Already injected: only the token volume is guaranteed to be needed again.
        missing = [TOKEN_VOLUME_SPEC] if TOKEN_VOLUME not in existing else []
    else:
        missing = [
            v for v in _volumes_wanted(spec, plan=plan, settings=settings) if v["name"] not in existing
        ]
    if not missing:
        return []
    if not isinstance(spec.get("volumes"), list):
        return [{"op": "add", "path": "/spec/volumes", "value": missing}]
    return [{"op": "add", "path": "/spec/volumes/-", "value": volume} for volume in missing]


def _kube_api_mount(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """The service-account mount the ServiceAccount admission plugin gave the pod's containers."""
    for key in ("containers", "initContainers"):
        for container in _list(spec, key):
            for mount in _list(container, "volumeMounts"):
                if isinstance(mount, Mapping) and mount.get("mountPath") == KUBE_API_DIR:
                    return {"name": mount.get("name"), "mountPath": KUBE_API_DIR, "readOnly": True}
    return None


def _sidecar_present(spec: Mapping[str, Any]) -> bool:
    return any(
        isinstance(c, Mapping) and c.get("name") == SIDECAR_NAME
        for key in ("containers", "initContainers")
        for c in _list(spec, key)
    )


def _target_patch(
    spec: Mapping[str, Any], *, plan: Plan, settings: InjectionSettings
) -> list[dict[str, Any]]:
    volume = TOKEN_VOLUME
    variables = [("HF_TOKEN_PATH", TOKEN_PATH)]
    if isinstance(plan, GatewayPlan):
        assert settings.gateway_url  # _gateway_plan refused the pod otherwise
        volume = IDENTITY_VOLUME
        variables.append(("HF_ENDPOINT", settings.gateway_url))
    patch: list[dict[str, Any]] = []
    for key in ("initContainers", "containers"):
        for index, container in enumerate(_list(spec, key)):
            if not isinstance(container, Mapping):
                raise InvalidInjection(f"spec.{key}[{index}]", "is not an object")
            container_name = container.get("name")
            if container_name in (SIDECAR_NAME, LEGACY_INIT_NAME):
                continue
            if plan.targets is not None and container_name not in plan.targets:
                continue
            patch += _mount_patch(container, base=("spec", key, index), volume=volume)
            patch += _env_patch(container, base=("spec", key, index), variables=variables)
    return patch


def _mount_patch(
    container: Mapping[str, Any], *, base: tuple[str, str, int], volume: str
) -> list[dict[str, Any]]:
    mounts = _list(container, "volumeMounts")
    for mount in mounts:
        if not isinstance(mount, Mapping):
            continue
        if mount.get("name") == volume:
            return []
        if mount.get("mountPath") == TOKEN_DIR:
            raise InvalidInjection(
                f"spec.{base[1]}[{container.get('name')}]",
                f"already mounts volume {mount.get('name')!r} at {TOKEN_DIR}",
            )
    mount_spec = {"name": volume, "mountPath": TOKEN_DIR, "readOnly": True}
    if not isinstance(container.get("volumeMounts"), list):
        return [{"op": "add", "path": _pointer(*base, "volumeMounts"), "value": [mount_spec]}]
    return [{"op": "add", "path": _pointer(*base, "volumeMounts", "-"), "value": mount_spec}]


def _env_patch(
    container: Mapping[str, Any], *, base: tuple[str, str, int], variables: Sequence[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Drop the variables that override the token file, set ``variables`` (last, in order)."""
    current = _list(container, "env")
    ours = {variable_name for variable_name, _ in variables}
    # Variables set through envFrom (a whole Secret) cannot be removed from here; an
    # explicit empty value wins over envFrom, and huggingface_hub treats an empty
    # HF_TOKEN as unset and falls through to HF_TOKEN_PATH.
    blank_overrides = bool(_list(container, "envFrom"))
    wanted: list[Any] = []
    for variable in current:
        variable_name = variable.get("name") if isinstance(variable, Mapping) else None
        if variable_name in OVERRIDING_TOKEN_VARS:
            if blank_overrides and variable == {"name": variable_name, "value": ""}:
                wanted.append(variable)
            continue
        if variable_name in ours:
            continue
        wanted.append(variable)
    if blank_overrides:
        present = {v.get("name") for v in wanted if isinstance(v, Mapping)}
        wanted += [{"name": n, "value": ""} for n in OVERRIDING_TOKEN_VARS if n not in present]
    wanted += [{"name": variable_name, "value": value} for variable_name, value in variables]
    if _same_env(current, wanted):
        return []
    op = "replace" if isinstance(container.get("env"), list) else "add"
    return [{"op": op, "path": _pointer(*base, "env"), "value": wanted}]


def _same_env(current: Sequence[Any], wanted: Sequence[Any]) -> bool:
    # Order is irrelevant to the result except for $(VAR) references, which never point
    # at the token variables; compare as multisets of entries so a converged pod is left alone.
    # Counted by canonical JSON, in linear time: a pod may carry 100,000 env entries
    # (3 MiB), and comparing each with each would hold the event loop for minutes.
    if len(current) != len(wanted):
        return False
    return Counter(map(_canonical, current)) == Counter(map(_canonical, wanted))


def _canonical(entry: Any) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"))


def _sidecar_patch(
    spec: Mapping[str, Any], *, plan: SidecarPlan, settings: InjectionSettings
) -> list[dict[str, Any]]:
    if _sidecar_present(spec):
        return []
    patch: list[dict[str, Any]] = []
    init_containers: list[dict[str, Any]]
    if settings.legacy_sidecar:
        regular = _sidecar_container(spec, plan=plan, settings=settings, command="run", native=False)
        if isinstance(spec.get("containers"), list):
            patch.append({"op": "add", "path": "/spec/containers/-", "value": regular})
        else:
            patch.append({"op": "add", "path": "/spec/containers", "value": [regular]})
        init_containers = [
            _sidecar_container(spec, plan=plan, settings=settings, command="once", native=False)
        ]
    else:
        init_containers = [_sidecar_container(spec, plan=plan, settings=settings, command="run", native=True)]
    if isinstance(spec.get("initContainers"), list):
        patch.append({"op": "add", "path": "/spec/initContainers/0", "value": init_containers[0]})
    else:
        patch.append({"op": "add", "path": "/spec/initContainers", "value": init_containers})
    return patch


def _sidecar_container(
    spec: Mapping[str, Any], *, plan: SidecarPlan, settings: InjectionSettings, command: str, native: bool
) -> dict[str, Any]:
    """The sidecar running ``tokensidecar <command>``; with ``native``, as a native sidecar."""
    container: dict[str, Any] = {
        "name": SIDECAR_NAME if command == "run" else LEGACY_INIT_NAME,
        "image": plan.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["tokensidecar", command],
        "env": _sidecar_env(spec, plan=plan, settings=settings),
        "resources": plan.resources,
        "securityContext": _hardened_security_context(),
        "volumeMounts": _sidecar_mounts(spec, plan=plan),
        # A failed 'once' or a crash shows its last log line in the pod's status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if command == "run":
        container.update(_serving(port=settings.port))
    if native:
        container.update(_native_sidecar(port=settings.port))
    return container


def _sidecar_env(
    spec: Mapping[str, Any], *, plan: SidecarPlan, settings: InjectionSettings
) -> list[dict[str, Any]]:
    """The plan's settings, then where the token goes and how it is served."""
    security = spec.get("securityContext")
    # Without an fsGroup the readers run under user and group IDs the webhook cannot
    # know; the volume is private to this pod, so the token file is made world-readable.
    world_readable = not (isinstance(security, Mapping) and security.get("fsGroup") is not None)
    return [
        *plan.env(),
        *_env(
            token_file=TOKEN_PATH,
            listen=f"0.0.0.0:{settings.port}",
            file_mode="0444" if world_readable else None,
        ),
        # The root filesystem is read-only: no .pyc files.
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]


def _sidecar_mounts(spec: Mapping[str, Any], *, plan: SidecarPlan) -> list[dict[str, Any]]:
    """The token directory, and whatever the source reads from."""
    mounts: list[dict[str, Any]] = [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR}]
    if plan.source.sa_token_audience:
        mounts.append({"name": SA_TOKEN_VOLUME, "mountPath": SA_TOKEN_DIR, "readOnly": True})
    if plan.source.needs_kube_api:
        mounts.append(
            _kube_api_mount(spec) or {"name": KUBE_API_VOLUME, "mountPath": KUBE_API_DIR, "readOnly": True}
        )
    if plan.source.source_volume:
        mounts.append({"name": plan.source.source_volume, "mountPath": SOURCE_DIR, "readOnly": True})
    return mounts


def _hardened_security_context() -> dict[str, Any]:
    """Non-root with fixed IDs, read-only root, no privilege, no capabilities (a fresh copy:
    the patch is the caller's to change)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": SIDECAR_UID,
        "runAsGroup": SIDECAR_UID,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _serving(*, port: int) -> dict[str, Any]:
    """What ``run`` serves: its port, and /healthz for readiness and liveness."""
    return {
        "ports": [{"name": "tokensidecar", "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": _probe("/healthz", port=port, failures=LIVENESS_FAILURE_THRESHOLD),
        "livenessProbe": _probe("/healthz", port=port, failures=LIVENESS_FAILURE_THRESHOLD),
    }


def _native_sidecar(*, port: int) -> dict[str, Any]:
    # A native sidecar (KEP-753): an init container that keeps running. Kubernetes
    # starts the next init container only once its startupProbe passes, so KServe's
    # storage-initializer and the model server find the token already on disk.
    return {
        "restartPolicy": "Always",
        "startupProbe": {
            "httpGet": {"path": "/readyz", "port": port},
            "periodSeconds": STARTUP_PERIOD_SECONDS,
            "failureThreshold": STARTUP_FAILURE_THRESHOLD,
            "timeoutSeconds": 1,
        },
    }


def _probe(path: str, *, port: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": PROBE_PERIOD_SECONDS,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }

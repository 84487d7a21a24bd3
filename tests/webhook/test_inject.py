"""The injection function over realistic pods: patches applied with jsonpatch, pods validated
against the Kubernetes schemas (kubernetes-validate, offline, strict)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest

from tokensidecar.webhook.inject import (
    KUBE_API_VOLUME,
    SA_TOKEN_VOLUME,
    STATUS_ANNOTATION,
    TOKEN_DIR,
    TOKEN_PATH,
    TOKEN_VOLUME,
    InjectionSettings,
    InvalidInjection,
    inject,
)

SETTINGS = InjectionSettings(
    image="ghcr.io/tokensidecar/tokensidecar:0.1.0", vault_addr="https://vault.vault:8200"
)
KUBE_VERSION = "1.37.0"

VAULT_ANNOTATIONS = {
    "tokensidecar.io/inject": "true",
    "tokensidecar.io/source": "vault",
    "tokensidecar.io/vault-path": "secret/hf/llama",
    "tokensidecar.io/vault-role": "llama-predictor",
}


def storage_initializer(*, hf_token_from_secret: bool = True) -> dict[str, Any]:
    """KServe's storage-initializer as its pod mutator appends it (v0.15, hf:// storage URI)."""
    env: list[dict[str, Any]] = []
    if hf_token_from_secret:
        env.append(
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-secret", "key": "HF_TOKEN"}}}
        )
    return {
        "name": "storage-initializer",
        "image": "kserve/storage-initializer:v0.15.0",
        "args": ["hf://meta-llama/Llama-3.1-8B-Instruct", "/mnt/models"],
        "env": env,
        "resources": {
            "requests": {"cpu": "100m", "memory": "100Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "kserve-provision-location", "mountPath": "/mnt/models"},
            {
                "name": "kube-api-access-7xk2p",
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                "readOnly": True,
            },
        ],
    }


def kserve_predictor_pod(
    annotations: dict[str, str] | None = None, *, with_storage_initializer: bool = True
) -> dict[str, Any]:
    """A huggingface-runtime predictor pod as KServe renders it (RawDeployment mode)."""
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "llama-predictor-5d8f9c7b6-",
            "namespace": "models",
            "labels": {
                "app": "isvc.llama-predictor",
                "serving.kserve.io/inferenceservice": "llama",
                "component": "predictor",
            },
            "annotations": {
                "serving.kserve.io/deploymentMode": "RawDeployment",
                "prometheus.io/port": "8080",
                **(annotations if annotations is not None else VAULT_ANNOTATIONS),
            },
        },
        "spec": {
            "serviceAccountName": "llama-sa",
            "containers": [
                {
                    "name": "kserve-container",
                    "image": "kserve/huggingfaceserver:v0.15.0",
                    "args": ["--model_name=llama", "--model_dir=/mnt/models", "--http_port=8080"],
                    "env": [
                        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
                        {"name": "HUGGING_FACE_HUB_TOKEN", "value": "hf_legacyLongLivedTokenValue"},
                        {"name": "PORT", "value": "8080"},
                    ],
                    "ports": [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}],
                    "resources": {"requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}},
                    "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8080}},
                    "volumeMounts": [
                        {"name": "kserve-provision-location", "mountPath": "/mnt/models", "readOnly": True},
                        {"name": "dshm", "mountPath": "/dev/shm"},
                        {
                            "name": "kube-api-access-7xk2p",
                            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                            "readOnly": True,
                        },
                    ],
                }
            ],
            "volumes": [
                {"name": "kserve-provision-location", "emptyDir": {}},
                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
                {
                    "name": "kube-api-access-7xk2p",
                    "projected": {
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {
                                "configMap": {
                                    "name": "kube-root-ca.crt",
                                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                }
                            },
                        ]
                    },
                },
            ],
        },
    }
    if with_storage_initializer:
        pod["spec"]["initContainers"] = [storage_initializer()]
    return pod


def apply(pod: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = jsonpatch.apply_patch(pod, patch)
    return result


def injected(pod: dict[str, Any], settings: InjectionSettings = SETTINGS) -> dict[str, Any]:
    result = apply(pod, inject(pod, settings=settings))
    # generateName is resolved by the API server after admission; name it for validation.
    checked = copy.deepcopy(result)
    checked["metadata"].setdefault("name", "llama-predictor-5d8f9c7b6-abcde")
    kubernetes_validate.validate(checked, KUBE_VERSION, strict=True)
    return result


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    for key in ("initContainers", "containers"):
        for item in pod["spec"].get(key, []):
            if item["name"] == name:
                found: dict[str, Any] = item
                return found
    raise AssertionError(f"no container {name}")


def env_of(item: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in item.get("env", [])}


def assert_reads_token_file(item: dict[str, Any]) -> None:
    env = env_of(item)
    assert env["HF_TOKEN_PATH"] == TOKEN_PATH
    assert "HF_TOKEN" not in env and "HUGGING_FACE_HUB_TOKEN" not in env
    mounts = [m for m in item["volumeMounts"] if m["name"] == TOKEN_VOLUME]
    assert mounts == [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}]


def test_kserve_predictor_pod_gets_native_sidecar_first_and_token_file_everywhere() -> None:
    pod = injected(kserve_predictor_pod())
    init = pod["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["tokensidecar", "storage-initializer"]
    sidecar = init[0]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["command"] == ["tokensidecar", "run"]
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": 8099}
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert sidecar["resources"] == {
        "requests": {"cpu": "10m", "memory": "64Mi"},
        "limits": {"memory": "128Mi"},
    }
    env = env_of(sidecar)
    assert env["TOKENSIDECAR_SOURCE"] == "vault"
    assert env["VAULT_ADDR"] == "https://vault.vault:8200"
    assert env["TOKENSIDECAR_VAULT_PATH"] == "secret/hf/llama"
    assert env["TOKENSIDECAR_VAULT_ROLE"] == "llama-predictor"
    assert env["TOKENSIDECAR_VAULT_AUTH"] == "kubernetes"
    assert env["TOKENSIDECAR_TOKEN_FILE"] == TOKEN_PATH
    assert env["TOKENSIDECAR_VERIFY"] == "whoami"
    # No fsGroup: readers run under unknown IDs, so the file is world-readable inside the pod.
    assert env["TOKENSIDECAR_FILE_MODE"] == "0444"
    # Vault kubernetes auth gets a projected token with the dedicated audience, never the
    # pod's own service-account token (API audience).
    assert env["TOKENSIDECAR_VAULT_JWT_FILE"] == "/var/run/secrets/tokensidecar/token"
    assert sidecar["volumeMounts"] == [
        {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR},
        {"name": SA_TOKEN_VOLUME, "mountPath": "/var/run/secrets/tokensidecar", "readOnly": True},
    ]

    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes[TOKEN_VOLUME] == {
        "name": TOKEN_VOLUME,
        "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"},
    }
    assert KUBE_API_VOLUME not in volumes
    assert volumes[SA_TOKEN_VOLUME]["projected"]["sources"] == [
        {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 3600, "path": "token"}}
    ]
    assert_reads_token_file(container(pod, "storage-initializer"))
    assert_reads_token_file(container(pod, "kserve-container"))
    kserve_env = env_of(container(pod, "kserve-container"))
    assert kserve_env["HF_HUB_DISABLE_TELEMETRY"] == "1" and kserve_env["PORT"] == "8080"
    assert pod["metadata"]["annotations"][STATUS_ANNOTATION] == "injected"
    # Unrelated parts are untouched.
    assert container(pod, "kserve-container")["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert pod["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


def test_status_annotation_is_added_with_an_escaped_json_pointer() -> None:
    patch = inject(kserve_predictor_pod(), settings=SETTINGS)
    assert {
        "op": "add",
        "path": "/metadata/annotations/tokensidecar.io~1status",
        "value": "injected",
    } in patch


def test_pod_without_init_containers_gets_the_list_created() -> None:
    pod = kserve_predictor_pod(with_storage_initializer=False)
    patch = inject(pod, settings=SETTINGS)
    assert any(op["path"] == "/spec/initContainers" and op["op"] == "add" for op in patch)
    result = injected(pod)
    assert [c["name"] for c in result["spec"]["initContainers"]] == ["tokensidecar"]


def test_pod_without_volumes_or_env_gets_them_created() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bare", "annotations": dict(VAULT_ANNOTATIONS)},
        "spec": {"containers": [{"name": "app", "image": "python:3.12"}]},
    }
    result = injected(pod)
    assert_reads_token_file(container(result, "app"))
    assert [v["name"] for v in result["spec"]["volumes"]] == [TOKEN_VOLUME, SA_TOKEN_VOLUME]


def test_subpath_mounts_are_kept_and_the_token_volume_is_mounted_beside_them() -> None:
    pod = kserve_predictor_pod()
    config_mount = {"name": "config", "mountPath": "/etc/app/settings.yaml", "subPath": "settings.yaml"}
    pod["spec"]["volumes"].append({"name": "config", "configMap": {"name": "app-config"}})
    pod["spec"]["containers"][0]["volumeMounts"].append(config_mount)
    result = injected(pod)
    mounts = container(result, "kserve-container")["volumeMounts"]
    assert config_mount in mounts
    assert_reads_token_file(container(result, "kserve-container"))


def test_pod_without_the_inject_annotation_is_never_touched() -> None:
    annotations = {k: v for k, v in VAULT_ANNOTATIONS.items() if k != "tokensidecar.io/inject"}
    assert inject(kserve_predictor_pod(annotations), settings=SETTINGS) == []
    assert (
        inject(
            kserve_predictor_pod({**VAULT_ANNOTATIONS, "tokensidecar.io/inject": "false"}), settings=SETTINGS
        )
        == []
    )
    # Even invalid annotations are ignored when injection is not requested.
    assert inject(kserve_predictor_pod({"tokensidecar.io/sauce": "x"}), settings=SETTINGS) == []


def test_kubernetes_secret_source_reads_the_pod_namespace_and_the_api_credentials() -> None:
    pod = injected(
        kserve_predictor_pod(
            {
                "tokensidecar.io/inject": "true",
                "tokensidecar.io/source": "kubernetes-secret",
                "tokensidecar.io/secret-name": "hf-rotating",
                "tokensidecar.io/key": "HF_TOKEN",
            }
        )
    )
    sidecar = container(pod, "tokensidecar")
    env = env_of(sidecar)
    assert env["TOKENSIDECAR_SOURCE"] == "kubernetes-secret"
    assert env["TOKENSIDECAR_SECRET_NAME"] == "hf-rotating"
    assert env["TOKENSIDECAR_KEY"] == "HF_TOKEN"
    assert env["TOKENSIDECAR_SECRET_NAMESPACE"] == {
        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}
    }
    assert "VAULT_ADDR" not in env
    assert any(
        m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount" for m in sidecar["volumeMounts"]
    )


def test_kubernetes_secret_source_without_automounted_token_gets_its_own_api_access() -> None:
    pod = kserve_predictor_pod(
        {
            "tokensidecar.io/inject": "true",
            "tokensidecar.io/source": "kubernetes-secret",
            "tokensidecar.io/secret-name": "hf-rotating",
            "tokensidecar.io/secret-namespace": "hf-tokens",
        },
        with_storage_initializer=False,
    )
    pod["spec"]["automountServiceAccountToken"] = False
    pod["spec"]["containers"][0]["volumeMounts"] = pod["spec"]["containers"][0]["volumeMounts"][:2]
    pod["spec"]["volumes"] = pod["spec"]["volumes"][:2]
    result = injected(pod, dataclasses.replace(SETTINGS, allowed_secret_namespaces=("hf-tokens",)))
    sidecar = container(result, "tokensidecar")
    assert env_of(sidecar)["TOKENSIDECAR_SECRET_NAMESPACE"] == "hf-tokens"
    assert {
        "name": KUBE_API_VOLUME,
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
        "readOnly": True,
    } in sidecar["volumeMounts"]
    volume = next(v for v in result["spec"]["volumes"] if v["name"] == KUBE_API_VOLUME)
    kinds = [next(iter(source)) for source in volume["projected"]["sources"]]
    assert kinds == ["serviceAccountToken", "configMap", "downwardAPI"]
    # The app container does not get API credentials it did not have.
    assert all(m["name"] != KUBE_API_VOLUME for m in container(result, "kserve-container")["volumeMounts"])


def test_file_source_mounts_the_named_volume_into_the_sidecar_only() -> None:
    pod = kserve_predictor_pod(
        {
            "tokensidecar.io/inject": "true",
            "tokensidecar.io/source": "file",
            "tokensidecar.io/source-volume": "hf-token-secret",
            "tokensidecar.io/source-file": "token",
        }
    )
    pod["spec"]["volumes"].append({"name": "hf-token-secret", "secret": {"secretName": "hf-token"}})
    result = injected(pod)
    sidecar = container(result, "tokensidecar")
    assert env_of(sidecar)["TOKENSIDECAR_SOURCE_FILE"] == "/var/run/tokensidecar-source/token"
    assert {
        "name": "hf-token-secret",
        "mountPath": "/var/run/tokensidecar-source",
        "readOnly": True,
    } in sidecar["volumeMounts"]


def test_oidc_exchange_gets_a_projected_token_with_the_configured_audience() -> None:
    settings = InjectionSettings(image="registry.local/tokensidecar:dev", oidc_token_audience="hf-exchange")
    pod = injected(
        kserve_predictor_pod(
            {
                "tokensidecar.io/inject": "true",
                "tokensidecar.io/source": "oidc-exchange",
                "tokensidecar.io/oidc-resource": "org/acme",
                "tokensidecar.io/verify": "repo",
                "tokensidecar.io/model-id": "acme/private-llm",
            }
        ),
        settings,
    )
    sidecar = container(pod, "tokensidecar")
    env = env_of(sidecar)
    assert env["TOKENSIDECAR_OIDC_RESOURCE"] == "org/acme"
    assert env["TOKENSIDECAR_OIDC_TOKEN_FILE"] == "/var/run/secrets/tokensidecar/token"
    assert env["TOKENSIDECAR_VERIFY"] == "repo"
    assert env["TOKENSIDECAR_MODEL_ID"] == "acme/private-llm"
    assert sidecar["image"] == "registry.local/tokensidecar:dev"
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == SA_TOKEN_VOLUME)
    assert volume["projected"]["sources"] == [
        {"serviceAccountToken": {"audience": "hf-exchange", "expirationSeconds": 3600, "path": "token"}}
    ]
    assert {
        "name": SA_TOKEN_VOLUME,
        "mountPath": "/var/run/secrets/tokensidecar",
        "readOnly": True,
    } in sidecar["volumeMounts"]


def test_vault_jwt_auth_gets_a_projected_token_for_vault() -> None:
    pod = injected(
        kserve_predictor_pod(
            {
                **VAULT_ANNOTATIONS,
                "tokensidecar.io/vault-auth": "jwt",
                "tokensidecar.io/vault-auth-mount": "jwt-k8s",
                "tokensidecar.io/vault-addr": "http://openbao.vault:8200",
                "tokensidecar.io/vault-kv-version": "1",
            }
        ),
        dataclasses.replace(
            SETTINGS, allowed_vault_addrs=("http://openbao.vault:8200",), allow_insecure_vault=True
        ),
    )
    env = env_of(container(pod, "tokensidecar"))
    assert env["VAULT_ADDR"] == "http://openbao.vault:8200"
    assert env["TOKENSIDECAR_VAULT_AUTH"] == "jwt"
    assert env["TOKENSIDECAR_VAULT_AUTH_MOUNT"] == "jwt-k8s"
    assert env["TOKENSIDECAR_VAULT_KV_VERSION"] == "1"
    assert env["TOKENSIDECAR_VAULT_JWT_FILE"] == "/var/run/secrets/tokensidecar/token"
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == SA_TOKEN_VOLUME)
    assert volume["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "vault"


def test_resource_annotations_override_the_defaults() -> None:
    pod = injected(
        kserve_predictor_pod(
            {
                **VAULT_ANNOTATIONS,
                "tokensidecar.io/cpu-request": "50m",
                "tokensidecar.io/cpu-limit": "200m",
                "tokensidecar.io/memory-request": "96Mi",
                "tokensidecar.io/memory-limit": "0.25Gi",
            }
        )
    )
    assert container(pod, "tokensidecar")["resources"] == {
        "requests": {"cpu": "50m", "memory": "96Mi"},
        "limits": {"cpu": "200m", "memory": "0.25Gi"},
    }


def test_containers_annotation_limits_the_targets() -> None:
    pod = injected(
        kserve_predictor_pod({**VAULT_ANNOTATIONS, "tokensidecar.io/containers": "storage-initializer"})
    )
    assert_reads_token_file(container(pod, "storage-initializer"))
    app = container(pod, "kserve-container")
    assert "HF_TOKEN_PATH" not in env_of(app)
    assert all(m["name"] != TOKEN_VOLUME for m in app["volumeMounts"])


def test_env_from_a_secret_is_neutralised_with_empty_overrides() -> None:
    pod = kserve_predictor_pod()
    pod["spec"]["containers"][0]["envFrom"] = [{"secretRef": {"name": "hf-env"}}]
    result = injected(pod)
    env = env_of(container(result, "kserve-container"))
    # An explicit empty value wins over envFrom; huggingface_hub treats it as unset.
    assert env["HF_TOKEN"] == "" and env["HUGGING_FACE_HUB_TOKEN"] == ""
    assert env["HF_TOKEN_PATH"] == TOKEN_PATH
    assert inject(result, settings=SETTINGS) == []


def test_an_existing_hf_token_path_is_pointed_at_the_sidecar_file() -> None:
    pod = kserve_predictor_pod()
    pod["spec"]["containers"][0]["env"].append({"name": "HF_TOKEN_PATH", "value": "/secrets/hf"})
    env = env_of(container(injected(pod), "kserve-container"))
    assert env["HF_TOKEN_PATH"] == TOKEN_PATH


def test_fs_group_keeps_the_default_group_readable_mode() -> None:
    pod = kserve_predictor_pod()
    pod["spec"]["securityContext"] = {"fsGroup": 2000}
    env = env_of(container(injected(pod), "tokensidecar"))
    assert "TOKENSIDECAR_FILE_MODE" not in env


def test_legacy_sidecar_is_an_init_container_running_once_and_a_container_running_run() -> None:
    settings = InjectionSettings(
        image="ghcr.io/tokensidecar/tokensidecar:0.1.0", vault_addr="https://v:8200", legacy_sidecar=True
    )
    pod = injected(kserve_predictor_pod(), settings)
    init = pod["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["tokensidecar-init", "storage-initializer"]
    assert init[0]["command"] == ["tokensidecar", "once"]
    assert "restartPolicy" not in init[0] and "startupProbe" not in init[0]
    names = [c["name"] for c in pod["spec"]["containers"]]
    assert names == ["kserve-container", "tokensidecar"]
    regular = container(pod, "tokensidecar")
    assert regular["command"] == ["tokensidecar", "run"]
    assert "restartPolicy" not in regular
    assert_reads_token_file(container(pod, "storage-initializer"))
    assert_reads_token_file(container(pod, "kserve-container"))
    assert inject(pod, settings=settings) == []


def test_reinvocation_after_kserve_appends_a_storage_initializer_changes_only_that_container() -> None:
    first = injected(kserve_predictor_pod(with_storage_initializer=False))
    # KServe's pod mutator runs after this webhook and appends its storage-initializer.
    appended = copy.deepcopy(first)
    appended["spec"]["initContainers"].append(storage_initializer())
    patch = inject(appended, settings=SETTINGS)
    assert patch, "the new container needs the token file"
    assert {op["path"].split("/")[3] for op in patch} == {"1"}
    assert all(op["path"].startswith("/spec/initContainers/1/") for op in patch)
    second = injected(appended)
    assert_reads_token_file(container(second, "storage-initializer"))
    before = {k: v for k, v in appended["spec"].items() if k != "initContainers"}
    after = {k: v for k, v in second["spec"].items() if k != "initContainers"}
    assert before == after
    assert second["spec"]["initContainers"][0] == appended["spec"]["initContainers"][0]
    assert [c["name"] for c in second["spec"]["initContainers"]] == ["tokensidecar", "storage-initializer"]
    assert inject(second, settings=SETTINGS) == []


def test_reinjecting_never_adds_a_second_sidecar_volume_or_mount() -> None:
    pod = injected(kserve_predictor_pod())
    assert inject(pod, settings=SETTINGS) == []
    # Even if another mutator removed the status annotation, only that comes back.
    del pod["metadata"]["annotations"][STATUS_ANNOTATION]
    assert inject(pod, settings=SETTINGS) == [
        {"op": "add", "path": "/metadata/annotations/tokensidecar.io~1status", "value": "injected"}
    ]


INVALID_CASES = [
    ({"tokensidecar.io/sauce": "vault"}, "tokensidecar.io/sauce"),
    ({"tokensidecar.io/source": "s3"}, "tokensidecar.io/source"),
    ({"tokensidecar.io/vault-path": ""}, "tokensidecar.io/vault-path"),
    ({"tokensidecar.io/vault-path": "secretonly"}, "tokensidecar.io/vault-path"),
    ({"tokensidecar.io/vault-role": ""}, "tokensidecar.io/vault-role"),
    ({"tokensidecar.io/vault-auth": "approle"}, "tokensidecar.io/vault-auth"),
    ({"tokensidecar.io/vault-addr": "vault:8200"}, "tokensidecar.io/vault-addr"),
    ({"tokensidecar.io/vault-kv-version": "3"}, "tokensidecar.io/vault-kv-version"),
    ({"tokensidecar.io/secret-name": "hf"}, "tokensidecar.io/secret-name"),
    ({"tokensidecar.io/verify": "always"}, "tokensidecar.io/verify"),
    ({"tokensidecar.io/verify": "repo"}, "tokensidecar.io/model-id"),
    ({"tokensidecar.io/verify": "scope"}, "tokensidecar.io/model-id"),
    ({"tokensidecar.io/model-id": "no-slash"}, "tokensidecar.io/model-id"),
    ({"tokensidecar.io/cpu-request": "lots"}, "tokensidecar.io/cpu-request"),
    ({"tokensidecar.io/memory-request": "-64Mi"}, "tokensidecar.io/memory-request"),
    ({"tokensidecar.io/memory-limit": "64MB"}, "tokensidecar.io/memory-limit"),
    ({"tokensidecar.io/memory-request": "1Gi"}, "tokensidecar.io/memory-request"),
    ({"tokensidecar.io/memory-limit": "16Mi"}, "tokensidecar.io/memory-limit"),
    ({"tokensidecar.io/image": "bad image"}, "tokensidecar.io/image"),
    ({"tokensidecar.io/containers": "Kserve_Container"}, "tokensidecar.io/containers"),
    ({"tokensidecar.io/containers": "tokensidecar"}, "tokensidecar.io/containers"),
    ({"tokensidecar.io/containers": " , "}, "tokensidecar.io/containers"),
    ({"tokensidecar.io/refresh-interval": "soon"}, "tokensidecar.io/refresh-interval"),
    ({"tokensidecar.io/key": "my key"}, "tokensidecar.io/key"),
]


@pytest.mark.parametrize(
    ("extra", "subject"), INVALID_CASES, ids=[s + "=" + repr(e) for e, s in INVALID_CASES]
)
def test_invalid_vault_annotations_are_refused_naming_the_annotation(
    extra: dict[str, str], subject: str
) -> None:
    with pytest.raises(InvalidInjection) as caught:
        inject(kserve_predictor_pod({**VAULT_ANNOTATIONS, **extra}), settings=SETTINGS)
    assert caught.value.subject == subject
    assert str(caught.value).startswith(subject + ":")


SOURCE_CASES = [
    ({"tokensidecar.io/source": "kubernetes-secret"}, "tokensidecar.io/secret-name"),
    (
        {"tokensidecar.io/source": "kubernetes-secret", "tokensidecar.io/secret-name": "Bad_Name"},
        "tokensidecar.io/secret-name",
    ),
    (
        {
            "tokensidecar.io/source": "kubernetes-secret",
            "tokensidecar.io/secret-name": "hf",
            "tokensidecar.io/vault-path": "secret/x",
        },
        "tokensidecar.io/vault-path",
    ),
    ({"tokensidecar.io/source": "file"}, "tokensidecar.io/source-volume"),
    (
        {"tokensidecar.io/source": "file", "tokensidecar.io/source-volume": "missing"},
        "tokensidecar.io/source-volume",
    ),
    (
        {
            "tokensidecar.io/source": "file",
            "tokensidecar.io/source-volume": "dshm",
            "tokensidecar.io/source-file": "../etc/passwd",
        },
        "tokensidecar.io/source-file",
    ),
    ({"tokensidecar.io/source": "oidc-exchange"}, "tokensidecar.io/oidc-resource"),
    (
        {
            "tokensidecar.io/source": "oidc-exchange",
            "tokensidecar.io/oidc-resource": "org/acme",
            "tokensidecar.io/token-audience": "",
        },
        "tokensidecar.io/token-audience",
    ),
    ({"tokensidecar.io/source": "vault"}, "tokensidecar.io/vault-path"),
]


@pytest.mark.parametrize(("annotations", "subject"), SOURCE_CASES, ids=[s for _, s in SOURCE_CASES])
def test_source_without_its_required_setting_is_refused(annotations: dict[str, str], subject: str) -> None:
    with pytest.raises(InvalidInjection) as caught:
        inject(kserve_predictor_pod({"tokensidecar.io/inject": "true", **annotations}), settings=SETTINGS)
    assert caught.value.subject == subject


def test_vault_source_needs_an_address_when_the_webhook_has_no_default() -> None:
    with pytest.raises(InvalidInjection) as caught:
        inject(
            kserve_predictor_pod(),
            settings=InjectionSettings(image="ghcr.io/tokensidecar/tokensidecar:0.1.0"),
        )
    assert caught.value.subject == "tokensidecar.io/vault-addr"


def test_a_foreign_mount_at_the_token_directory_is_refused() -> None:
    pod = kserve_predictor_pod()
    pod["spec"]["containers"][0]["volumeMounts"].append({"name": "dshm", "mountPath": TOKEN_DIR})
    with pytest.raises(InvalidInjection, match="kserve-container"):
        inject(pod, settings=SETTINGS)


def sidecar_environment(pod: dict[str, Any], name: str = "tokensidecar") -> dict[str, str]:
    """The sidecar's env as its process would see it (downward API values filled in)."""
    environ = {}
    for variable in container(pod, name)["env"]:
        if "value" in variable:
            environ[variable["name"]] = variable["value"]
        else:
            assert variable["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
            environ[variable["name"]] = "models"
    return environ


@pytest.mark.parametrize(
    "annotations",
    [
        VAULT_ANNOTATIONS,
        {**VAULT_ANNOTATIONS, "tokensidecar.io/vault-auth": "jwt", "tokensidecar.io/refresh-interval": "5m"},
        {
            "tokensidecar.io/inject": "true",
            "tokensidecar.io/source": "kubernetes-secret",
            "tokensidecar.io/secret-name": "hf",
            "tokensidecar.io/key": "HF_TOKEN",
        },
        {
            "tokensidecar.io/inject": "true",
            "tokensidecar.io/source": "oidc-exchange",
            "tokensidecar.io/oidc-resource": "org/acme",
        },
        {
            "tokensidecar.io/inject": "true",
            "tokensidecar.io/source": "file",
            "tokensidecar.io/source-volume": "dshm",
        },
    ],
    ids=["vault", "vault-jwt", "kubernetes-secret", "oidc-exchange", "file"],
)
def test_injected_environment_is_a_valid_sidecar_configuration(annotations: dict[str, str]) -> None:
    """Every variable the webhook sets is a sidecar setting, and the sidecar accepts its value."""
    from tokensidecar.config import resolve
    from tokensidecar.sidecar.settings import sidecar_settings

    settings = sidecar_settings()
    known = {setting.env for setting in settings} | {"PYTHONDONTWRITEBYTECODE"}
    for legacy in (False, True):
        injection = InjectionSettings(
            image=SETTINGS.image,
            vault_addr=SETTINGS.vault_addr,
            legacy_sidecar=legacy,
            hf_endpoint="http://hub.local:8080",
        )
        pod = injected(kserve_predictor_pod(annotations), injection)
        for name in ["tokensidecar-init", "tokensidecar"] if legacy else ["tokensidecar"]:
            environ = sidecar_environment(pod, name)
            assert set(environ) <= known, set(environ) - known
            config = resolve(settings, {}, environ)
            assert config.values["token_file"] == TOKEN_PATH
            assert config.values["listen"] == ("0.0.0.0", 8099)
            assert config.values["source"] == annotations.get("tokensidecar.io/source", "vault")
            assert config.values["hf_endpoint"] == "http://hub.local:8080"


def test_a_container_whose_name_is_not_a_string_does_not_break_injection() -> None:
    """Found by the mutation fault suite: a list as a container's name made a set of the
    names unhashable, so the review answered an internal error instead of a patch."""
    pod = kserve_predictor_pod(VAULT_ANNOTATIONS)
    pod["spec"]["containers"].append({"name": ["not", "a", "string"], "image": "x"})
    patch = inject(pod, settings=SETTINGS)
    patched = jsonpatch.apply_patch(pod, patch)
    assert patched["spec"]["initContainers"][0]["name"] == "tokensidecar"


@pytest.mark.timeout(60)
def test_a_pod_with_100000_env_entries_is_compared_in_linear_time() -> None:
    # 3 MiB of env entries fits in one API request; comparing each entry with each other
    # (what an earlier version did when the lengths matched) held the event loop for
    # minutes. The entries already carry HF_TOKEN_PATH, so the lengths match.
    pod = kserve_predictor_pod()
    env = container(pod, "kserve-container")["env"]
    env[:] = [entry for entry in env if entry["name"] not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")]
    env.extend({"name": f"V{n:06d}", "value": "x"} for n in range(100_000))
    env.append({"name": "HF_TOKEN_PATH", "value": "/somewhere/else"})
    patched = apply(copy.deepcopy(pod), inject(pod, settings=SETTINGS))
    assert env_of(container(patched, "kserve-container"))["HF_TOKEN_PATH"] == TOKEN_PATH
    assert len(container(patched, "kserve-container")["env"]) == len(env)
    assert inject(patched, settings=SETTINGS) == []  # converged: the same comparison, equal


# --- what annotations may choose (docs/security.md) ------------------------------------------------

CONFINED = dataclasses.replace(
    SETTINGS,
    allowed_vault_addrs=("https://vault.team-a:8200",),
    allowed_images=("registry.local/tokensidecar:*",),
    allowed_secret_namespaces=("hf-tokens",),
)
SECRET_ANNOTATIONS = {
    "tokensidecar.io/inject": "true",
    "tokensidecar.io/source": "kubernetes-secret",
    "tokensidecar.io/secret-name": "hf-rotating",
}

CONFINEMENT_CASES = [
    ({**VAULT_ANNOTATIONS, "tokensidecar.io/vault-addr": "https://vault.evil.example"}, "vault-addr"),
    # Addresses compare as origins, never as prefixes or with a user part.
    (
        {**VAULT_ANNOTATIONS, "tokensidecar.io/vault-addr": "https://vault.team-a:8200.evil.example"},
        "vault-addr",
    ),
    (
        {**VAULT_ANNOTATIONS, "tokensidecar.io/vault-addr": "https://vault.team-a:8200@evil.example"},
        "vault-addr",
    ),
    ({**VAULT_ANNOTATIONS, "tokensidecar.io/vault-addr": "https://vault.team-a:8200/v1/x"}, "vault-addr"),
    ({**VAULT_ANNOTATIONS, "tokensidecar.io/vault-addr": "http://vault.team-a:8200"}, "vault-addr"),
    ({**VAULT_ANNOTATIONS, "tokensidecar.io/image": "docker.io/attacker/tokensidecar:0.1.0"}, "image"),
    ({**VAULT_ANNOTATIONS, "tokensidecar.io/image": "registry.local/tokensidecar-evil:1"}, "image"),
    ({**SECRET_ANNOTATIONS, "tokensidecar.io/secret-namespace": "kube-system"}, "secret-namespace"),
]


@pytest.mark.parametrize(
    ("annotations", "subject"),
    CONFINEMENT_CASES,
    ids=[f"{n}-{s}" for n, (_, s) in enumerate(CONFINEMENT_CASES)],
)
def test_annotations_outside_the_allowed_sets_are_denied_naming_the_annotation(
    annotations: dict[str, str], subject: str
) -> None:
    with pytest.raises(InvalidInjection) as caught:
        inject(kserve_predictor_pod(annotations), settings=CONFINED)
    assert caught.value.subject == f"tokensidecar.io/{subject}"


@pytest.mark.parametrize(
    "annotations",
    [
        {**VAULT_ANNOTATIONS, "tokensidecar.io/vault-addr": "HTTPS://Vault.Team-A:8200/"},
        {**VAULT_ANNOTATIONS, "tokensidecar.io/vault-addr": "https://vault.vault:8200"},  # the default
        {**VAULT_ANNOTATIONS, "tokensidecar.io/image": "registry.local/tokensidecar:0.2.0"},
        {**VAULT_ANNOTATIONS, "tokensidecar.io/image": SETTINGS.image},
        {**SECRET_ANNOTATIONS, "tokensidecar.io/secret-namespace": "hf-tokens"},
        {**SECRET_ANNOTATIONS, "tokensidecar.io/secret-namespace": "models"},  # the pod's own
    ],
    ids=[
        "listed-vault",
        "default-vault",
        "image-pattern",
        "default-image",
        "listed-namespace",
        "own-namespace",
    ],
)
def test_annotations_inside_the_allowed_sets_are_injected(annotations: dict[str, str]) -> None:
    assert injected(kserve_predictor_pod(annotations), CONFINED)["metadata"]["annotations"][STATUS_ANNOTATION]


def test_the_defaults_allow_only_the_webhooks_own_choices() -> None:
    for chosen, subject in [
        ({**VAULT_ANNOTATIONS, "tokensidecar.io/vault-addr": "https://vault.team-a:8200"}, "vault-addr"),
        ({**VAULT_ANNOTATIONS, "tokensidecar.io/image": "registry.local/tokensidecar:0.1.0"}, "image"),
        ({**SECRET_ANNOTATIONS, "tokensidecar.io/secret-namespace": "hf-tokens"}, "secret-namespace"),
    ]:
        with pytest.raises(InvalidInjection) as caught:
            inject(kserve_predictor_pod(chosen), settings=SETTINGS)
        assert caught.value.subject == f"tokensidecar.io/{subject}"


def test_a_secret_namespace_is_checked_against_the_reviews_namespace_when_the_pod_names_none() -> None:
    pod = kserve_predictor_pod({**SECRET_ANNOTATIONS, "tokensidecar.io/secret-namespace": "team-b"})
    del pod["metadata"]["namespace"]
    assert inject(pod, settings=SETTINGS, namespace="team-b")
    with pytest.raises(InvalidInjection):
        inject(pod, settings=SETTINGS, namespace="team-a")
    wildcard = dataclasses.replace(SETTINGS, allowed_secret_namespaces=("*",))
    assert inject(pod, settings=wildcard, namespace="team-a")


def test_plain_http_vault_needs_allow_insecure_vault() -> None:
    pod = kserve_predictor_pod(
        {**VAULT_ANNOTATIONS, "tokensidecar.io/vault-addr": "http://vault.team-a:8200"}
    )
    insecure = dataclasses.replace(
        CONFINED, allowed_vault_addrs=("http://vault.team-a:8200",), allow_insecure_vault=True
    )
    assert (
        env_of(container(injected(pod, insecure), "tokensidecar"))["VAULT_ADDR"] == "http://vault.team-a:8200"
    )
    from tokensidecar.config import ConfigError

    with pytest.raises(ConfigError, match="TOKENSIDECAR_INJECT_VAULT_ADDR"):
        InjectionSettings(image=SETTINGS.image, vault_addr="http://vault:8200")
    with pytest.raises(ConfigError, match="TOKENSIDECAR_ALLOWED_VAULT_ADDRS"):
        InjectionSettings(image=SETTINGS.image, allowed_vault_addrs=("http://vault:8200",))


def test_vault_kubernetes_auth_sends_a_token_with_the_webhooks_vault_audience() -> None:
    settings = dataclasses.replace(SETTINGS, vault_token_audience="vault.corp.example")
    pod = injected(kserve_predictor_pod(), settings)
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == SA_TOKEN_VOLUME)
    assert volume["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "vault.corp.example"
    sidecar = container(pod, "tokensidecar")
    assert env_of(sidecar)["TOKENSIDECAR_VAULT_JWT_FILE"] == "/var/run/secrets/tokensidecar/token"
    # The pod's own service-account token (API audience) is not mounted into the sidecar.
    assert all(
        m["mountPath"] != "/var/run/secrets/kubernetes.io/serviceaccount" for m in sidecar["volumeMounts"]
    )


# --- tokensidecar.io/token-audience: whom the projected token is minted for ------------------------


def projected_audience(pod: dict[str, Any]) -> str:
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == SA_TOKEN_VOLUME)
    audience: str = volume["projected"]["sources"][0]["serviceAccountToken"]["audience"]
    return audience


OIDC_ANNOTATIONS = {
    "tokensidecar.io/inject": "true",
    "tokensidecar.io/source": "oidc-exchange",
    "tokensidecar.io/oidc-resource": "org/acme",
}


def test_by_default_each_source_may_choose_only_its_own_audience() -> None:
    # A Vault source may not pick the Hub's audience (Vault would hold a token the Hub
    # exchanges), nor an exchange source Vault's.
    for asked, own, other in [
        (VAULT_ANNOTATIONS, "vault", "https://huggingface.co"),
        (OIDC_ANNOTATIONS, "https://huggingface.co", "vault"),
    ]:
        pod = kserve_predictor_pod({**asked, "tokensidecar.io/token-audience": own})
        assert projected_audience(injected(pod, SETTINGS)) == own
        with pytest.raises(InvalidInjection) as caught:
            inject(
                kserve_predictor_pod({**asked, "tokensidecar.io/token-audience": other}), settings=SETTINGS
            )
        assert caught.value.subject == "tokensidecar.io/token-audience"


def test_the_default_denies_any_other_audience_naming_the_annotation_and_what_is_allowed() -> None:
    for asked, own in ((VAULT_ANNOTATIONS, "vault"), (OIDC_ANNOTATIONS, "https://huggingface.co")):
        pod = kserve_predictor_pod(
            {**asked, "tokensidecar.io/token-audience": "https://kubernetes.default.svc"}
        )
        with pytest.raises(InvalidInjection) as caught:
            inject(pod, settings=SETTINGS)
        assert caught.value.subject == "tokensidecar.io/token-audience"
        assert str(caught.value) == (
            "tokensidecar.io/token-audience: 'https://kubernetes.default.svc' is not an allowed token "
            f"audience (the source's default or --allowed-token-audiences: {own})"
        )


def test_the_webhooks_configured_audiences_are_the_ones_allowed_by_default() -> None:
    settings = dataclasses.replace(SETTINGS, vault_token_audience="vault.corp.example")
    pod = kserve_predictor_pod({**VAULT_ANNOTATIONS, "tokensidecar.io/token-audience": "vault.corp.example"})
    assert projected_audience(injected(pod, settings)) == "vault.corp.example"
    with pytest.raises(InvalidInjection) as caught:
        inject(
            kserve_predictor_pod({**VAULT_ANNOTATIONS, "tokensidecar.io/token-audience": "vault"}),
            settings=settings,
        )
    assert caught.value.subject == "tokensidecar.io/token-audience"


def test_allowed_token_audiences_adds_audiences_a_pod_may_choose() -> None:
    settings = dataclasses.replace(SETTINGS, allowed_token_audiences=("vault.team-a", "sts.example"))
    for audience in ("vault.team-a", "sts.example", "vault"):
        pod = kserve_predictor_pod({**VAULT_ANNOTATIONS, "tokensidecar.io/token-audience": audience})
        assert projected_audience(injected(pod, settings)) == audience
    with pytest.raises(InvalidInjection) as caught:
        inject(
            kserve_predictor_pod({**VAULT_ANNOTATIONS, "tokensidecar.io/token-audience": "vault.team-b"}),
            settings=settings,
        )
    assert caught.value.subject == "tokensidecar.io/token-audience"
    assert "sts.example, vault, vault.team-a)" in caught.value.problem


@pytest.mark.parametrize(
    "settings",
    [
        dataclasses.replace(SETTINGS, allowed_token_audiences=("tokensidecar-gateway",)),
        dataclasses.replace(SETTINGS, gateway_audience="gw.example", allowed_token_audiences=("gw.example",)),
        # Even a webhook whose own Vault audience is the gateway's gives no pod the choice of it.
        dataclasses.replace(SETTINGS, gateway_audience="vault"),
    ],
    ids=["listed", "listed-custom-gateway-audience", "the-vault-default"],
)
def test_the_gateways_audience_is_refused_even_if_listed(settings: InjectionSettings) -> None:
    for asked in (VAULT_ANNOTATIONS, OIDC_ANNOTATIONS):
        pod = kserve_predictor_pod({**asked, "tokensidecar.io/token-audience": settings.gateway_audience})
        with pytest.raises(InvalidInjection) as caught:
            inject(pod, settings=settings)
        assert caught.value.subject == "tokensidecar.io/token-audience"
        assert "the gateway's audience (--inject-gateway-audience)" in caught.value.problem


def test_gateway_mode_takes_no_token_audience_annotation() -> None:
    gateway = dataclasses.replace(
        SETTINGS,
        gateway_url="http://tokensidecar-gateway.tokensidecar-system.svc:8080",
        allowed_token_audiences=("x",),
    )
    annotations = {
        "tokensidecar.io/inject": "true",
        "tokensidecar.io/mode": "gateway",
        "tokensidecar.io/token-audience": "x",
    }
    with pytest.raises(InvalidInjection) as caught:
        inject(kserve_predictor_pod(annotations), settings=gateway)
    assert caught.value.subject == "tokensidecar.io/token-audience"
    assert "does not apply to mode 'gateway'" in caught.value.problem

"""Gateway mode and KServe's LocalModelCache download pods (docs/annotations.md), over plain dicts.

Gateway mode puts no sidecar and no Hugging Face credential in the pod: the target
containers read a kubelet-projected service-account token (audience: the gateway's) as
``HF_TOKEN_PATH`` and talk to ``HF_ENDPOINT`` = the gateway. Patches are applied with
jsonpatch and the result validated against the Kubernetes schemas, as in
``test_webhook_inject.py``.

The LocalModelCache pod below is the one KServe renders: the Job of
``LocalModelNodeReconciler.launchJob`` in kserve/kserve
``pkg/controller/v1alpha1/localmodelnode/controller.go`` (commit
aaac4e294dae2c7b1aa1886447793f3aa1c30912): container ``kserve-localmodel-download``
(``getContainerSpecFromConfig``: the storage-initializer image,
``terminationMessagePolicy: FallbackToLogsOnError``), ``args: [<sourceModelUri>,
/mnt/models]``, the PVC ``kserve-pvc-source`` mounted at ``/mnt/models`` with
``subPath: models/<GetStorageKey(uri)>`` (the first 16 hex of sha256 of the URI),
``nodeSelector: {kubernetes.io/hostname: <node>}``, ``restartPolicy: Never``,
``securityContext.fsGroup`` from the ``localModel`` config (1000 in KServe's chart),
and, when the LocalModelCache names a service account, ``HF_TOKEN`` from that account's
Secret (``injectCredentials`` → ``CreateSecretVolumeAndEnv`` →
``pkg/credentials/hf/hf_secret.go`` ``BuildSecretEnvs``). Then what the Job controller and
the API server add before a mutating webhook sees it: ``generateName``, the ``job-name``
labels, the owner reference and tracking finalizer, the ``default`` service account and
the ServiceAccount admission plugin's ``kube-api-access-*`` volume.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from typing import Any

import pytest

from tests.webhook.test_inject import (
    SETTINGS,
    VAULT_ANNOTATIONS,
    apply,
    container,
    env_of,
    injected,
    kserve_predictor_pod,
    storage_initializer,
)
from tokensidecar.config import ConfigError
from tokensidecar.webhook.inject import (
    IDENTITY_VOLUME,
    STATUS_ANNOTATION,
    TOKEN_DIR,
    TOKEN_PATH,
    InjectionSettings,
    InvalidInjection,
    inject,
)

GATEWAY_URL = "http://tokensidecar-gateway.tokensidecar-system.svc:8080"
GATEWAY = dataclasses.replace(SETTINGS, gateway_url=GATEWAY_URL)
GATEWAY_ANNOTATIONS = {"tokensidecar.io/inject": "true", "tokensidecar.io/mode": "gateway"}
LOCALMODEL_NAMESPACE = "kserve-localmodel-jobs"


def assert_reads_the_gateway(item: dict[str, Any]) -> None:
    env = env_of(item)
    assert env["HF_TOKEN_PATH"] == TOKEN_PATH
    assert env["HF_ENDPOINT"] == GATEWAY_URL
    assert "HF_TOKEN" not in env and "HUGGING_FACE_HUB_TOKEN" not in env
    mounts = [m for m in item["volumeMounts"] if m["name"] == IDENTITY_VOLUME]
    assert mounts == [{"name": IDENTITY_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}]


def identity_volume(pod: dict[str, Any]) -> dict[str, Any]:
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == IDENTITY_VOLUME]
    return volume


def test_gateway_mode_injects_no_sidecar_and_points_every_container_at_the_gateway() -> None:
    pod = injected(kserve_predictor_pod(GATEWAY_ANNOTATIONS), GATEWAY)
    names = [c["name"] for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]]
    assert "tokensidecar" not in names and names == ["storage-initializer", "kserve-container"]
    assert identity_volume(pod) == {
        "name": IDENTITY_VOLUME,
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": "tokensidecar-gateway",
                        "expirationSeconds": 3600,
                        "path": "token",
                    }
                }
            ]
        },
    }
    assert all(v["name"] != "tokensidecar-token" for v in pod["spec"]["volumes"])
    assert_reads_the_gateway(container(pod, "storage-initializer"))
    assert_reads_the_gateway(container(pod, "kserve-container"))
    assert pod["metadata"]["annotations"][STATUS_ANNOTATION] == "injected"


def test_gateway_mode_is_the_webhooks_default_when_set_so() -> None:
    settings = dataclasses.replace(GATEWAY, mode="gateway", gateway_audience="gw.example")
    pod = injected(kserve_predictor_pod({"tokensidecar.io/inject": "true"}), settings)
    assert_reads_the_gateway(container(pod, "kserve-container"))
    assert identity_volume(pod)["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "gw.example"
    # A pod may still ask for the sidecar.
    sidecar = injected(
        kserve_predictor_pod({**VAULT_ANNOTATIONS, "tokensidecar.io/mode": "sidecar"}), settings
    )
    assert container(sidecar, "tokensidecar")["restartPolicy"] == "Always"


def test_gateway_mode_converges_when_kserve_appends_its_storage_initializer_later() -> None:
    first = injected(kserve_predictor_pod(GATEWAY_ANNOTATIONS, with_storage_initializer=False), GATEWAY)
    assert_reads_the_gateway(container(first, "kserve-container"))
    # KServe's pod mutator runs after this webhook and appends its init container with HF_TOKEN.
    first["spec"]["initContainers"] = [storage_initializer()]
    patch = inject(first, settings=GATEWAY)
    assert patch and all(op["path"].startswith("/spec/initContainers/0/") for op in patch)
    second = apply(copy.deepcopy(first), patch)
    assert_reads_the_gateway(container(second, "storage-initializer"))
    assert inject(second, settings=GATEWAY) == []
    assert len([v for v in second["spec"]["volumes"] if v["name"] == IDENTITY_VOLUME]) == 1


def test_gateway_mode_replaces_an_existing_hf_endpoint_and_neutralises_env_from() -> None:
    pod = kserve_predictor_pod(GATEWAY_ANNOTATIONS)
    target = container(pod, "kserve-container")
    target["env"].append({"name": "HF_ENDPOINT", "value": "https://huggingface.co"})
    target["envFrom"] = [{"secretRef": {"name": "hf-secret"}}]
    result = container(injected(pod, GATEWAY), "kserve-container")
    env = {e["name"]: e.get("value") for e in result["env"]}
    assert env["HF_ENDPOINT"] == GATEWAY_URL
    assert env["HF_TOKEN"] == "" and env["HUGGING_FACE_HUB_TOKEN"] == ""  # blank beats envFrom
    assert [e["name"] for e in result["env"]].count("HF_ENDPOINT") == 1


def test_gateway_mode_containers_annotation_limits_the_targets() -> None:
    pod = injected(
        kserve_predictor_pod({**GATEWAY_ANNOTATIONS, "tokensidecar.io/containers": "storage-initializer"}),
        GATEWAY,
    )
    assert_reads_the_gateway(container(pod, "storage-initializer"))
    assert "HF_ENDPOINT" not in env_of(container(pod, "kserve-container"))


@pytest.mark.parametrize(
    ("annotations", "subject"),
    [
        ({**GATEWAY_ANNOTATIONS, "tokensidecar.io/vault-path": "secret/hf/x"}, "tokensidecar.io/vault-path"),
        ({**GATEWAY_ANNOTATIONS, "tokensidecar.io/image": "ghcr.io/x/y:1"}, "tokensidecar.io/image"),
        ({**GATEWAY_ANNOTATIONS, "tokensidecar.io/mode": "proxy"}, "tokensidecar.io/mode"),
    ],
    ids=["vault-path", "image", "unknown-mode"],
)
def test_gateway_mode_refuses_annotations_it_cannot_honour(annotations: dict[str, str], subject: str) -> None:
    with pytest.raises(InvalidInjection) as caught:
        inject(kserve_predictor_pod(annotations), settings=GATEWAY)
    assert caught.value.subject == subject


def test_gateway_mode_without_the_gateway_url_is_denied_naming_the_setting() -> None:
    with pytest.raises(InvalidInjection) as caught:
        inject(kserve_predictor_pod(GATEWAY_ANNOTATIONS), settings=SETTINGS)
    assert caught.value.subject == "tokensidecar.io/mode" and "--inject-gateway-url" in caught.value.problem
    for field in ("mode", "localmodel_mode"):
        with pytest.raises(ConfigError, match="TOKENSIDECAR_INJECT_GATEWAY_URL is required"):
            InjectionSettings(image=SETTINGS.image, **{field: "gateway"})


# --- KServe's LocalModelCache download pods -------------------------------------------------------

SOURCE_MODEL_URI = "hf://meta-llama/Llama-3.1-8B-Instruct"


def localmodel_download_pod(*, from_service_account: bool = True) -> dict[str, Any]:
    """The pod of a LocalModelNode download Job as the webhook receives it (see the module doc)."""
    storage_key = hashlib.sha256(SOURCE_MODEL_URI.encode()).hexdigest()[:16]
    job_name = "llama-3-1-8b-gpu-node-1"
    download: dict[str, Any] = {
        "name": "kserve-localmodel-download",
        "image": "kserve/storage-initializer:v0.16.0",
        "args": [SOURCE_MODEL_URI, "/mnt/models"],
        "resources": {},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "imagePullPolicy": "IfNotPresent",
        "volumeMounts": [
            {"name": "kserve-pvc-source", "mountPath": "/mnt/models", "subPath": f"models/{storage_key}"},
            {
                "name": "kube-api-access-q8w2n",
                "readOnly": True,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            },
        ],
    }
    if from_service_account:
        download["env"] = [
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "hf-cache-secret", "key": "HF_TOKEN"}},
            }
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{job_name}abcde-",
            "namespace": LOCALMODEL_NAMESPACE,
            "labels": {
                "batch.kubernetes.io/controller-uid": "5c1e0a3e-7f1e-4c8e-9d4b-0f8a1b2c3d4e",
                "batch.kubernetes.io/job-name": f"{job_name}abcde",
                "controller-uid": "5c1e0a3e-7f1e-4c8e-9d4b-0f8a1b2c3d4e",
                "job-name": f"{job_name}abcde",
            },
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": f"{job_name}abcde",
                    "uid": "5c1e0a3e-7f1e-4c8e-9d4b-0f8a1b2c3d4e",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "finalizers": ["batch.kubernetes.io/job-tracking"],
        },
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": "gpu-node-1"},
            "containers": [download],
            "restartPolicy": "Never",
            "securityContext": {"fsGroup": 1000},
            "serviceAccountName": "default",
            "volumes": [
                {"name": "kserve-pvc-source", "persistentVolumeClaim": {"claimName": "llama-3-1-8b-gpu"}},
                {
                    "name": "kube-api-access-q8w2n",
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


def test_localmodel_download_pods_are_injected_in_gateway_mode() -> None:
    settings = dataclasses.replace(GATEWAY, localmodel_mode="gateway")
    pod = injected(localmodel_download_pod(), settings)
    assert_reads_the_gateway(container(pod, "kserve-localmodel-download"))
    assert pod["metadata"]["annotations"] == {STATUS_ANNOTATION: "injected"}
    assert [c["name"] for c in pod["spec"]["containers"]] == ["kserve-localmodel-download"]
    assert "initContainers" not in pod["spec"]
    # The API server may review it again: nothing more to do.
    assert inject(pod, settings=settings) == []


def test_localmodel_download_pods_in_sidecar_mode_use_the_localmodel_annotations() -> None:
    settings = dataclasses.replace(
        SETTINGS,
        localmodel_mode="sidecar",
        localmodel_annotations={"source": "kubernetes-secret", "secret-name": "hf-cache-token"},
    )
    pod = injected(localmodel_download_pod(), settings)
    sidecar = container(pod, "tokensidecar")
    assert sidecar["restartPolicy"] == "Always"
    env = env_of(sidecar)
    assert (
        env["TOKENSIDECAR_SOURCE"] == "kubernetes-secret"
        and env["TOKENSIDECAR_SECRET_NAME"] == "hf-cache-token"
    )
    download = env_of(container(pod, "kserve-localmodel-download"))
    assert download["HF_TOKEN_PATH"] == TOKEN_PATH and "HF_TOKEN" not in download
    assert inject(pod, settings=settings) == []


def test_a_wrong_localmodel_setting_is_denied_naming_the_setting() -> None:
    settings = dataclasses.replace(
        SETTINGS, localmodel_mode="sidecar", localmodel_annotations={"source": "vault"}
    )
    with pytest.raises(InvalidInjection) as caught:
        inject(localmodel_download_pod(), settings=settings)
    assert caught.value.subject == "TOKENSIDECAR_LOCALMODEL_ANNOTATIONS (tokensidecar.io/vault-path)"


def test_only_unannotated_download_pods_in_the_localmodel_namespace_are_taken() -> None:
    settings = dataclasses.replace(GATEWAY, localmodel_mode="gateway")
    assert inject(localmodel_download_pod(), settings=SETTINGS) == []  # --localmodel-mode off (default)
    elsewhere = localmodel_download_pod()
    elsewhere["metadata"]["namespace"] = "models"
    assert inject(elsewhere, settings=settings) == []
    renamed = localmodel_download_pod()
    renamed["spec"]["containers"][0]["name"] = "downloader"
    assert inject(renamed, settings=settings) == []
    opted_out = localmodel_download_pod()
    opted_out["metadata"]["annotations"] = {"tokensidecar.io/inject": "false"}
    assert inject(opted_out, settings=settings) == []
    # The review's namespace stands in when the pod names none.
    unnamed = localmodel_download_pod()
    del unnamed["metadata"]["namespace"]
    assert inject(unnamed, settings=settings, namespace=LOCALMODEL_NAMESPACE)


# --- the gateway's policy at admission (--gateway-policy, docs/security.md) --------------------

ADMISSION_POLICY = """
rules:
  - subjects: [{namespace: kserve-test, serviceAccount: llama-*}]
    repos: [meta-llama/*]
"""


def gateway_predictor(*, service_account: str, uri: str, initializer: bool = True) -> dict[str, Any]:
    """A predictor pod as KServe renders it: the source URI in its internal annotation (and,
    with ``initializer``, the storage-initializer KServe appends, for hf://meta-llama/…)."""
    pod = kserve_predictor_pod(
        {**GATEWAY_ANNOTATIONS, "internal.serving.kserve.io/storage-initializer-sourceuri": uri},
        with_storage_initializer=initializer,
    )
    pod["metadata"]["namespace"] = "kserve-test"
    pod["spec"]["serviceAccountName"] = service_account
    return pod


def with_policy(text: str) -> InjectionSettings:
    from tokensidecar.gateway.policy import Policy

    return dataclasses.replace(GATEWAY, gateway_policy=Policy.from_yaml(text))


def test_gateway_policy_admits_a_pod_its_service_account_may_read() -> None:
    pod = gateway_predictor(service_account="llama-server", uri="hf://meta-llama/Llama-3.1-8B-Instruct")
    assert inject(pod, settings=with_policy(ADMISSION_POLICY))


@pytest.mark.parametrize(
    ("service_account", "uri"),
    [
        ("other-server", "hf://meta-llama/Llama-3.1-8B-Instruct"),  # not a subject of the rule
        ("llama-server", "hf://acme/private-model"),  # a repo the rule does not grant
    ],
)
def test_gateway_policy_denies_at_admission_what_the_gateway_would_refuse(
    service_account: str, uri: str
) -> None:
    pod = gateway_predictor(service_account=service_account, uri=uri)
    with pytest.raises(InvalidInjection) as refused:
        inject(pod, settings=with_policy(ADMISSION_POLICY))
    assert refused.value.subject == "storageUri"
    assert uri in refused.value.problem and f"kserve-test/{service_account}" in refused.value.problem
    # Without the policy setting, the same pod is injected (the gateway refuses it later).
    assert inject(pod, settings=GATEWAY)


def test_gateway_policy_checks_the_storage_initializer_kserve_appends_on_reinvocation() -> None:
    pod = kserve_predictor_pod(GATEWAY_ANNOTATIONS, with_storage_initializer=False)
    pod["metadata"]["namespace"] = "kserve-test"
    pod["spec"]["serviceAccountName"] = "other-server"
    once = apply(copy.deepcopy(pod), inject(pod, settings=GATEWAY))
    once["spec"].setdefault("initContainers", []).append(storage_initializer())  # hf://meta-llama/…
    with pytest.raises(InvalidInjection) as refused:
        inject(once, settings=with_policy(ADMISSION_POLICY))
    assert "hf://meta-llama/Llama-3.1-8B-Instruct" in refused.value.problem


def test_gateway_policy_leaves_other_storage_schemes_and_sidecar_mode_alone() -> None:
    s3 = gateway_predictor(service_account="other-server", uri="s3://bucket/model", initializer=False)
    assert inject(s3, settings=with_policy(ADMISSION_POLICY))
    sidecar = kserve_predictor_pod(VAULT_ANNOTATIONS)
    sidecar["spec"]["serviceAccountName"] = "other-server"
    assert inject(sidecar, settings=with_policy(ADMISSION_POLICY))

"""The Kustomize manifests: they render, they validate, and they are safe to apply.

Every kustomization under ``manifests/`` is rendered with the real ``kubectl kustomize``
and every rendered object is validated offline by ``kubernetes-validate`` against the
oldest Kubernetes release with native sidecars (1.29) and the newest schema it ships.
Custom resources (InferenceService, PrometheusRule, PodMonitor, ServiceMonitor,
Certificate, Issuer) have no schema there: they are still rendered and checked
structurally, and the alert expressions are parsed as PromQL.

Then the posture of every workload (non-root, read-only root filesystem, no privilege
escalation, all capabilities dropped, RuntimeDefault seccomp, requests and a memory
limit, pinned images) and the least privilege of every RBAC rule (no wildcards, Secrets
only by name). Finally the Vault example's setup script runs against a real OpenBao and
the role it creates admits exactly the service account the example names.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import hvac
import hvac.exceptions
import pytest
import yaml

from tests.fixtures.jwt import JwtIssuer
from tests.fixtures.openbao import TokenReviewServer
from tokensidecar.demo.openbao import DevServer, bao_binary

ROOT = pathlib.Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
IMAGE_COMPONENT = MANIFESTS / "components" / "image" / "kustomization.yaml"

# Oldest release with native sidecars (restartPolicy: Always on init containers, beta and
# on by default since 1.29), and whatever the installed kubernetes-validate knows as newest.
K8S_VERSIONS = ("1.29.0", "latest")

# Kinds that are custom resources: no schema in kubernetes-validate, checked structurally.
CUSTOM_KINDS = {
    "serving.kserve.io/v1beta1": {"InferenceService"},
    "serving.kserve.io/v1alpha1": {"LocalModelCache"},
    "monitoring.coreos.com/v1": {"PrometheusRule", "PodMonitor", "ServiceMonitor"},
    "cert-manager.io/v1": {"Certificate", "Issuer", "ClusterIssuer"},
}

Rendered = dict[str, list[dict[str, Any]]]  # kustomization dir → its rendered objects

WORKLOAD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}
SECRET_VERBS_WITHOUT_NAMES = {"create"}

# Settings and annotations the manifests already wire while the code that declares them is
# being written on other branches (webhook allow-lists, gateway mode, the local model
# cache, the gateway itself). A name counts as pending only while no command declares it:
# once its branch lands, the strict check applies to it like to every other name.
PENDING_SETTINGS = {
    "TOKENSIDECAR_INJECT_GATEWAY_URL",
    "TOKENSIDECAR_LOCALMODEL_NAMESPACE",
    "TOKENSIDECAR_LOCALMODEL_MODE",
    "TOKENSIDECAR_ALLOWED_VAULT_ADDRS",
    "TOKENSIDECAR_ALLOWED_IMAGES",
    "TOKENSIDECAR_ALLOWED_SECRET_NAMESPACES",
    "TOKENSIDECAR_ALLOW_INSECURE_VAULT",
    "TOKENSIDECAR_GATEWAY_LISTEN",
    "TOKENSIDECAR_GATEWAY_UPSTREAM",
    "TOKENSIDECAR_GATEWAY_CREDENTIALS",
    "TOKENSIDECAR_GATEWAY_POLICY",
    "TOKENSIDECAR_GATEWAY_AUDIENCE",
    "TOKENSIDECAR_GATEWAY_CACHE_DIR",
    "TOKENSIDECAR_GATEWAY_CACHE_SIZE",
    "TOKENSIDECAR_GATEWAY_REVISION_TTL",
    "TOKENSIDECAR_GATEWAY_STALE_IF_ERROR",
}
PENDING_ANNOTATIONS = {"mode"}


def kustomization_dirs() -> list[pathlib.Path]:
    """Every kustomization that can be built on its own (components are built by their users)."""
    found = []
    for path in sorted(MANIFESTS.rglob("kustomization.yaml")):
        if yaml.safe_load(path.read_text()).get("kind") == "Component":
            continue
        found.append(path.parent)
    return found


def _render(directory: pathlib.Path) -> tuple[pathlib.Path, str]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory.relative_to(ROOT)}:\n{result.stderr}"
    return directory, result.stdout


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    """Relative kustomization dir → its rendered objects."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        outputs = list(pool.map(_render, kustomization_dirs()))
    return {
        str(directory.relative_to(MANIFESTS)): [doc for doc in yaml.safe_load_all(text) if doc]
        for directory, text in outputs
    }


def all_objects(rendered: Rendered) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, objects in rendered.items():
        for obj in objects:
            yield where, obj


def object_id(where: str, obj: dict[str, Any]) -> str:
    return f"{where}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def is_custom(obj: dict[str, Any]) -> bool:
    return obj.get("kind") in CUSTOM_KINDS.get(obj.get("apiVersion", ""), set())


def test_every_expected_kustomization_exists_and_renders(rendered: Rendered) -> None:
    for expected in (
        "base",
        "base/webhook",
        "base/gateway",
        "rotation",
        "overlays/example",
        "overlays/gateway",
        "overlays/pre-1.28",
        "overlays/monitoring-kube-prometheus-stack",
        "examples/vault",
        "examples/secret",
        "examples/manual",
        "examples/cert-manager",
        "examples/rotation",
        "examples/gateway",
        "monitoring",
    ):
        assert expected in rendered, f"manifests/{expected} is missing"
        assert rendered[expected], f"manifests/{expected} renders nothing"


def test_base_installs_into_tokensidecar_system(rendered: Rendered) -> None:
    for obj in rendered["base"]:
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == "tokensidecar-system"
        elif namespace is not None:
            assert namespace == "tokensidecar-system", object_id("base", obj)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendered_object_validates_against_the_kubernetes_schema(
    rendered: Rendered, version: str
) -> None:
    import kubernetes_validate

    desired = kubernetes_validate.latest_version() if version == "latest" else version
    problems = []
    validated = 0
    for where, obj in all_objects(rendered):
        if is_custom(obj):
            continue
        try:
            kubernetes_validate.validate(obj, desired, strict=True)
            validated += 1
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{object_id(where, obj)}: no schema for {obj['apiVersion']} in {desired}")
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{object_id(where, obj)}: {exc.message} at {list(exc.absolute_path)}")
    assert not problems, "\n".join(problems)
    assert validated > 10


def test_custom_resources_are_well_formed(rendered: Rendered) -> None:
    """The kinds kubernetes-validate has no schema for, checked for what a user relies on."""
    seen: set[str] = set()
    for where, obj in all_objects(rendered):
        if not is_custom(obj):
            continue
        seen.add(obj["kind"])
        assert obj["metadata"].get("name"), object_id(where, obj)
        if obj["kind"] == "InferenceService":
            predictor = obj["spec"]["predictor"]
            assert predictor["model"]["modelFormat"]["name"] == "huggingface", object_id(where, obj)
            assert predictor["model"]["storageUri"].startswith("hf://"), object_id(where, obj)
            annotations = predictor.get("annotations", {})
            assert annotations.get("tokensidecar.io/inject") == "true", object_id(where, obj)
            assert predictor.get("serviceAccountName"), "each model gets its own identity"
    assert {"InferenceService", "PrometheusRule", "PodMonitor", "ServiceMonitor", "Certificate"} <= seen


def test_example_annotations_are_ones_the_webhook_knows(rendered: Rendered) -> None:
    from tokensidecar.webhook.inject import ANNOTATION_PREFIX, KNOWN_ANNOTATIONS

    known = set(KNOWN_ANNOTATIONS) | PENDING_ANNOTATIONS
    for where, obj in all_objects(rendered):
        if obj["kind"] != "InferenceService":
            continue
        for key in obj["spec"]["predictor"].get("annotations", {}):
            if key.startswith(ANNOTATION_PREFIX):
                assert key.removeprefix(ANNOTATION_PREFIX) in known, f"{where}: {key}"


# --- workloads ---------------------------------------------------------------------------


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    kind = obj["kind"]
    if kind == "Pod":
        return dict(obj["spec"])
    if kind == "CronJob":
        return dict(obj["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(obj["spec"]["template"]["spec"])


def workloads(rendered: Rendered) -> list[tuple[str, dict[str, Any]]]:
    """Every workload of every kustomization, the pieces of the base included: each one
    rendered on its own must be as safe and as pinned as the whole."""
    return [(where, obj) for where, obj in all_objects(rendered) if obj["kind"] in WORKLOAD_KINDS]


def posture_problems(obj: dict[str, Any]) -> list[str]:
    spec = pod_spec(obj)
    pod_security = spec.get("securityContext") or {}
    problems = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"{flag}: true")
    containers = [*spec.get("initContainers", []), *spec.get("containers", [])]
    for container in containers:
        name = container["name"]
        security = container.get("securityContext") or {}

        def effective(key: str, *, security: dict[str, Any] = security) -> Any:
            return security.get(key, pod_security.get(key))

        if effective("runAsNonRoot") is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if effective("runAsUser") == 0:
            problems.append(f"{name}: runAsUser 0")
        if security.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: root filesystem is writable")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if security.get("privileged"):
            problems.append(f"{name}: privileged")
        capabilities = security.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{name}: capabilities not dropped (drop: [ALL])")
        if capabilities.get("add"):
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: seccompProfile is not RuntimeDefault")
        resources = container.get("resources") or {}
        for kind in ("cpu", "memory"):
            if not (resources.get("requests") or {}).get(kind):
                problems.append(f"{name}: no {kind} request")
        # A memory limit always; a CPU limit is the operator's choice (a throttled
        # sidecar misses its refresh deadline, and CPU is compressible).
        if not (resources.get("limits") or {}).get("memory"):
            problems.append(f"{name}: no memory limit")
        image = container.get("image", "")
        tag = image.rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in tag or tag.endswith(":latest")):
            problems.append(f"{name}: image {image!r} is not pinned to a version")
    return problems


def test_every_workload_is_hardened(rendered: Rendered) -> None:
    found = workloads(rendered)
    kinds = {obj["kind"] for _, obj in found}
    assert "Deployment" in kinds
    problems = [f"{object_id(where, obj)}: {p}" for where, obj in found for p in posture_problems(obj)]
    assert not problems, "\n".join(problems)


def test_posture_check_catches_a_root_container() -> None:
    """The posture check itself can fail: a bare container breaks every rule."""
    pod = {"kind": "Pod", "spec": {"containers": [{"name": "app", "image": "busybox"}]}}
    problems = " ".join(posture_problems(pod))
    for rule in ("runAsNonRoot", "writable", "allowPrivilegeEscalation", "capabilities", "seccomp"):
        assert rule in problems
    assert "not pinned" in problems and "no memory limit" in problems


def image_setting() -> str:
    component = yaml.safe_load(IMAGE_COMPONENT.read_text())
    (image,) = component["images"]
    return f"{image['newName']}:{image['newTag']}"


def test_tokensidecar_image_is_set_in_one_place(rendered: Rendered) -> None:
    import tokensidecar

    expected = image_setting()
    assert expected.endswith(f":{tokensidecar.__version__}"), "the image tag follows the package version"
    uses = 0
    for where, obj in workloads(rendered):
        spec = pod_spec(obj)
        for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            if "tokensidecar" in container["image"]:
                assert container["image"] == expected, f"{object_id(where, obj)}: {container['image']}"
                uses += 1
            for env in container.get("env", []):
                if env["name"] == "TOKENSIDECAR_SIDECAR_IMAGE":
                    assert env.get("value") == expected, f"{object_id(where, obj)}: injected image differs"
    assert uses >= 2


def test_sidecar_environment_names_are_declared_settings(rendered: Rendered) -> None:
    from tokensidecar.cli import COMMANDS

    declared = {setting.env for command in COMMANDS.values() for setting in command.settings()}
    known = declared | PENDING_SETTINGS
    for where, obj in workloads(rendered):
        spec = pod_spec(obj)
        for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            for env in container.get("env", []):
                if env["name"].startswith("TOKENSIDECAR_"):
                    assert env["name"] in known, f"{object_id(where, obj)}: {env['name']} is no setting"


def test_no_token_is_committed_in_a_secret(rendered: Rendered) -> None:
    for where, obj in all_objects(rendered):
        if obj["kind"] == "Secret":
            assert not obj.get("data") and not obj.get("stringData"), object_id(where, obj)


# --- RBAC --------------------------------------------------------------------------------


def rbac_problems(role: dict[str, Any], *, documented: str) -> list[str]:
    problems = []
    for rule in role.get("rules") or []:
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            if "*" in (rule.get(field) or []):
                problems.append(f"wildcard in {field}")
        verbs = set(rule.get("verbs") or [])
        for verb in ("escalate", "bind", "impersonate"):
            if verb in verbs:
                problems.append(f"grants {verb}")
        if "secrets" in (rule.get("resources") or []) and not rule.get("resourceNames"):
            if not verbs <= SECRET_VERBS_WITHOUT_NAMES:
                problems.append(f"secrets {sorted(verbs)} without resourceNames")
            elif role["metadata"]["name"] not in documented:
                problems.append("secrets create without resourceNames is not explained in docs/security.md")
    return problems


def test_rbac_grants_nothing_beyond_what_the_code_uses(rendered: Rendered) -> None:
    documented = (ROOT / "docs" / "security.md").read_text()
    roles = [(where, obj) for where, obj in all_objects(rendered) if obj["kind"] in {"Role", "ClusterRole"}]
    assert roles
    problems = [
        f"{object_id(where, obj)}: {p}"
        for where, obj in roles
        for p in rbac_problems(obj, documented=documented)
    ]
    assert not problems, "\n".join(problems)


def test_rbac_check_catches_wildcards_and_unnamed_secrets() -> None:
    role = {
        "metadata": {"name": "too-much"},
        "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]},
            {"apiGroups": ["*"], "resources": ["pods"], "verbs": ["*"]},
        ],
    }
    problems = " ".join(rbac_problems(role, documented=""))
    assert "without resourceNames" in problems and "wildcard in apiGroups" in problems


def test_role_bindings_point_at_roles_that_exist(rendered: Rendered) -> None:
    for where, objects in rendered.items():
        roles = {(o["kind"], o["metadata"]["name"]) for o in objects if o["kind"] in {"Role", "ClusterRole"}}
        for obj in objects:
            if obj["kind"] not in {"RoleBinding", "ClusterRoleBinding"}:
                continue
            ref = obj["roleRef"]
            if ref["name"].startswith("system:"):
                continue  # built-in cluster roles (e.g. system:auth-delegator)
            assert (ref["kind"], ref["name"]) in roles, f"{object_id(where, obj)} → missing {ref}"


def test_sidecar_secret_access_is_limited_to_its_own_secret(
    rendered: Rendered,
) -> None:
    objects = rendered["examples/secret"]
    annotations = next(o for o in objects if o["kind"] == "InferenceService")["spec"]["predictor"][
        "annotations"
    ]
    secret_name = annotations["tokensidecar.io/secret-name"]
    reader = next(
        o for o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("token-reader")
    )
    (rule,) = reader["rules"]
    assert rule["resourceNames"] == [secret_name]
    assert sorted(rule["verbs"]) == ["get", "list", "watch"]
    assert any(o["kind"] == "Secret" and o["metadata"]["name"] == secret_name for o in objects)


# --- webhook registration and monitoring --------------------------------------------------


def test_webhook_registration_converges_and_spares_the_system(
    rendered: Rendered,
) -> None:
    configs = [o for o in rendered["base"] if o["kind"] == "MutatingWebhookConfiguration"]
    assert configs, "the base installs the MutatingWebhookConfiguration"
    for config in configs:
        for webhook in config["webhooks"]:
            assert webhook.get("reinvocationPolicy") == "IfNeeded", "KServe's mutator runs after ours"
            assert webhook.get("sideEffects") == "None"
            assert "v1" in webhook.get("admissionReviewVersions", [])
            assert webhook.get("timeoutSeconds", 10) <= 10
            assert webhook["clientConfig"]["service"]["namespace"] == "tokensidecar-system"


def test_cert_manager_example_injects_the_ca_from_its_certificate(
    rendered: Rendered,
) -> None:
    objects = rendered["examples/cert-manager"]
    certificates = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Certificate"}
    (config,) = [o for o in objects if o["kind"] == "MutatingWebhookConfiguration"]
    inject_from = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    namespace, _, name = inject_from.partition("/")
    assert namespace == "tokensidecar-system" and name in certificates
    dns_names = certificates[name]["spec"]["dnsNames"]
    service = config["webhooks"][0]["clientConfig"]["service"]
    assert f"{service['name']}.{service['namespace']}.svc" in dns_names
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        args = " ".join(arg for c in pod_spec(deployment)["containers"] for arg in c.get("args", []))
        env = {
            e["name"]: e.get("value") for c in pod_spec(deployment)["containers"] for e in c.get("env", [])
        }
        assert "--self-signed" not in args and env.get("TOKENSIDECAR_SELF_SIGNED") in (None, "false")


def alert_rules(rendered: Rendered) -> list[dict[str, Any]]:
    rules = [o for o in rendered["monitoring"] if o["kind"] == "PrometheusRule"]
    return [rule for obj in rules for group in obj["spec"]["groups"] for rule in group["rules"]]


def test_alert_expressions_parse_as_promql_and_use_contract_metrics(
    rendered: Rendered,
) -> None:
    import promql_parser

    alerts = {rule["alert"]: rule for rule in alert_rules(rendered)}
    for name, rule in alerts.items():
        promql_parser.parse(rule["expr"])  # raises ValueError on a syntax error
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
    expiring = alerts["TokensidecarTokenExpiringSoon"]
    assert "tokensidecar_token_expiry_timestamp_seconds - time()" in expiring["expr"]
    assert "< 600" in expiring["expr"]
    failing = alerts["TokensidecarRotationFailing"]
    assert failing["expr"] == "tokensidecar_consecutive_failures > 3" and failing["for"] == "10m"
    assert "tokensidecar_ready == 0" in alerts["TokensidecarNotReady"]["expr"]
    assert 'result="error"' in alerts["TokensidecarWebhookErrors"]["expr"]


def markdown_anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    anchors = set()
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_every_alert_links_to_its_runbook_entry(rendered: Rendered) -> None:
    anchors = markdown_anchors((ROOT / "docs" / "runbook.md").read_text())
    for rule in alert_rules(rendered):
        url = rule["annotations"]["runbook_url"]
        assert url.split("#")[0].endswith("docs/runbook.md"), url
        assert url.split("#")[1] in anchors, f"{rule['alert']}: docs/runbook.md has no #{url.split('#')[1]}"


def test_monitors_scrape_the_ports_the_workloads_expose(rendered: Rendered) -> None:
    from tokensidecar.webhook.inject import SIDECAR_NAME

    (pod_monitor,) = [o for o in rendered["monitoring"] if o["kind"] == "PodMonitor"]
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == SIDECAR_NAME
    manual = next(o for o in rendered["examples/manual"] if o["kind"] == "Deployment")
    sidecar = next(c for c in pod_spec(manual)["initContainers"] if c["name"] == SIDECAR_NAME)
    assert sidecar["ports"][0]["name"] == SIDECAR_NAME
    (service_monitor,) = [
        o
        for o in rendered["monitoring"]
        if o["kind"] == "ServiceMonitor" and o["metadata"]["name"] == "tokensidecar-webhook"
    ]
    services = [o for o in rendered["base"] if o["kind"] == "Service"]
    selector = service_monitor["spec"]["selector"]["matchLabels"]
    matching = [s for s in services if selector.items() <= s["metadata"].get("labels", {}).items()]
    assert matching, f"no Service in the base carries the labels {selector}"
    port_names = {port.get("name") for service in matching for port in service["spec"]["ports"]}
    assert service_monitor["spec"]["endpoints"][0]["port"] in port_names


# --- the Vault example against a real OpenBao --------------------------------------------


@pytest.fixture
def ca_file(tmp_path: pathlib.Path) -> pathlib.Path:
    """A PEM certificate to stand in for the cluster CA in Vault's kubernetes auth config."""
    from tokensidecar.webhook.certs import generate_ca

    path = tmp_path / "ca.crt"
    path.write_bytes(generate_ca(common_name="kubernetes").cert_pem)
    return path


def test_vault_example_setup_binds_the_token_to_one_service_account(
    restartable_openbao: DevServer,
    token_review: TokenReviewServer,
    jwt_issuer: JwtIssuer,
    ca_file: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    canary = "hf_manifestcanary" + os.urandom(8).hex()
    token_file = tmp_path / "hf-token"
    token_file.write_text(canary)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vault").symlink_to(bao_binary())
    script = MANIFESTS / "examples" / "vault" / "vault" / "setup.sh"
    # Vault runs outside any cluster here, as in most production setups: it calls
    # TokenReview with a reviewer token of its own, never a local service-account file.
    reviewer = tmp_path / "reviewer.jwt"
    reviewer.write_text(
        jwt_issuer.service_account_token(namespace="vault", name="vault-reviewer", audience="api")
    )
    environ = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
        "VAULT_ADDR": restartable_openbao.addr,
        "VAULT_TOKEN": restartable_openbao.root_token,
        "BAO_ADDR": restartable_openbao.addr,
        "BAO_TOKEN": restartable_openbao.root_token,
        "KUBE_HOST": token_review.url,
        "KUBE_CA_FILE": str(ca_file),
        "HF_TOKEN_FILE": str(token_file),
        "EXPIRES_AT": "2030-01-01T00:00:00Z",
        "TOKEN_REVIEWER_JWT_FILE": str(reviewer),
    }
    for attempt in (1, 2):  # the script is safe to run again
        result = subprocess.run(
            ["bash", str(script)], env=environ, capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, f"run {attempt}:\n{result.stdout}\n{result.stderr}"
        assert canary not in result.stdout + result.stderr

    config = restartable_openbao.admin.read("auth/kubernetes/config")["data"]
    assert config["disable_local_ca_jwt"] is True
    assert reviewer.read_text() not in result.stdout + result.stderr

    def login(
        namespace: str, name: str, *, audience: str = "vault", role: str = "hf-llama-private"
    ) -> hvac.Client:
        jwt = jwt_issuer.service_account_token(namespace=namespace, name=name, audience=audience)
        token_review.admit(jwt, namespace=namespace, name=name)
        client = hvac.Client(url=restartable_openbao.addr)
        client.auth.kubernetes.login(role=role, jwt=jwt)
        return client

    client = login("models-team-a", "llama-private")
    secret = client.secrets.kv.v2.read_secret_version(
        path="hf/llama-private", mount_point="secret", raise_on_deleted_version=True
    )
    assert secret["data"]["data"]["token"] == canary
    metadata = restartable_openbao.admin.secrets.kv.v2.read_secret_metadata(
        path="hf/llama-private", mount_point="secret"
    )
    assert metadata["data"]["custom_metadata"]["expires_at"] == "2030-01-01T00:00:00Z"
    # The policy reads one path: a neighbour's token stays closed.
    restartable_openbao.admin.secrets.kv.v2.create_or_update_secret(
        path="hf/other-model", secret={"token": "hf_othermodel0000"}, mount_point="secret"
    )
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.read_secret_version(
            path="hf/other-model", mount_point="secret", raise_on_deleted_version=True
        )
    # Another namespace's service account with the same name is refused at login.
    with pytest.raises((hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest)):
        login("models-team-b", "llama-private")
    # The sidecar may read, never write; the rotation job (../rotation) may write this one path.
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.create_or_update_secret(
            path="hf/llama-private", secret={"token": "hf_sidecarwrite00"}, mount_point="secret"
        )
    rotator = login("models-team-a", "tokensidecar-rotate-llama-private", role="hf-llama-private-rotate")
    current = rotator.secrets.kv.v2.read_secret_metadata(path="hf/llama-private", mount_point="secret")
    rotator.secrets.kv.v2.create_or_update_secret(
        path="hf/llama-private",
        secret={"token": "hf_rotatedbythejob01"},
        cas=current["data"]["current_version"],
        mount_point="secret",
    )
    rotator.adapter.request(
        "PATCH",
        "/v1/secret/metadata/hf/llama-private",
        json={"custom_metadata": {"expires_at": "2031-01-01T00:00:00Z"}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    with pytest.raises(hvac.exceptions.Forbidden):
        rotator.secrets.kv.v2.create_or_update_secret(
            path="hf/other-model", secret={"token": "hf_notthisone000"}, mount_point="secret"
        )
    with pytest.raises((hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest)):
        login("models-team-a", "llama-private", role="hf-llama-private-rotate")


def test_vault_setup_outside_the_cluster_refuses_to_guess_how_to_review_tokens(
    tmp_path: pathlib.Path,
) -> None:
    script = MANIFESTS / "examples" / "vault" / "vault" / "setup.sh"
    environ = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "VAULT": "false",  # any Vault call would fail: the check comes before them
        "VAULT_IN_CLUSTER": "false",
    }
    result = subprocess.run(
        ["bash", str(script)], env=environ, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: Vault outside the cluster needs TOKEN_REVIEWER_JWT_FILE or USE_CALLER_JWT=true"
    )


# --- operator experience: overlays, the image, rotation per model -------------------------


def containers_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(obj)
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def env_of(container: dict[str, Any]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def webhook_deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "tokensidecar-webhook"
    ]
    return deployment


def test_every_kustomization_that_runs_tokensidecar_pins_its_image(rendered: Rendered) -> None:
    expected = image_setting()
    seen = set()
    for where, obj in workloads(rendered):
        for container in containers_of(obj):
            if "tokensidecar/tokensidecar" in container["image"]:
                assert container["image"] == expected, f"{object_id(where, obj)}: {container['image']}"
                seen.add(where)
    assert {"base/webhook", "base/gateway", "rotation", "examples/secret", "examples/vault"} <= seen


def test_the_base_sets_no_cluster_setting_an_apply_would_reset(rendered: Rendered) -> None:
    env = env_of(webhook_deployment(rendered["base"])["spec"]["template"]["spec"]["containers"][0])
    assert "TOKENSIDECAR_INJECT_VAULT_ADDR" not in env  # an empty value here wiped `kubectl set env`
    overlay = env_of(
        webhook_deployment(rendered["overlays/example"])["spec"]["template"]["spec"]["containers"][0]
    )
    assert overlay["TOKENSIDECAR_INJECT_VAULT_ADDR"], "the overlay is where the Vault address is set"
    assert overlay.get("TOKENSIDECAR_SELF_SIGNED") == "true", "the overlay keeps the base's settings"


def test_examples_use_the_webhook_default_vault_address(rendered: Rendered) -> None:
    for where, obj in all_objects(rendered):
        if obj["kind"] == "InferenceService":
            assert "tokensidecar.io/vault-addr" not in obj["spec"]["predictor"].get("annotations", {}), where


def _render_overlay(tmp_path: pathlib.Path, body: str) -> list[dict[str, Any]]:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(body)
    result = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def test_one_image_override_changes_every_tokensidecar_image(tmp_path: pathlib.Path) -> None:
    """An `images:` entry in the operator's own overlay reaches the injected sidecar too."""
    objects = _render_overlay(
        tmp_path,
        f"resources:\n  - {os.path.relpath(MANIFESTS / 'overlays' / 'gateway', tmp_path / 'overlay')}\n"
        "images:\n  - name: ghcr.io/tokensidecar/tokensidecar\n"
        "    newName: registry.example.com/ts\n    newTag: 9.9.9\n",
    )
    images = {c["image"] for o in objects if o["kind"] in WORKLOAD_KINDS for c in containers_of(o)}
    assert images == {"registry.example.com/ts:9.9.9"}
    env = env_of(webhook_deployment(objects)["spec"]["template"]["spec"]["containers"][0])
    assert env["TOKENSIDECAR_SIDECAR_IMAGE"] == "registry.example.com/ts:9.9.9"
    assert env["TOKENSIDECAR_SELF_SIGNED"] == "true"  # other values are not images: untouched


def test_rotation_is_opt_in_and_per_model(rendered: Rendered) -> None:
    assert not [o for o in rendered["base"] if o["kind"] == "CronJob"], "the base runs no rotation job"
    checked = 0
    for where in ("examples/secret", "examples/vault", "examples/rotation"):
        objects = rendered[where]
        (cronjob,) = [o for o in objects if o["kind"] == "CronJob"]
        namespace = cronjob["metadata"]["namespace"]
        (config,) = [
            o
            for o in objects
            if o["kind"] == "ConfigMap"
            and o["metadata"]["name"]
            == pod_spec(cronjob)["containers"][0]["envFrom"][0]["configMapRef"]["name"]
        ]
        data = config["data"]
        if data["TOKENSIDECAR_ISSUER"] == "oidc-exchange":
            assert data.get("TOKENSIDECAR_OIDC_RESOURCE", "").startswith("models/"), where
        if data["TOKENSIDECAR_TARGET"] == "kubernetes-secret":
            name = data["TOKENSIDECAR_SECRET_NAME"]
            assert any(o["kind"] == "Secret" and o["metadata"]["name"] == name for o in objects), where
            roles = [
                o
                for o in objects
                if o["kind"] == "Role" and o["metadata"]["name"] == cronjob["metadata"]["name"]
            ]
            (role,) = roles
            assert role["rules"][0]["resourceNames"] == [name], where
            assert role["metadata"]["namespace"] == namespace
        else:
            assert data["TOKENSIDECAR_VAULT_PATH"] and data["TOKENSIDECAR_VAULT_ROLE"], where
            assert not [o for o in objects if o["kind"] == "Role" and "rotate" in o["metadata"]["name"]]
            volumes = {v["name"] for v in pod_spec(cronjob)["volumes"]}
            assert "kube-api-access" not in volumes, f"{where}: a Vault target needs no API token"
        checked += 1
    assert checked == 3


def test_the_secret_example_sidecar_reads_what_its_rotation_writes(rendered: Rendered) -> None:
    objects = rendered["examples/secret"]
    isvc = next(o for o in objects if o["kind"] == "InferenceService")
    (config,) = [o for o in objects if o["kind"] == "ConfigMap" and "rotate" in o["metadata"]["name"]]
    assert (
        config["data"]["TOKENSIDECAR_SECRET_NAME"]
        == isvc["spec"]["predictor"]["annotations"]["tokensidecar.io/secret-name"]
    )
    vault = rendered["examples/vault"]
    isvc = next(o for o in vault if o["kind"] == "InferenceService")
    (config,) = [o for o in vault if o["kind"] == "ConfigMap" and "rotate" in o["metadata"]["name"]]
    assert (
        config["data"]["TOKENSIDECAR_VAULT_PATH"]
        == isvc["spec"]["predictor"]["annotations"]["tokensidecar.io/vault-path"]
    )


def test_no_binding_crosses_a_namespace_and_secret_creators_share_none_with_rotation(
    rendered: Rendered,
) -> None:
    for where, obj in all_objects(rendered):
        if obj["kind"] == "RoleBinding":
            for subject in obj["subjects"]:
                if subject["kind"] == "ServiceAccount":
                    assert subject.get("namespace", obj["metadata"].get("namespace")) == obj["metadata"].get(
                        "namespace"
                    ), object_id(where, obj)
    for where, objects in rendered.items():
        creators = {
            o["metadata"].get("namespace")
            for o in objects
            if o["kind"] == "Role"
            and any(
                "secrets" in r.get("resources", []) and "create" in r.get("verbs", [])
                for r in o.get("rules") or []
            )
        }
        rotators = {
            o["metadata"].get("namespace")
            for o in objects
            if o["kind"] == "ServiceAccount" and o["metadata"]["name"].startswith("tokensidecar-rotate")
        }
        assert not creators & rotators, (
            f"{where}: a Role may create Secrets where a rotation job's identity lives"
        )


# --- hardening: cert-manager, NetworkPolicies, priority, older clusters -------------------


def test_cert_manager_example_drops_every_self_signed_privilege(rendered: Rendered) -> None:
    objects = rendered["examples/cert-manager"]
    assert not [
        o for o in objects if o["kind"] in {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
    ]
    spec = pod_spec(webhook_deployment(objects))
    assert not [v for v in spec.get("volumes", []) if "projected" in v], "no API token is mounted"
    assert spec.get("automountServiceAccountToken") is False
    (account,) = [o for o in objects if o["kind"] == "ServiceAccount"]
    assert account.get("automountServiceAccountToken") is False


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return wanted.items() <= labels.items()


def test_every_tokensidecar_workload_has_a_network_policy(rendered: Rendered) -> None:
    for where, objects in rendered.items():
        policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
        for obj in objects:
            if obj["kind"] not in WORKLOAD_KINDS or where.startswith("examples/manual"):
                continue
            if obj["kind"] == "CronJob":
                labels = obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
            else:
                labels = obj["spec"]["template"]["metadata"]["labels"]
            matching = [p for p in policies if _selects(p, labels)]
            assert matching, f"{object_id(where, obj)}: no NetworkPolicy selects it"
            for policy in matching:
                assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}, object_id(where, policy)


def test_the_sidecar_port_is_open_to_prometheus_only(rendered: Rendered) -> None:
    from tokensidecar.webhook.settings import SETTINGS

    port = int(next(s for s in SETTINGS if s.env == "TOKENSIDECAR_SIDECAR_PORT").default or 0)
    for where in ("examples/secret", "examples/vault"):
        isvc = next(o for o in rendered[where] if o["kind"] == "InferenceService")
        (policy,) = [
            o
            for o in rendered[where]
            if o["kind"] == "NetworkPolicy" and "predictor" in o["metadata"]["name"]
        ]
        assert _selects(policy, {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]})
        for rule in policy["spec"]["ingress"]:
            if any(p["port"] == port for p in rule["ports"]):
                assert rule.get("from"), f"{where}: the sidecar port is open to everyone"


def test_the_fail_closed_webhook_has_a_priority_class_of_its_own(rendered: Rendered) -> None:
    objects = rendered["base"]
    name = pod_spec(webhook_deployment(objects)).get("priorityClassName")
    (priority,) = [o for o in objects if o["kind"] == "PriorityClass"]
    assert name == priority["metadata"]["name"]
    assert not name.startswith("system-")
    assert priority["preemptionPolicy"] == "Never" and priority["globalDefault"] is False


def test_clusters_before_1_28_get_a_label_selected_webhook(rendered: Rendered) -> None:
    (config,) = [o for o in rendered["overlays/pre-1.28"] if o["kind"] == "MutatingWebhookConfiguration"]
    (webhook,) = config["webhooks"]
    assert "matchConditions" not in webhook, "older API servers ignore or refuse matchConditions"
    assert webhook["objectSelector"]["matchLabels"] == {"tokensidecar.io/inject": "true"}
    assert webhook["objectSelector"]["matchExpressions"], "the webhook's own pods stay excluded"
    env = env_of(
        webhook_deployment(rendered["overlays/pre-1.28"])["spec"]["template"]["spec"]["containers"][0]
    )
    assert env["TOKENSIDECAR_LEGACY_SIDECAR"] == "true"
    (base_config,) = [o for o in rendered["base"] if o["kind"] == "MutatingWebhookConfiguration"]
    assert base_config["webhooks"][0]["matchConditions"], "1.28 and later keep the annotation match"


def test_the_localmodel_entry_selects_the_namespace_the_webhook_is_told(rendered: Rendered) -> None:
    objects = rendered["overlays/gateway"]
    (config,) = [o for o in objects if o["kind"] == "MutatingWebhookConfiguration"]
    entries = {w["name"]: w for w in config["webhooks"]}
    assert set(entries) == {"inject.tokensidecar.io", "localmodel.inject.tokensidecar.io"}
    localmodel = entries["localmodel.inject.tokensidecar.io"]
    env = env_of(webhook_deployment(objects)["spec"]["template"]["spec"]["containers"][0])
    selected = localmodel["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
    assert selected == env["TOKENSIDECAR_LOCALMODEL_NAMESPACE"] == "kserve-localmodel-jobs"
    assert env["TOKENSIDECAR_LOCALMODEL_MODE"] == "gateway"
    assert env["TOKENSIDECAR_INJECT_GATEWAY_URL"].startswith("http")
    assert localmodel["reinvocationPolicy"] == "IfNeeded" and "matchConditions" not in localmodel


# --- the gateway ---------------------------------------------------------------------------


def gateway_objects(rendered: Rendered) -> list[dict[str, Any]]:
    return rendered["base/gateway"]


def test_gateway_keeps_a_cache_volume_per_replica(rendered: Rendered) -> None:
    (statefulset,) = [o for o in gateway_objects(rendered) if o["kind"] == "StatefulSet"]
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    container = pod_spec(statefulset)["containers"][0]
    env = env_of(container)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == env["TOKENSIDECAR_GATEWAY_CACHE_DIR"]
    assert container["args"] == ["gateway"]
    probes = {kind: container[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz" and probes["livenessProbe"]["path"] == "/healthz"
    assert env["TOKENSIDECAR_GATEWAY_LISTEN"].endswith(":8080")
    assert container["ports"][0]["containerPort"] == 8080
    services = [o for o in gateway_objects(rendered) if o["kind"] == "Service"]
    assert statefulset["spec"]["serviceName"] in {s["metadata"]["name"] for s in services}
    assert [o for o in gateway_objects(rendered) if o["kind"] == "PodDisruptionBudget"]


def test_gateway_rbac_is_token_review_and_nothing_more(rendered: Rendered) -> None:
    objects = gateway_objects(rendered)
    assert not [o for o in objects if o["kind"] in {"Role", "ClusterRole"}]
    bindings = [o for o in objects if o["kind"] in {"RoleBinding", "ClusterRoleBinding"}]
    assert [b["roleRef"]["name"] for b in bindings] == ["system:auth-delegator"]


def test_gateway_files_name_sources_never_tokens(rendered: Rendered) -> None:
    from tokensidecar.config import SOURCES
    from tokensidecar.redact import redact

    objects = {o["metadata"]["name"]: o for o in gateway_objects(rendered) if o["kind"] == "ConfigMap"}
    credentials_text = objects["tokensidecar-gateway-credentials"]["data"]["credentials.yaml"]
    assert redact(credentials_text) == credentials_text, "a token-shaped value in the credentials file"
    credentials = yaml.safe_load(credentials_text)["credentials"]
    assert "default" in credentials
    for name, credential in credentials.items():
        assert credential["source"] in SOURCES, name
        assert not {"token", "value", "hf-token"} & set(credential), name
    policy_text = objects["tokensidecar-gateway-policy"]["data"]["policy.yaml"]
    policy = yaml.safe_load(policy_text)
    for rule in policy["rules"]:
        assert rule["subjects"] and rule["repos"]
        assert rule.get("credential", "default") in credentials
    # With the gateway's own parsers in this checkout, the files must load as it loads them.
    import importlib.util

    if importlib.util.find_spec("tokensidecar.gateway") is not None:
        from tokensidecar.gateway.credentials import CredentialStore
        from tokensidecar.gateway.policy import Policy

        store = CredentialStore.from_yaml(
            credentials_text,
            upstream="https://huggingface.co",
            environ={"VAULT_ADDR": "https://vault.example"},
        )
        assert Policy.from_yaml(policy_text).credentials() <= store.names()


def test_the_gateway_example_is_granted_exactly_its_model(rendered: Rendered) -> None:
    import fnmatch

    policy_text = next(
        o for o in gateway_objects(rendered) if o["metadata"]["name"] == "tokensidecar-gateway-policy"
    )["data"]["policy.yaml"]
    rules = yaml.safe_load(policy_text)["rules"]
    objects = rendered["examples/gateway"]
    isvc = next(o for o in objects if o["kind"] == "InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert predictor["annotations"]["tokensidecar.io/mode"] == "gateway"
    repo = predictor["model"]["storageUri"].removeprefix("hf://")

    def granted(namespace: str, account: str, repository: str) -> bool:
        return any(
            fnmatch.fnmatchcase(namespace, s["namespace"])
            and fnmatch.fnmatchcase(account, s.get("serviceAccount", "*"))
            and any(fnmatch.fnmatchcase(repository, r) for r in rule["repos"])
            for rule in rules
            for s in rule["subjects"]
        )

    assert granted(isvc["metadata"]["namespace"], predictor["serviceAccountName"], repo)
    assert not granted(isvc["metadata"]["namespace"], "someone-else", repo)
    assert not granted("models-team-b", predictor["serviceAccountName"], repo)
    (cache,) = [o for o in objects if o["kind"] == "LocalModelCache"]
    assert "namespace" not in cache["metadata"], "LocalModelCache is cluster-scoped"
    assert cache["spec"]["sourceModelUri"] == predictor["model"]["storageUri"]
    assert cache["spec"]["nodeGroups"] and cache["spec"]["modelSize"]
    assert granted("kserve-localmodel-jobs", "default", cache["spec"]["sourceModelUri"].removeprefix("hf://"))


def test_gateway_network_policy_admits_workloads_and_reaches_its_upstreams(rendered: Rendered) -> None:
    (policy,) = [o for o in gateway_objects(rendered) if o["kind"] == "NetworkPolicy"]
    ingress_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == {8080}
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {53, 443, 8200} <= egress_ports


# --- monitoring: metric names, the dashboard, kube-prometheus-stack ------------------------

# Series other exporters provide: kube-state-metrics (rotation Jobs) and Prometheus itself.
EXTERNAL_METRICS = {"up", "kube_job_status_failed", "kube_cronjob_status_last_successful_time"}

# The gateway's metric names as its interface fixes them, used while tokensidecar.gateway is
# not in this checkout (then the names come from its code).
GATEWAY_METRICS = {
    "tokensidecar_gateway_requests_total": "counter",
    "tokensidecar_gateway_request_duration_seconds": "histogram",
    "tokensidecar_gateway_bytes_served_total": "counter",
    "tokensidecar_gateway_upstream_requests_total": "counter",
    "tokensidecar_gateway_upstream_bytes_total": "counter",
    "tokensidecar_gateway_cache_bytes": "gauge",
    "tokensidecar_gateway_cache_evictions_total": "counter",
    "tokensidecar_gateway_authz_total": "counter",
}


def declared_series() -> set[str]:
    """Every series name the code exposes: counters as _total, histograms as their parts."""
    import importlib

    from tokensidecar import reference

    kinds: dict[str, str] = {}
    for _, _, entries in reference.metric_groups():
        kinds.update({entry.name: entry.kind for entry in entries})
    try:
        importlib.import_module("tokensidecar.gateway")
    except ModuleNotFoundError:
        kinds.update(GATEWAY_METRICS)
    else:
        kinds.update(_gateway_metric_kinds())
    series = set()
    for name, kind in kinds.items():
        series.add(name)
        if kind == "histogram":
            series |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return series


def _gateway_metric_kinds() -> dict[str, str]:
    """The metrics every ``*Metrics`` holder of the gateway's modules declares."""
    import importlib
    import inspect
    import pkgutil

    from prometheus_client import CollectorRegistry

    from tokensidecar import reference

    package = importlib.import_module("tokensidecar.gateway")
    kinds: dict[str, str] = {}
    for module_info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"tokensidecar.gateway.{module_info.name}")
        for name, holder_class in vars(module).items():
            if not (inspect.isclass(holder_class) and name.endswith("Metrics")):
                continue
            if holder_class.__module__ != module.__name__:
                continue
            try:
                holder = holder_class(registry=CollectorRegistry(auto_describe=True))
            except TypeError:
                holder = holder_class(CollectorRegistry(auto_describe=True))
            kinds.update({entry.name: entry.kind for entry in reference._metric_entries(holder)})
    return kinds


def metric_names(expr: str) -> set[str]:
    import promql_parser

    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name: {expr}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return names


def dashboard() -> dict[str, Any]:
    import json

    result: dict[str, Any] = json.loads(
        (MANIFESTS / "monitoring" / "dashboards" / "tokensidecar.json").read_text()
    )
    return result


def dashboard_queries() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def test_every_alert_and_dashboard_query_uses_metrics_the_code_declares(rendered: Rendered) -> None:
    known = declared_series() | EXTERNAL_METRICS
    queries = [(rule["alert"], rule["expr"]) for rule in alert_rules(rendered)] + dashboard_queries()
    assert len(queries) > 20
    used: set[str] = set()
    for where, expr in queries:
        names = metric_names(expr)  # parses, or raises ValueError
        assert names, f"{where}: no metric"
        assert names <= known, f"{where}: {sorted(names - known)} are not declared anywhere"
        used |= names
    # The dashboard covers every component: sidecar, webhook, rotation jobs, gateway.
    for prefix in ("tokensidecar_ready", "tokensidecar_webhook_", "kube_job_", "tokensidecar_gateway_"):
        assert any(name.startswith(prefix) for name in used), prefix


def test_metric_check_catches_an_undeclared_name() -> None:
    assert "tokensidecar_made_up_total" not in declared_series()
    assert metric_names('rate(tokensidecar_made_up_total{a="b"}[5m])') == {"tokensidecar_made_up_total"}
    with pytest.raises(ValueError):
        metric_names("rate(tokensidecar_ready[5m]")


def test_dashboard_is_shipped_for_grafana(rendered: Rendered) -> None:
    board = dashboard()
    assert board["uid"] == "tokensidecar" and board["panels"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    (config_map,) = [o for o in rendered["monitoring"] if o["kind"] == "ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["data"]["tokensidecar.json"].strip() == (
        (MANIFESTS / "monitoring" / "dashboards" / "tokensidecar.json").read_text().strip()
    )


def test_alerts_cover_unverified_publishes_failed_rotations_and_the_gateway(rendered: Rendered) -> None:
    alerts = {rule["alert"]: rule["expr"] for rule in alert_rules(rendered)}
    assert 'result="hub_unavailable_published"' in alerts["TokensidecarPublishedUnverified"]
    assert "kube_job_status_failed" in alerts["TokensidecarRotationJobFailed"]
    for name, metric in {
        "TokensidecarGatewayUpstreamErrors": "tokensidecar_gateway_upstream_requests_total",
        "TokensidecarGatewayCredentialExpiring": "tokensidecar_token_expiry_timestamp_seconds",
        "TokensidecarGatewayCacheNearlyFull": "tokensidecar_gateway_cache_evictions_total",
        "TokensidecarGatewayDenialsSpike": "tokensidecar_gateway_authz_total",
    }.items():
        assert metric in alerts[name], name


def test_webhook_monitor_reads_the_ca_certificate_never_the_ca_key(rendered: Rendered) -> None:
    monitor = next(
        o
        for o in rendered["monitoring"]
        if o["kind"] == "ServiceMonitor" and o["metadata"]["name"] == "tokensidecar-webhook"
    )
    ca = monitor["spec"]["endpoints"][0]["tlsConfig"]["ca"]
    assert "secret" not in ca, "Prometheus would read the Secret that holds the CA's private key"
    assert ca["configMap"] == {"name": "tokensidecar-webhook-ca", "key": "ca.crt"}


def test_gateway_monitor_scrapes_the_gateway_service(rendered: Rendered) -> None:
    monitor = next(
        o
        for o in rendered["monitoring"]
        if o["kind"] == "ServiceMonitor" and o["metadata"]["name"] == "tokensidecar-gateway"
    )
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [
        s
        for s in gateway_objects(rendered)
        if s["kind"] == "Service" and selector.items() <= s["metadata"]["labels"].items()
    ]
    assert services
    assert monitor["spec"]["endpoints"][0]["port"] in {
        p["name"] for s in services for p in s["spec"]["ports"]
    }


def test_kube_prometheus_stack_overlay_labels_what_its_prometheus_selects(rendered: Rendered) -> None:
    objects = rendered["overlays/monitoring-kube-prometheus-stack"]
    selected = [o for o in objects if o["kind"] in {"ServiceMonitor", "PodMonitor", "PrometheusRule"}]
    assert len(selected) == 4
    for obj in selected:
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack", obj["metadata"]["name"]


def test_every_rendered_setting_value_parses_as_its_command_parses_it(rendered: Rendered) -> None:
    """A value in a manifest that the program would refuse at start is caught here, not at rollout."""
    from tokensidecar.cli import COMMANDS
    from tokensidecar.config import resolve

    checked = 0
    for where, obj in workloads(rendered):
        config_maps = {
            o["metadata"]["name"]: o.get("data", {}) for o in rendered[where] if o["kind"] == "ConfigMap"
        }
        for container in containers_of(obj):
            args = container.get("args") or []
            command = COMMANDS.get(args[0]) if args else None
            if command is None:
                continue  # not a tokensidecar container, or a command not in this checkout
            env: dict[str, str] = {}
            for source in container.get("envFrom", []):
                env.update(config_maps[source["configMapRef"]["name"]])
            env.update({name: value for name, value in env_of(container).items() if value is not None})
            try:
                resolve(command.settings(), {}, env)
            except Exception as exc:  # ConfigError names the setting
                raise AssertionError(f"{object_id(where, obj)}: {exc}") from None
            checked += 1
    assert checked >= 10

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

from tests.fixtures.openbao import JwtIssuer, TokenReviewServer
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
    "monitoring.coreos.com/v1": {"PrometheusRule", "PodMonitor", "ServiceMonitor"},
    "cert-manager.io/v1": {"Certificate", "Issuer", "ClusterIssuer"},
}

Rendered = dict[str, list[dict[str, Any]]]  # kustomization dir → its rendered objects

WORKLOAD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}
SECRET_VERBS_WITHOUT_NAMES = {"create"}


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
        "examples/vault",
        "examples/secret",
        "examples/manual",
        "examples/cert-manager",
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

    for where, obj in all_objects(rendered):
        if obj["kind"] != "InferenceService":
            continue
        for key in obj["spec"]["predictor"].get("annotations", {}):
            if key.startswith(ANNOTATION_PREFIX):
                assert key.removeprefix(ANNOTATION_PREFIX) in KNOWN_ANNOTATIONS, f"{where}: {key}"


# --- workloads ---------------------------------------------------------------------------


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    kind = obj["kind"]
    if kind == "Pod":
        return dict(obj["spec"])
    if kind == "CronJob":
        return dict(obj["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(obj["spec"]["template"]["spec"])


def workloads(rendered: Rendered) -> list[tuple[str, dict[str, Any]]]:
    """Workloads as users apply them. The pieces of the base (base/webhook, base/rotation)
    get their image tag from the base's image component, so they are checked through it."""
    return [
        (where, obj)
        for where, obj in all_objects(rendered)
        if obj["kind"] in WORKLOAD_KINDS and not where.startswith("base/")
    ]


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

    known = {setting.env for command in COMMANDS.values() for setting in command.settings()}
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
    (service_monitor,) = [o for o in rendered["monitoring"] if o["kind"] == "ServiceMonitor"]
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
    }
    for attempt in (1, 2):  # the script is safe to run again
        result = subprocess.run(
            ["bash", str(script)], env=environ, capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, f"run {attempt}:\n{result.stdout}\n{result.stderr}"
        assert canary not in result.stdout + result.stderr

    def login(namespace: str, name: str, *, audience: str = "vault") -> hvac.Client:
        jwt = jwt_issuer.service_account_token(namespace=namespace, name=name, audience=audience)
        token_review.admit(jwt, namespace=namespace, name=name)
        client = hvac.Client(url=restartable_openbao.addr)
        client.auth.kubernetes.login(role="hf-llama-private", jwt=jwt)
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

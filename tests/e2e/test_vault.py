"""``tokensidecar run`` / ``once`` with ``--source=vault``, as real processes, against real OpenBao.

Observed from outside only: the token file, token.json, /readyz, /status, /metrics and
the JSON log lines, the way kubelet and an operator see the sidecar.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from tests.sidecar_process import SidecarProcess, wait_for
from tokensidecar.demo.openbao import DevServer

CANARY = "hf_CANARYvaultE2eProcess246810"
PATH = "secret/hf/model-a"


def approle_files(
    server: DevServer, directory: Path, *, allowed: str = PATH, ttl: str = "1h", max_ttl: str = "24h"
) -> dict[str, str]:
    """(Re-)seed AppRole auth for a role that may read ``allowed`` (its tokens live ``ttl``)
    and write its credential files, as a Vault operator and a secrets mount would; returns
    the sidecar settings that point at them."""
    policy = server.read_policy_for(allowed)
    role_id, secret_id = server.create_approle("model-a", policies=[policy], ttl=ttl, max_ttl=max_ttl)
    (directory / "role-id").write_text(role_id)
    (directory / "secret-id").write_text(secret_id)
    return {
        "TOKENSIDECAR_VAULT_AUTH": "approle",
        "TOKENSIDECAR_VAULT_ROLE_ID_FILE": str(directory / "role-id"),
        "TOKENSIDECAR_VAULT_SECRET_ID_FILE": str(directory / "secret-id"),
    }


def vault_sidecar(server: DevServer, tmp_path: Path, **env: str) -> SidecarProcess:
    (tmp_path / "out").mkdir(exist_ok=True)
    return SidecarProcess(
        token_file=tmp_path / "out" / "token",
        env={
            "TOKENSIDECAR_SOURCE": "vault",
            "VAULT_ADDR": server.addr,
            "TOKENSIDECAR_VAULT_PATH": PATH,
            "TOKENSIDECAR_REFRESH_INTERVAL": "1s",
            "TOKENSIDECAR_MAX_BACKOFF": "2s",
            **env,
        },
    )


def log_lines(text: str, message: str) -> list[dict[str, object]]:
    lines = []
    for raw in text.splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("msg") == message:
            lines.append(entry)
    return lines


def test_new_kv_version_reaches_the_file_and_login_token_is_revoked_on_sigterm(
    restartable_openbao: DevServer, tmp_path: Path
) -> None:
    server = restartable_openbao
    server.put_kv(
        PATH, {"token": "hf_e2e_vault_first_1"}, custom_metadata={"expires_at": "2031-01-01T00:00:00Z"}
    )
    with vault_sidecar(server, tmp_path, **approle_files(server, tmp_path)) as process:
        process.wait_for_token("hf_e2e_vault_first_1")
        wait_for(lambda: process.get("/readyz")[0] == 200, timeout=2)  # set just after the write

        server.put_kv(PATH, {"token": CANARY})
        # Re-read every TOKENSIDECAR_REFRESH_INTERVAL (1s here, ±10%): ten intervals tell a
        # poll on schedule from none (the default interval is 60s); bench/propagation.py
        # (vault) measures the delay against the interval.
        process.wait_for_token(CANARY, timeout=10)
        # token.json is written beside the token, just after it; /status follows once the
        # publish has returned to the refresher (a moment later on a busy machine).
        metadata = wait_for(
            lambda: (m := json.loads((tmp_path / "out" / "token.json").read_text()))["version"] == "2" and m,
            timeout=10,
        )
        status = wait_for(lambda: (s := process.status())["version"] == "2" and s, timeout=10)
        metrics = process.get("/metrics")[1]

    assert metadata["version"] == "2" and metadata["source"] == "vault"
    assert status["version"] == "2"
    assert process.process is not None and process.process.returncode == 0
    logins = log_lines(process.logs, "vault login")
    assert logins and all(isinstance(entry.get("accessor"), str) for entry in logins)
    assert not any(server.token_alive(str(entry["accessor"])) for entry in logins)  # revoked on SIGTERM
    assert log_lines(process.logs, "vault token revoked")
    for text in (process.logs, metrics, json.dumps(status), json.dumps(metadata)):
        assert CANARY not in text
        assert server.root_token not in text


def test_vault_outage_keeps_last_good_token_then_recovers(
    restartable_openbao: DevServer, tmp_path: Path
) -> None:
    server = restartable_openbao
    server.put_kv(PATH, {"token": CANARY}, custom_metadata={"expires_at": "2031-01-01T00:00:00Z"})
    with vault_sidecar(server, tmp_path, **approle_files(server, tmp_path)) as process:
        process.wait_for_token(CANARY)

        server.stop()
        wait_for(lambda: (process.metric("tokensidecar_consecutive_failures") or 0) >= 3, timeout=15)
        assert process.token() == CANARY  # the last good token stays published
        assert process.get("/readyz")[0] == 200  # still valid and unexpired
        status = process.status()
        assert status["consecutive_failures"] >= 3
        assert "cannot connect" in status["last_error"]
        assert (process.metric("tokensidecar_rotations_total", 'result="failure"') or 0) >= 3
        assert (process.metric("tokensidecar_ready") or 0) == 1

        # Vault comes back empty (dev mode keeps nothing): the old client token is gone,
        # the AppRole has new credentials. The operator re-seeds; the sidecar logs in
        # again with the new files and picks up the new token.
        server.start()
        env = approle_files(server, tmp_path)
        assert env["TOKENSIDECAR_VAULT_ROLE_ID_FILE"] == str(tmp_path / "role-id")
        server.put_kv(PATH, {"token": "hf_e2e_after_outage_2"})
        recovery = process.wait_for_token("hf_e2e_after_outage_2", timeout=10)
        wait_for(lambda: process.status()["consecutive_failures"] == 0, timeout=5)
        metrics = process.get("/metrics")[1]

    failures = log_lines(process.logs, "refresh failed; keeping the last good token")
    assert len(failures) >= 3
    # Backoff: each retry waits the announced full-jitter delay, capped at MAX_BACKOFF (2s).
    stamps = [datetime.fromisoformat(str(entry["time"]).replace("Z", "+00:00")) for entry in failures]
    for previous, entry, stamp, before in zip(failures, failures[1:], stamps[1:], stamps, strict=False):
        retry_in = float(previous["retry_in_seconds"])  # type: ignore[arg-type]
        assert 0 < retry_in <= 2.0
        assert (stamp - before).total_seconds() >= retry_in - 0.05
        assert entry["consecutive_failures"] == int(previous["consecutive_failures"]) + 1  # type: ignore[call-overload]
    assert len(log_lines(process.logs, "vault login")) >= 2  # re-login after the restart
    # Back within a capped backoff (2s), a login and a read: the wait's own 10 s bound. The
    # outage as a whole also holds the test's own restart of Vault, so it is not timed.
    assert recovery < 10
    for text in (process.logs, metrics):
        assert CANARY not in text
        assert "hf_e2e_after_outage_2" not in text


def test_once_publishes_and_exits_or_fails_with_a_clear_line(openbao: DevServer, tmp_path: Path) -> None:
    path = "secret/hf/once-model"
    openbao.put_kv(path, {"token": "hf_e2e_once_value_1"})
    env = {
        "PATH": "/usr/bin:/bin",
        "TOKENSIDECAR_SOURCE": "vault",
        "VAULT_ADDR": openbao.addr,
        "VAULT_TOKEN": openbao.root_token,
        "TOKENSIDECAR_VAULT_AUTH": "token",
        "TOKENSIDECAR_VAULT_PATH": path,
        "TOKENSIDECAR_VERIFY": "none",
        "TOKENSIDECAR_TOKEN_FILE": str(tmp_path / "token"),
    }
    ok = subprocess.run(
        [sys.executable, "-m", "tokensidecar", "once"], env=env, capture_output=True, timeout=30, check=False
    )
    assert ok.returncode == 0, ok.stderr.decode()
    assert (tmp_path / "token").read_text().strip() == "hf_e2e_once_value_1"

    missing_key = subprocess.run(
        [sys.executable, "-m", "tokensidecar", "once"],
        env={**env, "TOKENSIDECAR_KEY": "nope", "TOKENSIDECAR_TOKEN_FILE": str(tmp_path / "other")},
        capture_output=True,
        timeout=30,
        check=False,
    )
    output = (missing_key.stdout + missing_key.stderr).decode()
    assert missing_key.returncode not in (0, 2)
    assert "secret/hf/once-model has no key 'nope'" in output
    assert "hf_e2e_once_value_1" not in output and openbao.root_token not in output

    no_path = subprocess.run(
        [sys.executable, "-m", "tokensidecar", "once"],
        env={k: v for k, v in env.items() if k != "TOKENSIDECAR_VAULT_PATH"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert no_path.returncode == 2
    assert "TOKENSIDECAR_VAULT_PATH is required when --source=vault" in no_path.stderr.decode()


def test_stale_expiry_metadata_does_not_block_a_new_token(
    restartable_openbao: DevServer, tmp_path: Path
) -> None:
    """A manual ``kv put`` of a new token under metadata the rotation job wrote for an
    older, expired one: the new token is published, not refused as "already expired"."""
    server = restartable_openbao
    old, new = "hf_e2e_stale_meta_old", "hf_e2e_stale_meta_new"
    server.put_kv(
        PATH, {"token": old}, custom_metadata={"expires_at": "2020-01-01T00:00:00Z", "fingerprint": _fp(old)}
    )
    server.put_kv(PATH, {"token": new})
    with vault_sidecar(server, tmp_path, **approle_files(server, tmp_path)) as process:
        process.wait_for_token(new)
        wait_for(lambda: process.get("/readyz")[0] == 200, timeout=5)
        status = process.status()
    assert status["consecutive_failures"] == 0 and status["expires_at"] is None
    assert log_lines(process.logs, "custom_metadata.expires_at was written for another token; ignoring it")


def _fp(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]

"""``tokensidecar run`` with the file source, as a real process observed from outside: the
token file and token.json, /readyz, /status, /metrics, notifications and SIGTERM
(docs/behaviour.md, docs/metrics.md) — also SIGTERM while a Vault or Kubernetes call hangs upstream."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import stat
import time
from pathlib import Path

import pytest

from tests.fixtures.jwt import unsigned_jwt
from tests.fixtures.notify import NotifyEndpoint, SignalReceiver
from tests.fixtures.stalling import StallingListener
from tests.sidecar_process import SidecarProcess, wait_for
from tests.test_docs import PUBLIC_METRICS

FIRST = "hf_e2efirsttoken0001"
SECOND = "hf_e2esecondtoken002"

STATUS_FIELDS = {
    "source",
    "version",
    "fingerprint",
    "fetched_at",
    "expires_at",
    "next_refresh_at",
    "last_error",
    "last_error_kind",
    "consecutive_failures",
}
RFC3339_UTC = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"


def _fp(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


def _write(path: Path, value: str) -> None:
    """Replace the source file with a rename, as rotation tools do."""
    staged = path.with_name(f".{path.name}.staged")
    staged.write_text(value)
    staged.replace(path)


def _jwt(exp: int) -> str:
    return "hf_jwt_" + unsigned_jwt({"sub": "e2e", "exp": exp})


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    """(source file, token file) in separate directories, like a Secret volume and the tmpfs."""
    (tmp_path / "source").mkdir()
    (tmp_path / "out").mkdir()
    return tmp_path / "source" / "token", tmp_path / "out" / "token"


def _sidecar(source_file: Path, token_file: Path, **env: str) -> SidecarProcess:
    return SidecarProcess(
        token_file=token_file,
        env={
            "TOKENSIDECAR_SOURCE": "file",
            "TOKENSIDECAR_SOURCE_FILE": str(source_file),
            "TOKENSIDECAR_MAX_BACKOFF": "1s",
            **env,
        },
    )


def test_file_source_end_to_end(paths: tuple[Path, Path]) -> None:
    source_file, token_file = paths
    sidecar = _sidecar(source_file, token_file)
    with sidecar:
        # Before any token: not ready, with a JSON reason; still alive.
        code, body = sidecar.get("/readyz")
        assert code == 503
        readiness = json.loads(body)
        assert readiness["ready"] is False
        assert readiness["reason"].startswith("no token published yet")
        assert sidecar.get("/healthz")[0] == 200
        wait_for(lambda: sidecar.status()["consecutive_failures"] >= 1)
        status = sidecar.status()
        assert set(status) >= STATUS_FIELDS
        assert status["fingerprint"] is None
        assert "does not exist" in status["last_error"]
        assert sidecar.metric("tokensidecar_ready") == 0

        # The first token.
        _write(source_file, FIRST + "\n")
        sidecar.wait_for_token(FIRST)
        wait_for(lambda: sidecar.get("/readyz")[0] == 200)
        assert json.loads(sidecar.get("/readyz")[1])["ready"] is True
        assert token_file.read_text() == FIRST  # the token only: no trailing newline
        for path in (token_file, token_file.with_name("token.json")):
            assert stat.S_IMODE(path.stat().st_mode) == 0o440

        metadata = json.loads(token_file.with_name("token.json").read_text())
        assert set(metadata) == {"version", "fingerprint", "source", "fetched_at", "expires_at"}
        assert metadata["fingerprint"] == _fp(FIRST)
        assert metadata["source"] == "file"
        assert metadata["expires_at"] is None
        assert pytest.approx(time.time(), abs=30) == _epoch(metadata["fetched_at"])

        status = sidecar.status()
        assert status["source"] == "file"
        assert status["fingerprint"] == _fp(FIRST)
        assert status["consecutive_failures"] == 0
        assert status["last_error"] is None
        assert status["fetched_at"] == metadata["fetched_at"]

        # An update propagates.
        _write(source_file, SECOND)
        sidecar.wait_for_token(SECOND, timeout=10)  # how fast: bench/propagation.py (file)
        assert sidecar.status()["next_refresh_at"] is None  # watched: seen, not polled on a schedule
        wait_for(lambda: sidecar.status()["fingerprint"] == _fp(SECOND))
        assert json.loads(token_file.with_name("token.json").read_text())["fingerprint"] == _fp(SECOND)
        assert sidecar.metric("tokensidecar_rotations_total", 'result="success"') == 2
        assert sidecar.metric("tokensidecar_ready") == 1
        last_success = sidecar.metric("tokensidecar_last_success_timestamp_seconds")
        assert last_success is not None and abs(last_success - time.time()) < 30

        # /metrics carries every sidecar metric name of docs/metrics.md.
        exposition = sidecar.get("/metrics")[1]
        for name in PUBLIC_METRICS:
            assert f"# TYPE {name} " in exposition, name
        assert 'tokensidecar_build_info{source="file",version="' in exposition
        assert "tokensidecar_fetch_duration_seconds_bucket{" in exposition

        for endpoint in ("/status", "/metrics", "/readyz", "/healthz"):
            text = sidecar.get(endpoint)[1]
            assert FIRST not in text and SECOND not in text, endpoint

        # SIGTERM: gone within 5 s, exit 0, the token file stays.
        assert sidecar.process is not None
        started = time.monotonic()
        sidecar.process.send_signal(signal.SIGTERM)
        assert sidecar.process.wait(timeout=5) == 0
        assert time.monotonic() - started < 5
    assert token_file.read_text() == SECOND
    assert FIRST not in sidecar.logs and SECOND not in sidecar.logs
    assert '"msg": "stopped"' in sidecar.logs


def _epoch(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def test_invalid_token_keeps_the_last_good_one_and_is_counted(paths: tuple[Path, Path]) -> None:
    source_file, token_file = paths
    _write(source_file, FIRST)
    with _sidecar(source_file, token_file) as sidecar:
        sidecar.wait_for_token(FIRST)
        _write(source_file, "hf_e2e broken token")
        wait_for(lambda: (sidecar.metric("tokensidecar_rotations_total", 'result="failure"') or 0) >= 1)
        status = sidecar.status()
        assert "whitespace" in status["last_error"]
        assert status["consecutive_failures"] >= 1
        assert status["fingerprint"] == _fp(FIRST)
        assert sidecar.token() == FIRST
        assert sidecar.get("/readyz")[0] == 200  # the last good token is still valid
        assert (sidecar.metric("tokensidecar_consecutive_failures") or 0) >= 1
        _write(source_file, SECOND)
        sidecar.wait_for_token(SECOND)
        wait_for(lambda: sidecar.status()["consecutive_failures"] == 0)
    assert "broken" not in sidecar.logs
    assert FIRST not in sidecar.logs


def test_file_mode_setting(paths: tuple[Path, Path]) -> None:
    source_file, token_file = paths
    _write(source_file, FIRST)
    with _sidecar(source_file, token_file, TOKENSIDECAR_FILE_MODE="0400") as sidecar:
        sidecar.wait_for_token(FIRST)
        wait_for(lambda: token_file.with_name("token.json").exists())
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o400
        assert stat.S_IMODE(token_file.with_name("token.json").stat().st_mode) == 0o400


def test_expiring_jwt_makes_the_sidecar_unready_after_expiry(paths: tuple[Path, Path]) -> None:
    source_file, token_file = paths
    # Long enough for a start on a loaded machine (imports alone can take seconds there).
    exp = int(time.time()) + 8
    token = _jwt(exp)
    _write(source_file, token)
    with _sidecar(source_file, token_file) as sidecar:
        sidecar.wait_for_token(token)
        wait_for(lambda: sidecar.get("/readyz")[0] == 200)
        assert sidecar.metric("tokensidecar_token_expiry_timestamp_seconds") == exp
        metadata = json.loads(token_file.with_name("token.json").read_text())
        assert _epoch(metadata["expires_at"]) == exp
        assert _epoch(sidecar.status()["expires_at"]) == exp
        wait_for(lambda: sidecar.get("/readyz")[0] == 503, timeout=15)
        assert time.time() >= exp
        assert "expired" in json.loads(sidecar.get("/readyz")[1])["reason"]
        assert sidecar.metric("tokensidecar_ready") == 0
        assert sidecar.token() == token  # nothing better to publish: the file stays
    assert token not in sidecar.logs


async def test_notify_url_receives_token_json_after_each_publish(
    paths: tuple[Path, Path], tmp_path: Path
) -> None:
    source_file, token_file = paths
    endpoint = NotifyEndpoint()
    await endpoint.start()
    sidecar = _sidecar(source_file, token_file, TOKENSIDECAR_NOTIFY_URL=endpoint.url)
    try:
        _write(source_file, FIRST)
        await asyncio.to_thread(sidecar.start)
        await _until(lambda: len(endpoint.bodies) >= 1)
        assert endpoint.bodies[0] == json.loads(token_file.with_name("token.json").read_text())
        assert endpoint.bodies[0]["fingerprint"] == _fp(FIRST)
        _write(source_file, SECOND)
        await _until(lambda: any(b["fingerprint"] == _fp(SECOND) for b in endpoint.bodies))
        assert FIRST not in json.dumps(endpoint.bodies) and SECOND not in json.dumps(endpoint.bodies)
    finally:
        if sidecar.process is not None:
            await asyncio.to_thread(sidecar.stop)
        await endpoint.stop()


async def _until(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.02)


def test_notify_signal_reaches_a_process_found_by_name(
    paths: tuple[Path, Path], receiver: SignalReceiver
) -> None:
    source_file, token_file = paths
    _write(source_file, FIRST)
    with _sidecar(
        source_file,
        token_file,
        TOKENSIDECAR_NOTIFY_SIGNAL="SIGHUP",
        TOKENSIDECAR_NOTIFY_PROCESS=receiver.name,
    ) as sidecar:
        sidecar.wait_for_token(FIRST)
        wait_for(lambda: receiver.received() == ["SIGHUP"])
        _write(source_file, SECOND)
        sidecar.wait_for_token(SECOND)
        wait_for(lambda: receiver.received() == ["SIGHUP", "SIGHUP"])
        assert receiver.process.poll() is None
        assert not sidecar.metric("tokensidecar_notify_failures_total", 'kind="signal"')
    assert '"msg": "notified process"' in sidecar.logs


# Generous: docs/behaviour.md promises 5 s; a loaded CI machine may add some. Before the fix a
# call stuck in a worker thread kept the process alive until its read timeout (Vault 10 s,
# Kubernetes 30 s, retried) — or for ever when the upstream trickles bytes.
SIGTERM_DEADLINE_S = 15.0


def _stalled_upstream_env(source: str, upstream: StallingListener, directory: Path) -> dict[str, str]:
    if source == "vault":
        (directory / "role-id").write_text("e2e-role-id")
        return {
            "TOKENSIDECAR_SOURCE": "vault",
            "VAULT_ADDR": upstream.url,
            "TOKENSIDECAR_VAULT_PATH": "secret/hf/model-a",
            "TOKENSIDECAR_VAULT_AUTH": "approle",
            "TOKENSIDECAR_VAULT_ROLE_ID_FILE": str(directory / "role-id"),
        }
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: stalled\n"
        f"clusters: [{{name: stalled, cluster: {{server: '{upstream.url}'}}}}]\n"
        "users: [{name: stalled, user: {token: e2e-not-a-credential}}]\n"
        "contexts: [{name: stalled, context: {cluster: stalled, user: stalled, namespace: default}}]\n"
    )
    return {
        "TOKENSIDECAR_SOURCE": "kubernetes-secret",
        "TOKENSIDECAR_SECRET_NAME": "hf-token",
        "KUBECONFIG": str(kubeconfig),
    }


@pytest.mark.parametrize("mode", ["silent", "trickle"])
@pytest.mark.parametrize("source", ["vault", "kubernetes-secret"])
def test_sigterm_stops_the_sidecar_while_an_upstream_call_hangs(
    source: str, mode: str, stalling_listener: StallingListener, tmp_path: Path
) -> None:
    stalling_listener.mode = mode  # silent: accepts, never answers; trickle: a byte every 2 s
    (tmp_path / "out").mkdir()
    sidecar = SidecarProcess(
        token_file=tmp_path / "out" / "token", env=_stalled_upstream_env(source, stalling_listener, tmp_path)
    )
    with sidecar:
        assert sidecar.process is not None
        wait_for(lambda: stalling_listener.accepted >= 1, timeout=15)  # a call is stuck upstream
        code, took = sidecar.terminate_within(SIGTERM_DEADLINE_S)
    print(f"{source}, upstream {mode}: SIGTERM to exit {took:.2f} s")
    assert code == 0, sidecar.logs[-3000:]  # exited on its own, cleanly
    assert '"stopped"' in sidecar.logs

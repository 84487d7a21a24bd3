"""OpenBao killed, sealed or refusing, under a running ``tokensidecar run``.

Killed (SIGKILL) and restarted again and again:

A dev server keeps everything in memory, so every restart is the worst kind of Vault
outage: the sidecar's client token, the AppRole credentials and the secret are all gone
until the operator re-seeds them. Through every cycle a sampler reads the token file every
few milliseconds: it must always hold the last good token (never empty, missing or
unknown), the process must stay up and healthy, and once Vault is back and seeded the new
token must arrive within the backoff bound (``TOKENSIDECAR_MAX_BACKOFF`` plus one login
and one read).

Sealed past the client token's TTL (a real ``503 Vault is sealed``), the sidecar must back
off, not renew a dead token several times a second; polling a path its policy forbids, it
must not mint a Vault token per poll. Both are counted at a proxy in front of OpenBao
(``tests/fixtures/openbao.py``) and with the root token's view of the token store.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.test_sidecar import SIGTERM_DEADLINE_S
from tests.e2e.test_vault import PATH, approle_files, vault_sidecar
from tests.faults.sampler import FileSampler
from tests.fixtures.openbao import CountingProxy, live_token_accessors, seal, unseal
from tests.sidecar_process import SidecarProcess, wait_for
from tokensidecar.demo.openbao import DevServer

CANARY = "hf_CANARYfaultsVaultKill13579"
MAX_BACKOFF_S = 2.0
CYCLES = 4


def _kill(server: DevServer) -> None:
    """SIGKILL the bao process: no graceful shutdown, connections reset mid-request."""
    process = server._process  # the fixture's own child; DevServer.stop() would be a SIGTERM
    assert process is not None
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    server.stop()  # forget the dead process and the admin client bound to it


def test_openbao_killed_and_restarted_repeatedly_keeps_last_good_and_recovers_within_backoff(
    restartable_openbao: DevServer, tmp_path: Path
) -> None:
    server = restartable_openbao
    values = [CANARY, *(f"hf_faults_vault_cycle_{n}_{random.randrange(10**6):06d}" for n in range(CYCLES))]
    server.put_kv(PATH, {"token": values[0]})
    sidecar = vault_sidecar(
        server, tmp_path, TOKENSIDECAR_MAX_BACKOFF=f"{MAX_BACKOFF_S:g}s", **approle_files(server, tmp_path)
    )
    recoveries: list[float] = []
    with sidecar:
        sidecar.wait_for_token(values[0])
        with FileSampler(sidecar.token_file) as sampler:
            for cycle, new_value in enumerate(values[1:], start=1):
                _kill(server)
                # Down long enough for several failed attempts and a backoff at its cap.
                down_until = time.monotonic() + random.uniform(2.0, 3.5)
                while time.monotonic() < down_until:
                    assert sidecar.process is not None and sidecar.process.poll() is None, "sidecar crashed"
                    assert sidecar.get("/healthz")[0] == 200
                    time.sleep(0.1)
                assert sidecar.token() == values[cycle - 1]
                assert sidecar.get("/readyz")[0] == 200  # the last good token is still valid
                failures = sidecar.status()["consecutive_failures"]
                assert failures >= 1, f"cycle {cycle}: the outage went unnoticed"

                server.start()
                approle_files(server, tmp_path)  # the operator re-seeds auth and the secret
                server.put_kv(PATH, {"token": new_value})
                try:
                    recoveries.append(sidecar.wait_for_token(new_value, timeout=20))
                except TimeoutError:
                    raise AssertionError(
                        f"cycle {cycle}: no recovery in 20 s; sidecar log tail:\n"
                        + "\n".join(sidecar.read_logs().splitlines()[-15:])
                    ) from None
                wait_for(lambda: sidecar.status()["consecutive_failures"] == 0, timeout=5)
        metrics = sidecar.get("/metrics")[1]
        status_text = sidecar.get("/status")[1]
    assert sidecar.process is not None and sidecar.process.returncode == 0

    # The file only ever held tokens that were published, in order, and was never empty.
    sampler.assert_only(values)
    # Back within one capped backoff, a login and a read (slack for a loaded CI machine).
    assert max(recoveries) < MAX_BACKOFF_S + 3.0, recoveries
    for text in (sidecar.logs, metrics, status_text):
        assert CANARY not in text
        assert server.root_token not in text


def _through(proxy: CountingProxy, tmp_path: Path, **env: str) -> SidecarProcess:
    (tmp_path / "out").mkdir()
    return SidecarProcess(
        token_file=tmp_path / "out" / "token",
        env={"TOKENSIDECAR_SOURCE": "vault", "VAULT_ADDR": proxy.url, "TOKENSIDECAR_VAULT_PATH": PATH, **env},
    )


def test_client_token_expiring_while_vault_is_sealed_backs_off_instead_of_spinning(
    restartable_openbao: DevServer, counting_proxy: CountingProxy, tmp_path: Path
) -> None:
    server, max_backoff = restartable_openbao, 4.0
    server.put_kv(PATH, {"token": "hf_faults_sealed_before"})
    sidecar = _through(
        counting_proxy,
        tmp_path,
        TOKENSIDECAR_REFRESH_INTERVAL="1s",
        TOKENSIDECAR_MAX_BACKOFF=f"{max_backoff:g}s",
        **approle_files(server, tmp_path, allowed=PATH, ttl="3s"),
    )
    with sidecar:
        sidecar.wait_for_token("hf_faults_sealed_before")
        seal(server)
        sealed_at = time.monotonic()
        # The token (3 s TTL, renewed at most 3 s before the seal) has expired by
        # sealed_at + 3 s; a renewal already scheduled then may still go out, within one
        # capped backoff, and then the renewal says it gave up. From then on (however late a
        # busy machine gets there) only the refresher's own attempts may reach Vault.
        wait_for(
            lambda: "the vault token expired before it could be renewed" in sidecar.read_logs(), timeout=20
        )
        window_start, window = time.monotonic(), 8.0
        time.sleep(window)
        during = counting_proxy.since(window_start)
        assert time.monotonic() - sealed_at < 30
        assert sidecar.get("/healthz")[0] == 200
        assert sidecar.token() == "hf_faults_sealed_before"

        unseal(server)
        server.put_kv(PATH, {"token": "hf_faults_sealed_after"})
        recovered = sidecar.wait_for_token("hf_faults_sealed_after", timeout=3 * max_backoff + 10)
    requests = [(method, path) for _, method, path, _ in during]
    print(
        f"sealed past the TTL: {len(requests)} requests in {window:g} s; back {recovered:.1f} s after unseal"
    )
    # Nothing renews a token that is gone: each request is one refresher attempt, which
    # logs in first (refused while sealed). Before: ~2.7 renew-self per second, for ever.
    assert ("POST", "/v1/auth/token/renew-self") not in requests, requests
    assert set(requests) <= {("POST", "/v1/auth/approle/login")}, requests
    # Full-jitter backoff capped at 4 s averages ~2.2 s between attempts once capped.
    assert len(requests) <= 10, requests
    assert sidecar.process is not None and sidecar.process.returncode == 0


def test_polling_a_path_the_policy_forbids_adds_no_vault_tokens(
    restartable_openbao: DevServer, counting_proxy: CountingProxy, tmp_path: Path
) -> None:
    server = restartable_openbao
    server.put_kv(PATH, {"token": "hf_faults_forbidden"})
    sidecar = _through(
        counting_proxy,
        tmp_path,
        TOKENSIDECAR_REFRESH_INTERVAL="1s",
        TOKENSIDECAR_MAX_BACKOFF="1s",
        **approle_files(server, tmp_path, allowed="secret/hf/some-other-model", ttl="1h"),
    )
    before = live_token_accessors(server)
    with sidecar:
        wait_for(lambda: sidecar.status()["consecutive_failures"] >= 5, timeout=20)
        during = live_token_accessors(server) - before
        failures = sidecar.status()
    logins = [entry for entry in counting_proxy.requests if entry[2] == "/v1/auth/approle/login"]
    print(f"forbidden path: {len(during)} live tokens added after {failures['consecutive_failures']} polls")
    assert "permission denied" in (failures["last_error"] or "")
    assert len(logins) == 1  # one login; every poll after it is answered as a denial
    assert len(during) == 1  # the sidecar's own token, nothing per poll
    assert live_token_accessors(server) == before  # and that one is revoked on SIGTERM
    assert "hf_faults_forbidden" not in sidecar.logs


def test_sigterm_while_vault_hangs_gives_up_revoking_within_the_budget(
    restartable_openbao: DevServer, counting_proxy: CountingProxy, tmp_path: Path
) -> None:
    server = restartable_openbao
    server.put_kv(PATH, {"token": "hf_faults_hung_revoke"})
    sidecar = _through(counting_proxy, tmp_path, **approle_files(server, tmp_path, allowed=PATH, ttl="1h"))
    with sidecar:
        sidecar.wait_for_token("hf_faults_hung_revoke")
        assert sidecar.process is not None
        counting_proxy.stalling = True  # Vault now accepts and never answers
        code, took = sidecar.terminate_within(SIGTERM_DEADLINE_S)
    print(f"SIGTERM with the revocation hanging: exit after {took:.2f} s")
    assert code == 0
    # The revocation was tried, hung, and was abandoned: the login token ends at its TTL.
    assert ("POST", "/v1/auth/token/revoke-self", 0) in [(m, p, s) for _, m, p, s in counting_proxy.requests]
    assert "closing the source took too long" in sidecar.logs


def test_once_does_not_wait_for_a_hung_revocation(
    restartable_openbao: DevServer, counting_proxy: CountingProxy, tmp_path: Path
) -> None:
    # An init container: the token is published, then revoking the login hangs. The client
    # would sit in that read until its read timeout (and forever against a server that
    # trickles), and asyncio.run would join the thread after it; ``once`` gives up after
    # ONCE_CLOSE_SECONDS, says so, and exits 0, the login ending at its TTL.
    server = restartable_openbao
    server.put_kv(PATH, {"token": "hf_faults_once_hung_revoke"})
    sidecar = _through(counting_proxy, tmp_path, **approle_files(server, tmp_path, allowed=PATH, ttl="1h"))
    counting_proxy.stalling_paths.add("/v1/auth/token/revoke-self")
    python = os.environ.get("BENCH_SIDECAR_PYTHON") or sys.executable
    done = subprocess.run(
        [python, "-m", "tokensidecar", "once"],
        env=sidecar.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert sidecar.token_file.read_text() == "hf_faults_once_hung_revoke"
    assert ("POST", "/v1/auth/token/revoke-self", 0) in [(m, p, s) for _, m, p, s in counting_proxy.requests]
    assert "closing the source took too long" in done.stderr + done.stdout  # abandoned, not timed out

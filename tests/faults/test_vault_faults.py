"""OpenBao killed (SIGKILL) and restarted again and again under a running ``tokensidecar run``.

A dev server keeps everything in memory, so every restart is the worst kind of Vault
outage: the sidecar's client token, the AppRole credentials and the secret are all gone
until the operator re-seeds them. Through every cycle a sampler reads the token file every
few milliseconds: it must always hold the last good token (never empty, missing or
unknown), the process must stay up and healthy, and once Vault is back and seeded the new
token must arrive within the backoff bound (``TOKENSIDECAR_MAX_BACKOFF`` plus one login
and one read).
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from tests.faults.sampler import FileSampler
from tests.sidecar_process import SidecarProcess, wait_for
from tests.test_vault_e2e import PATH, approle_files
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
    (tmp_path / "out").mkdir()
    sidecar = SidecarProcess(
        token_file=tmp_path / "out" / "token",
        env={
            "TOKENSIDECAR_SOURCE": "vault",
            "VAULT_ADDR": server.addr,
            "TOKENSIDECAR_VAULT_PATH": PATH,
            "TOKENSIDECAR_REFRESH_INTERVAL": "1s",
            "TOKENSIDECAR_MAX_BACKOFF": f"{MAX_BACKOFF_S:g}s",
            **approle_files(server, tmp_path),
        },
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

"""What a sidecar costs Vault when things go wrong, and how fast it leaves when told to.

Three measurements against the real ``tokensidecar run`` (``SidecarProcess``, verification
off) and a real OpenBao dev server:

* ``expired_outage`` — AppRole with a 3 s token TTL; the sidecar reaches Vault through a
  counting proxy (``tests/fixtures/openbao.py``). Vault is sealed (it answers every request
  ``503 Vault is sealed``, as a real sealed Vault does); once the client token's TTL has
  passed, every request the sidecar sends during ``--window`` seconds is counted. Then
  Vault is unsealed and the time until the sidecar reads a new secret version is measured.
  Defaults: ``TOKENSIDECAR_REFRESH_INTERVAL=60s``, ``TOKENSIDECAR_MAX_BACKOFF=60s``
  (``--refresh-interval``, ``--max-backoff``).
* ``forbidden_polling`` — the role's policy does not allow the configured path; the
  sidecar polls it (``TOKENSIDECAR_REFRESH_INTERVAL=1s``, ``TOKENSIDECAR_MAX_BACKOFF=1s``)
  for 12 s. Live tokens are counted with the root token (``LIST auth/token/accessors``)
  before the sidecar starts and after; logins are counted at the proxy.
* ``sigterm`` — the upstream (Vault, or the Kubernetes API server for the
  ``kubernetes-secret`` source) accepts connections and never answers (``silent``) or
  answers one byte every 2 s (``trickle``); once the sidecar's first call is stuck,
  SIGTERM is sent and the time until the process has exited is measured.

``--sidecar-code DIR`` runs the sidecar from another checkout, e.g. main before a fix,
while the stand-ins stay this checkout's: the sidecar gets ``PYTHONPATH=DIR`` and runs
in DIR (``python -m`` puts the working directory first on ``sys.path``).

    .venv/bin/python bench/vault_faults.py [--window 30] [--only expired_outage,forbidden_polling,sigterm]
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common import emit

from tests.e2e.test_vault import approle_files
from tests.fixtures.openbao import CountingProxy, live_token_accessors, seal, unseal
from tests.fixtures.stalling import StallingListener
from tests.sidecar_process import SidecarProcess, wait_for
from tokensidecar.demo.openbao import DevServer

PATH = "secret/hf/bench"


def _env(code: str | None, **env: str) -> dict[str, str]:
    return {"TOKENSIDECAR_LOG_LEVEL": "warning", **({"PYTHONPATH": code} if code else {}), **env}


def _by_path(requests: list[tuple[float, str, str, int]]) -> dict[str, int]:
    return dict(collections.Counter(f"{method} {path}" for _, method, path, _ in requests))


def expired_outage(
    directory: Path, *, window: float, max_backoff: str, refresh_interval: str, code: str | None
) -> dict[str, Any]:
    with DevServer() as server:
        server.put_kv(PATH, {"token": "hf_bench_outage_before"})
        proxy = CountingProxy(server.addr).start()
        try:
            env = _env(
                code,
                TOKENSIDECAR_SOURCE="vault",
                VAULT_ADDR=proxy.url,
                TOKENSIDECAR_VAULT_PATH=PATH,
                TOKENSIDECAR_MAX_BACKOFF=max_backoff,
                TOKENSIDECAR_REFRESH_INTERVAL=refresh_interval,
                **approle_files(server, directory, allowed=PATH, ttl="3s", max_ttl="1h"),
            )
            with SidecarProcess(token_file=directory / "out" / "token", env=env) as sidecar:
                sidecar.wait_for_token("hf_bench_outage_before")
                seal(server)
                time.sleep(4.0)  # past the 3 s TTL, renewed or not
                started = time.monotonic()
                time.sleep(window)
                during = proxy.since(started)
                unseal(server)
                server.put_kv(PATH, {"token": "hf_bench_outage_after"})
                unsealed = time.monotonic()
                recovered = sidecar.wait_for_token(
                    "hf_bench_outage_after", timeout=float(max_backoff[:-1]) * 3 + 30
                )
                after = [entry for entry in proxy.since(unsealed) if entry[0] <= unsealed + recovered]
        finally:
            proxy.stop()
    return {
        "token_ttl_s": 3,
        "max_backoff": max_backoff,
        "refresh_interval": refresh_interval,
        "window_s": window,
        "requests": len(during),
        "requests_per_second": round(len(during) / window, 3),
        "requests_by_path": _by_path(during),
        "recovered_after_unseal_s": round(recovered, 2),
        "requests_until_recovered": _by_path(after),
    }


def forbidden_polling(directory: Path, *, seconds: float, code: str | None) -> dict[str, Any]:
    with DevServer() as server:
        forbidden = "secret/hf/not-yours"
        server.put_kv(forbidden, {"token": "hf_bench_forbidden"})
        proxy = CountingProxy(server.addr).start()
        try:
            env = _env(
                code,
                TOKENSIDECAR_SOURCE="vault",
                VAULT_ADDR=proxy.url,
                TOKENSIDECAR_VAULT_PATH=forbidden,
                TOKENSIDECAR_REFRESH_INTERVAL="1s",
                TOKENSIDECAR_MAX_BACKOFF="1s",
                **approle_files(server, directory, allowed=PATH, ttl="1h", max_ttl="1h"),
            )
            before = live_token_accessors(server)
            with SidecarProcess(token_file=directory / "out" / "token", env=env):
                started = time.monotonic()
                time.sleep(seconds)
                alive = live_token_accessors(server)
            requests = proxy.since(started)
        finally:
            proxy.stop()
    return {
        "seconds": seconds,
        "live_tokens_added": len(alive - before),
        "requests_by_path": _by_path(requests),
        "note": "live_tokens_added counts the sidecar's own current token too (1 is the floor)",
    }


def _kubeconfig(directory: Path, server: str) -> Path:
    path = directory / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: stall\n"
        f"clusters: [{{name: stall, cluster: {{server: '{server}'}}}}]\n"
        "users: [{name: stall, user: {token: not-a-real-token}}]\n"
        "contexts: [{name: stall, context: {cluster: stall, user: stall, namespace: default}}]\n"
    )
    return path


def sigterm(directory: Path, *, source: str, mode: str, code: str | None) -> dict[str, Any]:
    listener = StallingListener(mode=mode).start()
    try:
        if source == "vault":
            (directory / "role-id").write_text("bench-role-id")
            env = _env(
                code,
                TOKENSIDECAR_SOURCE="vault",
                VAULT_ADDR=listener.url,
                TOKENSIDECAR_VAULT_PATH=PATH,
                TOKENSIDECAR_VAULT_AUTH="approle",
                TOKENSIDECAR_VAULT_ROLE_ID_FILE=str(directory / "role-id"),
            )
        else:
            env = _env(
                code,
                TOKENSIDECAR_SOURCE="kubernetes-secret",
                TOKENSIDECAR_SECRET_NAME="hf-token",  # noqa: S106 - a Secret's name
                KUBECONFIG=str(_kubeconfig(directory, listener.url)),
            )
        sidecar = SidecarProcess(token_file=directory / "out" / "token", env=env).start()
        assert sidecar.process is not None
        wait_for(lambda: listener.accepted >= 1, timeout=15)
        time.sleep(0.5)
        sent = time.monotonic()
        sidecar.process.send_signal(signal.SIGTERM)
        try:
            code_ = sidecar.process.wait(timeout=60)
            exited: float | None = time.monotonic() - sent
        except subprocess.TimeoutExpired:
            sidecar.process.kill()
            code_, exited = sidecar.process.wait(), None
        sidecar.stop()
    finally:
        listener.stop()
    return {
        "source": source,
        "upstream": mode,
        "sigterm_to_exit_s": round(exited, 2) if exited is not None else "more than 60 (killed)",
        "exit_code": code_,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=30.0, help="seconds counted after the token expired")
    parser.add_argument("--max-backoff", default="60s")
    parser.add_argument("--refresh-interval", default="60s")
    parser.add_argument("--only", default="expired_outage,forbidden_polling,sigterm")
    parser.add_argument("--sidecar-code", default=None, help="PYTHONPATH for the sidecar process")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if args.sidecar_code:
        os.chdir(args.sidecar_code)  # the sidecar's `python -m` imports from its cwd first
    results: dict[str, Any] = {"sidecar_code": args.sidecar_code or "this checkout"}
    with tempfile.TemporaryDirectory(prefix="bench-vault-faults-") as tmp:
        root = Path(tmp)

        def fresh(name: str) -> Path:
            directory = root / name
            (directory / "out").mkdir(parents=True)
            return directory

        if "expired_outage" in only:
            results["expired_outage"] = expired_outage(
                fresh("outage"),
                window=args.window,
                max_backoff=args.max_backoff,
                refresh_interval=args.refresh_interval,
                code=args.sidecar_code,
            )
        if "forbidden_polling" in only:
            results["forbidden_polling"] = forbidden_polling(
                fresh("forbidden"), seconds=12.0, code=args.sidecar_code
            )
        if "sigterm" in only:
            results["sigterm"] = [
                sigterm(fresh(f"sigterm-{source}-{mode}"), source=source, mode=mode, code=args.sidecar_code)
                for source in ("vault", "kubernetes-secret")
                for mode in ("silent", "trickle")
            ]
    emit({"benchmark": "vault_faults", **results})


if __name__ == "__main__":
    main()

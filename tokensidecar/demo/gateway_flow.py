"""The demo's gateway flow: one ``tokensidecar gateway`` in front of the Hub for three replicas.

What it starts, beside the OpenBao dev server and the Hub stand-in that the sidecar flow
uses too (all on 127.0.0.1, all stopped at the end):

* a Kubernetes API server stand-in that answers TokenReviews
  (:mod:`tokensidecar.demo.apiserver`) for service-account tokens signed by a key the demo
  owns, and a kubeconfig for the gateway naming it;
* ``tokensidecar gateway`` as its own process, with its cache directory, a policy file and
  a credentials file: its one upstream credential is read from OpenBao (AppRole, a KV v2
  path of its own), verified at the Hub stand-in (``TOKENSIDECAR_GATEWAY_UPSTREAM``) and
  held in the gateway's memory only;
* three predictor processes — replicas of one InferenceService, service account
  ``models/predictor`` — with ``HF_ENDPOINT`` = the gateway and ``HF_TOKEN_PATH`` = a
  kubelet-style projected token file, and no Hugging Face token at all: two download with
  huggingface_hub's ``snapshot_download``, one with KServe's storage initializer
  (``kserve_storage.Storage.download("hf://…")``) when kserve-storage is installed;
* a fourth process, ``sandbox/notebook``, that the policy does not name.

The upstream request count comes from the Hub stand-in's own request log; three direct
cold ``snapshot_download``\\ s of an F-file repository would cost ``3 · (2 + 2F)``
(revision, tree, and HEAD + GET per file; docs/gateway.md). Each rotation writes a new
upstream token to OpenBao, waits until the gateway's refresher has verified and taken it
(its ``tokensidecar_rotations_total{credential="default"}``), revokes the old token at the
Hub, pushes a new commit of the model, and has every replica download that commit: the
misses are fetched upstream with the new token only, since the old one no longer works.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tokensidecar.demo.harness import free_port, rotate_repeatedly, stop_process, wait_until
from tokensidecar.redact import fingerprint

__all__ = ["GatewayFlow", "GatewayOutcome", "direct_cost"]

GATEWAY_VAULT_PATH = "secret/hf/gateway"
AUDIENCE = "tokensidecar-gateway"
NAMESPACE = "models"
SERVICE_ACCOUNT = "predictor"
DENIED = ("sandbox", "notebook")
READY_TIMEOUT_SECONDS = 60.0
ROTATION_TIMEOUT_SECONDS = 30.0
# The gateway is polled over HTTP (/readyz, /metrics) this often.
POLL_SECONDS = 0.05

POLICY = f"""\
# Who may read what through the gateway (docs/gateway.md); anything else is denied.
rules:
  - subjects: [{{namespace: {NAMESPACE}, serviceAccount: {SERVICE_ACCOUNT}}}]
    repos: [acme/private-*]
"""


def direct_cost(files: int) -> int:
    """Upstream requests of one cold ``snapshot_download`` of an F-file repo: 2 + 2F."""
    return 2 + 2 * files


class Output(Protocol):
    def step(self, text: str) -> None: ...
    def detail(self, text: str) -> None: ...


@dataclass
class GatewayOutcome:
    """What the gateway flow measured; :meth:`GatewayFlow.run` fills it as it goes."""

    predictors: list[dict[str, Any]] = field(default_factory=list)
    kserve_storage: bool = False
    files: int = 0
    upstream_requests: int | None = None
    upstream_by_route: dict[str, int] = field(default_factory=dict)
    direct_requests: int | None = None
    denied: dict[str, Any] | None = None
    rotations: list[dict[str, Any]] = field(default_factory=list)
    reviews: int = 0
    token_in_gateway_log: bool | None = None
    gateway_exit_code: int | None = None
    wall_seconds: float | None = None
    pids: list[int] = field(default_factory=list)
    error: str | None = None


def _route(path: str) -> str:
    """A Hub request's kind, for the breakdown of the upstream count."""
    if path == "/api/whoami-v2":
        return "whoami"
    if "/revision/" in path:
        return "revision"
    if "/tree/" in path:
        return "tree"
    if "/paths-info/" in path:
        return "paths-info"
    if "/resolve/" in path:
        return "file"
    if path.startswith("/api/models/"):
        return "model-info"
    return "other"


class GatewayFlow:
    def __init__(
        self,
        *,
        out: Output,
        vault: Any,
        hub: Any,
        workdir: Path,
        cleanup: contextlib.ExitStack,
        rotations: int,
        forever: bool,
        pause: float,
        token_lifetime: float,
    ) -> None:
        self.out = out
        self.vault = vault
        self.hub = hub
        self.dir = workdir / "gateway-flow"
        self.cleanup = cleanup
        self.rotations = rotations
        self.forever = forever
        self.pause = pause
        self.token_lifetime = token_lifetime
        self.outcome = GatewayOutcome()
        self._issued: list[str] = []  # every upstream token, to check the gateway's log
        self._service_account_tokens: list[str] = []

    # -- the flow ------------------------------------------------------------------------

    def run(self) -> bool:
        started = time.monotonic()
        try:
            return self._run()
        finally:
            self.outcome.wall_seconds = round(time.monotonic() - started, 2)

    def _run(self) -> bool:
        """Each step ends the flow (False) when what it waits for does not happen."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        api, kubeconfig = self._start_api_server()
        self.out.step("Starting the gateway: tokensidecar gateway (credential from OpenBao, policy, cache)")
        upstream_token = self.hub.issue_token(expires_in=self.token_lifetime)
        self._issued.append(upstream_token)
        self._write_vault(upstream_token)
        gateway = self._start_gateway(kubeconfig=kubeconfig)
        if gateway is None:
            return False
        self._describe_gateway(gateway, upstream_token=upstream_token)
        hows = self._clients()
        predictors = self._replicas(url=gateway.url, api=api)
        if not self._cold_downloads(predictors, hows=hows):
            return False
        if not self._denied(url=gateway.url, api=api):
            return False
        if not self._rotations(current=upstream_token, gateway=gateway, predictors=predictors, hows=hows):
            return False
        return self._stop_and_check(gateway, api=api)

    # -- the steps ---------------------------------------------------------------------------

    def _start_api_server(self) -> tuple[Any, Path]:
        """The TokenReview stand-in, and a kubeconfig that points the gateway at it."""
        from tokensidecar.demo.apiserver import ApiServerStandIn, serve_in_thread

        self.out.step("Starting a Kubernetes API server stand-in that answers TokenReviews")
        api = self.cleanup.enter_context(serve_in_thread(ApiServerStandIn()))
        kubeconfig = api.write_kubeconfig(self.dir / "kubeconfig")
        self.out.detail(f"{api.url}/apis/authentication.k8s.io/v1/tokenreviews; kubeconfig {kubeconfig}")
        self.out.detail(f"service-account tokens (audience {AUDIENCE}) signed by a key the demo owns")
        return api, kubeconfig

    def _describe_gateway(self, gateway: GatewayProcess, *, upstream_token: str) -> None:
        out = self.out
        out.detail(f"{gateway.url} ready in {gateway.ready_seconds:.2f}s; upstream {self.hub.url}")
        out.detail(
            f"upstream token {fingerprint(upstream_token)} read from {GATEWAY_VAULT_PATH}, in memory only"
        )
        out.detail(f"policy: {NAMESPACE}/{SERVICE_ACCOUNT} may read acme/private-*; everyone else is denied")
        out.detail(f"cache {self.dir / 'cache'}; log {gateway.log_path}")

    def _clients(self) -> list[str]:
        """How each replica downloads: huggingface_hub, and KServe's storage initializer for
        the third when kserve-storage is installed."""
        kserve = importlib.util.find_spec("kserve_storage") is not None
        self.outcome.kserve_storage = kserve
        self.out.step("Three predictor replicas download the private model through the gateway")
        self.out.detail(
            "each: HF_ENDPOINT=<gateway>, HF_TOKEN_PATH=<projected service-account token>, no HF token"
        )
        if not kserve:
            self.out.detail(
                "kserve-storage is not installed (pip install '.[e2e]'): the third uses huggingface_hub"
            )
        return ["hub", "hub", "kserve" if kserve else "hub"]

    def _replicas(self, *, url: str, api: Any) -> list[Any]:
        """Three predictors of one service account, each with its own projected token."""
        from tokensidecar.demo.predictor import Predictor

        predictors = []
        for index in range(3):
            token_path = self._projected(f"predictor-{index}", NAMESPACE, SERVICE_ACCOUNT, api)
            predictor = Predictor(hub_url=url, token_file=token_path, home=self.dir / f"hf-home-{index}")
            self.cleanup.callback(predictor.close)
            self.outcome.pids.append(predictor.pid)
            predictors.append(predictor)
        return predictors

    def _cold_downloads(self, predictors: list[Any], *, hows: list[str]) -> bool:
        """All three download at once through a cold gateway; the upstream requests counted."""
        files = len(self.hub.files)
        self.outcome.files = files
        mark = len(self.hub.requests)
        answers = self._download_all(predictors, hows, label="model-0", revision=None)
        window = self.hub.requests[mark:]
        self.outcome.predictors = answers
        for index, (how, answer) in enumerate(zip(hows, answers, strict=True)):
            client = (
                "kserve-storage Storage.download" if how == "kserve" else "huggingface_hub snapshot_download"
            )
            state = "ok" if answer["ok"] else f"FAILED ({answer.get('error')})"
            shown = f"{len(answer.get('files', []))} files" if answer["ok"] else ""
            self.out.detail(
                f"replica {index} ({client}): {state} {shown}"
                f" in {answer['seconds'] * 1000:.0f} ms, pid {answer['pid']}"
            )
        if not all(answer["ok"] for answer in answers):
            return False
        self.outcome.upstream_requests = len(window)
        self.outcome.upstream_by_route = _count_routes(window)
        self.outcome.direct_requests = 3 * direct_cost(files)
        breakdown = ", ".join(f"{n} {route}" for route, n in self.outcome.upstream_by_route.items())
        self.out.detail(
            f"upstream requests (the Hub stand-in's own log): {len(window)} through the gateway ({breakdown})"
            f" vs {self.outcome.direct_requests} for three direct downloads (3 x (2 + 2x{files}))"
        )
        return True

    def _denied(self, *, url: str, api: Any) -> bool:
        """A service account the policy does not name must get the Hub's 'not found'."""
        from tokensidecar.demo.predictor import Predictor

        self.out.step(f"A service account the policy does not name: {DENIED[0]}/{DENIED[1]}")
        token_path = self._projected("notebook-0", *DENIED, api)
        intruder = Predictor(hub_url=url, token_file=token_path, home=self.dir / "hf-home-denied")
        self.cleanup.callback(intruder.close)
        self.outcome.pids.append(intruder.pid)
        refused = intruder.download(repo_id=self.hub.repo_id, out_dir=self.dir / "denied")
        self.outcome.denied = refused
        if refused["ok"]:
            self.out.detail("the download SUCCEEDED: the policy did not deny it")
            return False
        self.out.detail(
            f"snapshot_download raised {refused['error']} (HTTP {refused['status']}): what the Hub tells"
            " a caller who cannot see the repo; the decision is in the gateway's audit log"
        )
        return True

    def _rotations(
        self, *, current: str, gateway: GatewayProcess, predictors: list[Any], hows: list[str]
    ) -> bool:
        """``--rotations`` (or, with ``--forever``, endless) rotations, ``--demo-interval`` apart."""
        total = "∞" if self.forever else str(self.rotations)
        self.out.step(
            f"Rotating the gateway's upstream credential {total} times:"
            " Vault write → gateway → revoke old → new commit → downloads"
        )
        return rotate_repeatedly(
            lambda number, current: self._rotate(
                number=number, total=total, current=current, gateway=gateway, predictors=predictors, hows=hows
            ),
            first=current,
            rotations=self.rotations,
            forever=self.forever,
            pause=self.pause,
            results=self.outcome.rotations,
        )

    def _stop_and_check(self, gateway: GatewayProcess, *, api: Any) -> bool:
        """SIGTERM the gateway: a clean exit, and no token of any kind in its log."""
        self.outcome.reviews = len(api.reviews)
        self.outcome.gateway_exit_code = gateway.stop()
        log = gateway.log_path.read_text(errors="replace")
        secrets_seen = [*self._issued, *self._service_account_tokens]
        self.outcome.token_in_gateway_log = any(value in log for value in secrets_seen)
        return self.outcome.gateway_exit_code == 0 and not self.outcome.token_in_gateway_log

    # -- pieces ----------------------------------------------------------------------------

    def _projected(self, pod: str, namespace: str, service_account: str, api: Any) -> Path:
        from tokensidecar.demo.apiserver import write_projected_token

        token = api.issue(namespace=namespace, service_account=service_account, audience=AUDIENCE, pod=pod)
        self._service_account_tokens.append(token)
        return write_projected_token(self.dir / "projected" / pod, token)

    def _write_vault(self, token: str) -> int:
        from datetime import UTC, datetime, timedelta

        from tokensidecar.backends.vault import METADATA_EXPIRES_AT

        expires_at = datetime.now(UTC) + timedelta(seconds=self.token_lifetime)
        version: int = self.vault.put_kv(
            GATEWAY_VAULT_PATH,
            {"token": token},
            custom_metadata={
                METADATA_EXPIRES_AT: expires_at.isoformat(timespec="seconds").replace("+00:00", "Z")
            },
        )
        return version

    def _start_gateway(self, *, kubeconfig: Path) -> GatewayProcess | None:
        approle = self.dir / "approle"
        approle.mkdir(mode=0o700, exist_ok=True)
        policy_name = self.vault.read_policy_for(GATEWAY_VAULT_PATH, name="hf-gateway-reader")
        role_id, secret_id = self.vault.create_approle("hf-gateway", policies=[policy_name], ttl="5m")
        (approle / "role-id").write_text(role_id)
        secret_file = approle / "secret-id"
        secret_file.write_text(secret_id)
        os.chmod(secret_file, 0o600)
        credentials = self.dir / "credentials.yaml"
        credentials.write_text(
            "# The gateway's upstream credentials: where each token comes from, never a token.\n"
            "credentials:\n"
            "  default:\n"
            "    source: vault\n"
            f"    vault-addr: {self.vault.addr}\n"
            f"    vault-path: {GATEWAY_VAULT_PATH}\n"
            "    vault-auth: approle\n"
            f"    vault-role-id-file: {approle / 'role-id'}\n"
            f"    vault-secret-id-file: {secret_file}\n"
            "    refresh-interval: 1s\n"
            "    max-backoff: 5s\n"
            "    verify: repo\n"
            f"    model-id: {self.hub.repo_id}\n"
        )
        policy = self.dir / "policy.yaml"
        policy.write_text(POLICY)
        gateway = GatewayProcess(
            directory=self.dir,
            env={
                "TOKENSIDECAR_GATEWAY_UPSTREAM": self.hub.url,
                "TOKENSIDECAR_GATEWAY_CREDENTIALS": str(credentials),
                "TOKENSIDECAR_GATEWAY_POLICY": str(policy),
                "TOKENSIDECAR_GATEWAY_CACHE_DIR": str(self.dir / "cache"),
                "TOKENSIDECAR_GATEWAY_AUDIENCE": AUDIENCE,
                "KUBECONFIG": str(kubeconfig),
            },
        )
        self.cleanup.callback(gateway.stop)
        if not gateway.start(timeout=READY_TIMEOUT_SECONDS):
            self.out.detail(f"the gateway did not become ready: {gateway.reason}; see {gateway.log_path}")
            return None
        if gateway.pid is not None:
            self.outcome.pids.append(gateway.pid)
        return gateway

    def _download_all(
        self, predictors: list[Any], hows: list[str], *, label: str, revision: str | None
    ) -> list[dict[str, Any]]:
        """Every replica downloads at once, as replicas of a rollout start together."""
        repo = self.hub.repo_id
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(predictors)) as pool:
            futures = [
                pool.submit(
                    predictor.download,
                    repo_id=repo,
                    out_dir=self.dir / f"{label}-replica-{index}",
                    how=how,
                    revision=revision,
                )
                for index, (predictor, how) in enumerate(zip(predictors, hows, strict=True))
            ]
            return [future.result() for future in futures]

    def _rotate(
        self,
        *,
        number: int,
        total: str,
        current: str,
        gateway: GatewayProcess,
        predictors: list[Any],
        hows: list[str],
    ) -> dict[str, Any]:
        new = self.hub.issue_token(expires_in=self.token_lifetime)
        self._issued.append(new)
        before = gateway.rotations()
        written = time.monotonic()
        version = self._write_vault(new)
        taken = wait_until(
            lambda: gateway.rotations() > before, timeout=ROTATION_TIMEOUT_SECONDS, interval=POLL_SECONDS
        )
        propagation = time.monotonic() - written
        if not taken:
            self.out.detail(f"rotation {number}/{total}: the gateway did not take Vault v{version} in time")
            return {"ok": False, "token": new}
        self.hub.revoke(current)
        files = dict(self.hub.files)
        files["config.json"] = (
            json.dumps({"architectures": ["TinyModel"], "revision": number}).encode() + b"\n"
        )
        commit = self.hub.push(files)
        mark = len(self.hub.requests)
        answers = self._download_all(predictors, hows, label=f"model-{number}", revision=commit)
        upstream = len(self.hub.requests) - mark
        ok = all(answer["ok"] for answer in answers)
        self.out.detail(
            f"rotation {number}/{total}: Vault v{version} {fingerprint(current)} → {fingerprint(new)}"
            f" taken by the gateway in {propagation * 1000:.0f} ms; old token revoked;"
            f" commit {commit[:7]}: {sum(a['ok'] for a in answers)}/3 replicas"
            f" {'ok' if ok else 'FAILED'}, {upstream} upstream requests with the new token"
        )
        return {
            "ok": ok,
            "token": new,
            "propagation_seconds": propagation,
            "upstream_requests": upstream,
            "downloads_ok": sum(1 for answer in answers if answer["ok"]),
            "errors": [answer.get("error") for answer in answers if not answer["ok"]],
        }


def _count_routes(requests: list[tuple[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for method, path in requests:
        route = _route(path)
        key = f"{method} {route}" if route == "file" else route
        counts[key] = counts.get(key, 0) + 1
    return counts


class GatewayProcess:
    """``tokensidecar gateway`` as its own process, logging JSON lines to a file."""

    def __init__(self, *, directory: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "gateway.log"
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TOKENSIDECAR_", "VAULT_", "HF_", "HUGGING_FACE_")) and k != "KUBECONFIG"
        }
        self.env.update(
            TOKENSIDECAR_GATEWAY_LISTEN=f"127.0.0.1:{self.port}",
            TOKENSIDECAR_LOG_FORMAT="json",
            **env,
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.ready_seconds = 0.0
        self.reason = ""

    def start(self, *, timeout: float) -> bool:
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tokensidecar", "gateway"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.pid = self.process.pid
        try:
            ready = wait_until(self._ready, timeout=timeout, interval=POLL_SECONDS)
        except _GatewayExited:
            ready = False
        self.ready_seconds = time.monotonic() - started
        return ready

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            self.reason = f"exited with {self.process.returncode}"
            raise _GatewayExited(self.reason)
        status, body = self.get("/readyz")
        self.reason = body.strip()[:300] or f"HTTP {status}"
        return status == 200

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:  # noqa: S310 - http://127.0.0.1
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError as error:
            return 0, str(error)

    def rotations(self) -> float:
        """Successful refreshes of the credential ``default`` (its §6 metric, labelled)."""
        from prometheus_client.parser import text_string_to_metric_families

        status, text = self.get("/metrics")
        if status != 200:
            return 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (
                    sample.name == "tokensidecar_rotations_total"
                    and sample.labels.get("credential") == "default"
                    and sample.labels.get("result") == "success"
                ):
                    return float(sample.value)
        return 0.0

    def stop(self) -> int | None:
        """SIGTERM, wait (SIGKILL after 10 s); the exit code. Safe to call twice."""
        if self.process is None:
            return None
        return stop_process(self.process)


class _GatewayExited(Exception):
    pass

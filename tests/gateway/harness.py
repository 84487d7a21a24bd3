"""The gateway's data plane under test: started on a loopback port in a thread, and real
clients (huggingface_hub, kserve-storage) run against it in subprocesses.

Clients run in subprocesses because huggingface_hub reads ``HF_ENDPOINT`` and
``HF_TOKEN_PATH`` at import. The token file is a kubelet-style projected volume (``..data``
symlink swap), written by the caller.

Until the control plane's Gatekeeper lands, :class:`AllowList` stands in for it here (never
in tokensidecar/): a token → identity table and a set of (subject, repo) grants, with the
Verdict shape of GATEWAY-INTERFACES.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tests.sidecar_process import SidecarProcess, wait_for
from tokensidecar.gateway.cache import BlobStore
from tokensidecar.gateway.identity import Identity
from tokensidecar.gateway.metadata import Metadata
from tokensidecar.gateway.metrics import GatewayMetrics
from tokensidecar.gateway.server import Gateway, build_app
from tokensidecar.gateway.upstream import Upstream

if TYPE_CHECKING:
    from tests.fixtures.kube import KubeApi
    from tokensidecar.demo.hub import HubStandIn

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: int | None
    credential: str | None
    reason: str


@dataclass(frozen=True)
class Verdict:
    outcome: str
    identity: Identity | None
    decision: Decision | None


@dataclass
class AllowList:
    """Gatekeeper double: ``tokens`` → identity; ``grants`` of (namespace/sa, repo)."""

    tokens: dict[str, Identity] = field(default_factory=dict)
    grants: set[tuple[str, str]] = field(default_factory=set)
    checks: list[tuple[str, str, str, frozenset[str]]] = field(default_factory=list)

    def add(self, token: str, *, namespace: str, service_account: str, repos: tuple[str, ...]) -> None:
        username = f"system:serviceaccount:{namespace}:{service_account}"
        self.tokens[token] = Identity(namespace, service_account, username, None)
        self.grants.update((f"{namespace}/{service_account}", repo) for repo in repos)

    async def check(
        self, *, authorization: str | None, repo: str, revision: str, known_as: frozenset[str] = frozenset()
    ) -> Verdict:
        identity = self.tokens.get((authorization or "").partition(" ")[2].strip())
        subject = identity.subject if identity else ""
        self.checks.append((subject, repo, revision, known_as))
        if identity is None:
            return Verdict("unauthenticated", None, None)
        if (identity.subject, repo) not in self.grants:
            return Verdict("denied", identity, Decision(False, None, None, "no rule matches"))
        return Verdict("allowed", identity, Decision(True, 0, "default", "rule 0"))

    async def authenticate(self, authorization: str | None) -> Verdict:
        identity = self.tokens.get((authorization or "").partition(" ")[2].strip())
        return Verdict("allowed" if identity else "unauthenticated", identity, None)


@dataclass
class StaticCredentials:
    """CredentialStore double: one named token, swappable (rotation)."""

    values: dict[str, str] = field(default_factory=dict)

    def token(self, name: str) -> str | None:
        return self.values.get(name)


class RunningGateway:
    """A data-plane gateway on its own loop in a thread; ``url`` once started."""

    def __init__(
        self,
        *,
        upstream: str,
        cache_dir: Path,
        gatekeeper: AllowList,
        credentials: StaticCredentials,
        cache_size: int = 1 << 40,
        revision_ttl: float = 300.0,
        stale_if_error: float = 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gateway", daemon=True)
        self._args = (upstream, cache_dir, gatekeeper, credentials, cache_size, revision_ttl, stale_if_error)
        self._clock = clock
        self.url = ""
        self.gateway: Gateway | None = None
        self._runner: web.AppRunner | None = None

    async def _start(self) -> str:
        upstream_url, cache_dir, gatekeeper, credentials, cache_size, ttl, stale = self._args
        metrics = GatewayMetrics()
        upstream = Upstream(base_url=upstream_url, metrics=metrics)
        self.gateway = Gateway(
            upstream=upstream,
            metadata=Metadata(
                directory=cache_dir,
                upstream=upstream,
                revision_ttl=ttl,
                stale_if_error=stale,
                clock=self._clock,
            ),
            blobs=BlobStore(directory=cache_dir, max_bytes=cache_size, metrics=metrics),
            gatekeeper=gatekeeper,
            credentials=credentials,
            metrics=metrics,
        )
        self._runner = web.AppRunner(build_app(self.gateway), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def _stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.blobs.aclose()
            await self.gateway.upstream.aclose()
        if self._runner is not None:
            await self._runner.cleanup()

    def call(self, coroutine: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=timeout)

    def __enter__(self) -> RunningGateway:
        self._thread.start()
        self.url = self.call(self._start())
        return self

    def __exit__(self, *_: object) -> None:
        with contextlib.suppress(Exception):
            self.call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    def metric(self, name: str, **labels: str) -> float:
        assert self.gateway is not None
        value = self.gateway.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


def olah_process(
    *, config: Path, port: int, root: Path, log: Any, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """olah (its own ``olah.server.cli``, as its console script runs it) on 127.0.0.1:``port``
    with ``config``, working in ``root``, its log files under ``root/logs``, output to ``log``."""
    return subprocess.Popen(
        [
            *(sys.executable, "-c", "from olah.server import cli; cli()", "-c", str(config)),
            *("--host", "127.0.0.1", "--port", str(port), "--log-path", str(root / "logs")),
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


class Clock:
    """Seconds that a test moves forward by hand (``clock.now += 300``): the TTLs and expiries
    of the reviewer, the gatekeeper and the metadata cache, without sleeping."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


def projected_token(directory: Path, token: str) -> Path:
    """Write ``token`` the way kubelet updates a projected volume; returns the token path."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = directory / f"..{os.urandom(4).hex()}"
    stamp.mkdir()
    (stamp / "token").write_text(token)
    link = directory / "..data_tmp"
    link.symlink_to(stamp.name)
    os.replace(link, directory / "..data")
    path = directory / "token"
    if not path.is_symlink():
        path.symlink_to("..data/token")
    return path


CLIENT = """
import json, sys
args = json.loads(sys.argv[1])
try:
    result = {"ok": True, "value": CODE}
except Exception as exc:
    result = {"ok": False, "error": type(exc).__name__, "message": str(exc)[:500]}
print("RESULT " + json.dumps(result, default=str))
"""


def run_client(
    expression: str,
    *,
    endpoint: str,
    token_path: Path | None,
    home: Path,
    setup: str = "",
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> dict[str, Any]:
    """Evaluate ``expression`` (huggingface_hub imported as needed in ``setup``) in a fresh
    interpreter pointed at ``endpoint``; returns {"ok", "value"} or {"ok": False, "error"}."""
    code = setup + "\n" + CLIENT.replace("CODE", expression)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    child_env.update(
        {
            "HF_ENDPOINT": endpoint,
            "HF_HOME": str(home),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_ETAG_TIMEOUT": "30",
            "PYTHONPATH": str(REPO_ROOT),
            **({"HF_TOKEN_PATH": str(token_path)} if token_path else {}),
            **(env or {}),
        }
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "{}"],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            return result
    raise AssertionError(f"client crashed ({done.returncode}): {done.stderr[-3000:]}")


@contextlib.contextmanager
def gateway_for(
    hub_url: str, tmp_path: Path, **kwargs: Any
) -> Iterator[tuple[RunningGateway, AllowList, Path]]:
    """A gateway in front of ``hub_url`` with one workload (team-a/predictor) granted
    ``acme/private-model``; yields it, its gatekeeper and the workload's token path."""
    gatekeeper = AllowList()
    gatekeeper.add(
        "sa-token-team-a", namespace="team-a", service_account="predictor", repos=("acme/private-model",)
    )
    credentials = kwargs.pop("credentials")
    with RunningGateway(
        upstream=hub_url,
        cache_dir=tmp_path / "cache",
        gatekeeper=gatekeeper,
        credentials=credentials,
        **kwargs,
    ) as running:
        yield running, gatekeeper, projected_token(tmp_path / "projected", "sa-token-team-a")


#: The policy most process tests run under: team-a's predictor may read every acme/ repository.
TEAM_A_POLICY = """\
rules:
  - subjects: [{namespace: team-a, serviceAccount: predictor}]
    repos: [acme/*]
"""


class GatewayProcess(SidecarProcess):
    """The real ``tokensidecar gateway`` (control plane included) as a subprocess.

    Upstream credential: a ``file`` source holding ``upstream_token``; identity: the kmock
    API server's TokenReview (``kubeconfig``); policy: ``policy`` written to a file.
    """

    def __init__(
        self,
        *,
        directory: Path,
        upstream: str,
        upstream_token: str,
        kubeconfig: Path,
        policy: str,
        cache_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "upstream-token").write_text(upstream_token)
        (directory / "policy.yaml").write_text(policy)
        super().__init__(token_file=directory / "unused" / "token", env={}, command="gateway")
        self.cache_dir = cache_dir or directory / "cache"
        self.url = f"http://127.0.0.1:{self.port}"
        self.env.update(
            {
                "TOKENSIDECAR_GATEWAY_LISTEN": f"127.0.0.1:{self.port}",
                "TOKENSIDECAR_GATEWAY_UPSTREAM": upstream,
                "TOKENSIDECAR_GATEWAY_POLICY": str(directory / "policy.yaml"),
                "TOKENSIDECAR_GATEWAY_CACHE_DIR": str(self.cache_dir),
                "TOKENSIDECAR_SOURCE": "file",
                "TOKENSIDECAR_SOURCE_FILE": str(directory / "upstream-token"),
                "TOKENSIDECAR_VERIFY": "whoami",
                "KUBECONFIG": str(kubeconfig),
                "PYTHONPATH": str(REPO_ROOT),
                **(env or {}),
            }
        )
        (directory / "unused").mkdir(exist_ok=True)

    @classmethod
    def in_front_of(
        cls,
        hub: HubStandIn,
        *,
        kube_api: KubeApi,
        tmp_path: Path,
        policy: str = TEAM_A_POLICY,
        upstream_token: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> GatewayProcess:
        """The gateway the process tests run: in front of ``hub`` with ``upstream_token`` (a
        new one the hub issues, unless given), reviewing callers' tokens at ``kube_api``, its
        files in ``tmp_path/gw``."""
        return cls(
            directory=tmp_path / "gw",
            upstream=hub.url,
            upstream_token=hub.issue_token() if upstream_token is None else upstream_token,
            kubeconfig=kube_api.kubeconfig_path,
            policy=policy,
            env=env,
        )

    def wait_until_ready(self) -> None:
        """Until ``/readyz`` answers 200 (the first upstream token is in and verified)."""
        wait_for(lambda: self.get("/readyz")[0] == 200, timeout=30)

    def restart(self) -> GatewayProcess:
        self._log_file.close()
        return self.start()  # type: ignore[return-value]


HUB_SETUP = "from huggingface_hub import HfApi, hf_hub_download, snapshot_download\n"


def client_mid_download(
    gateway: GatewayProcess, expression: str, *, token_path: Path, home: Path
) -> Callable[[], list[dict[str, Any]]]:
    """Start a huggingface_hub client (:func:`run_client` of ``expression``) against
    ``gateway`` in a thread and return once the gateway's partial cache holds bytes: the
    download is under way, and the test can rotate something under it. The function
    returned waits for the client and gives its result (a list of one, empty if it hung)."""
    results: list[dict[str, Any]] = []
    client = threading.Thread(
        target=lambda: results.append(
            run_client(expression, endpoint=gateway.url, token_path=token_path, home=home, setup=HUB_SETUP)
        )
    )
    client.start()
    partial = gateway.cache_dir / "partial"
    wait_for(lambda: partial.is_dir() and any(p.stat().st_size > 0 for p in partial.iterdir()), timeout=60)

    def finish() -> list[dict[str, Any]]:
        client.join(timeout=120)
        return results

    return finish

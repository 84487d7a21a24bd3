"""The gateway's HTTP surface: the Hub's routes, headers and errors, probes and metrics.

Each Hub route is the same three steps: authorize (the control plane's Gatekeeper, on
every request, cache hits included), look the metadata up (``metadata``: cache, else one
upstream call), answer in the Hub's own shape. File bytes come from a verified blob
(``sendfile``), or from a fill as they arrive (``cache.read_fill``), or — when the cache
cannot hold them — straight from upstream; never through a redirect to another host.

What clients read, from huggingface_hub 2.x (``file_download.get_hf_file_metadata``,
``utils/_http.hf_raise_for_status``): ``X-Repo-Commit``, ``X-Linked-Etag`` (else ``ETag``),
``X-Linked-Size`` (else ``Content-Length``) on ``HEAD /resolve``; ``X-Error-Code``
``RepoNotFound`` / ``GatedRepo`` / ``RevisionNotFound`` / ``EntryNotFound`` on errors; a 401
whose ``X-Error-Message`` is "Invalid credentials in Authorization header" for a bad token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from tokensidecar import __version__
from tokensidecar.config import Config, ConfigError
from tokensidecar.gateway.cache import BlobStore, FillFailed, read_fill
from tokensidecar.gateway.identity import Identity
from tokensidecar.gateway.metadata import Metadata, is_commit
from tokensidecar.gateway.metrics import GatewayMetrics
from tokensidecar.gateway.settings import GatewaySettings
from tokensidecar.gateway.upstream import Answer, FileMeta, Upstream, UpstreamUnavailable
from tokensidecar.metrics import CONTENT_TYPE_LATEST, exposition
from tokensidecar.redact import safe_error
from tokensidecar.serving import CertificateReloader, listen, shut_down, stop_on_signals, until_stopped

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from tokensidecar.gateway.credentials import CredentialStore
    from tokensidecar.gateway.identity import TokenReviewer
    from tokensidecar.gateway.policy import PolicyFile

__all__ = ["Gateway", "build_app", "main", "serve"]

log = logging.getLogger(__name__)

INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


# -- the control plane, as the data plane uses it (GATEWAY-INTERFACES.md) ---------------------


class _Decision(Protocol):
    @property
    def credential(self) -> str | None: ...


class _Verdict(Protocol):
    @property
    def outcome(self) -> str: ...  # allowed | unauthenticated | denied | unavailable
    @property
    def identity(self) -> Identity | None: ...
    @property
    def decision(self) -> _Decision | None: ...


class Gatekeeper(Protocol):
    async def check(
        self, *, authorization: str | None, repo: str, revision: str, known_as: frozenset[str] = ...
    ) -> _Verdict: ...

    async def authenticate(self, authorization: str | None) -> _Verdict: ...


class Credentials(Protocol):
    def token(self, name: str) -> str | None: ...


# -- answers in the Hub's shape ---------------------------------------------------------------


def hub_error(status: int, message: str, *, code: str | None = None, **extra: str) -> web.Response:
    headers = {"X-Error-Message": message, **extra}
    if code:
        headers["X-Error-Code"] = code
    return web.json_response({"error": message}, status=status, headers=headers)


REPO_NOT_FOUND = "Repository not found"


class Refused(Exception):
    """A request answered before any lookup (401, 404, 503); carries the Hub-shaped answer."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _from_answer(answer: Answer, *, request: web.Request) -> web.Response:
    headers = dict(answer.headers)
    headers.pop("Content-Type", None)
    response = web.Response(
        status=answer.status,
        body=answer.body,
        headers=headers,
        content_type=answer.headers.get("Content-Type", "application/json").split(";")[0],
    )
    if answer.next_page:  # a Link to the next page, on the gateway's own host
        response.headers["Link"] = f'<{request.scheme}://{request.host}{answer.next_page}>; rel="next"'
    return response


def _unavailable(exc: UpstreamUnavailable) -> web.Response:
    if exc.answer is not None and exc.answer.status in (429, 503):
        extra = (
            {"Retry-After": exc.answer.headers["Retry-After"]} if "Retry-After" in exc.answer.headers else {}
        )
        return hub_error(exc.answer.status, "upstream unavailable", **extra)
    return hub_error(503, "upstream unavailable", **{"Retry-After": "5"})


def file_headers(meta: FileMeta) -> dict[str, str]:
    return {
        "X-Repo-Commit": meta.commit,
        "ETag": f'"{meta.etag}"',
        "X-Linked-Etag": f'"{meta.etag}"',
        "X-Linked-Size": str(meta.size),
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` → ``[start, end)``; None = whole file; ValueError = 416."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None  # several ranges or another unit: RFC 9110 lets a server send it all
    first, last = match.groups()
    if not first:
        if not last:
            return None
        return max(size - int(last), 0), size
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or end <= start:
        raise ValueError(f"bytes */{size}")
    return start, end


# -- the gateway ------------------------------------------------------------------------------


@dataclass
class Gateway:
    """The data plane's parts and the control plane's, as the routes use them."""

    upstream: Upstream
    metadata: Metadata
    blobs: BlobStore
    gatekeeper: Gatekeeper
    credentials: Credentials
    metrics: GatewayMetrics
    readiness: Callable[[], tuple[bool, str]] = lambda: (True, "ok")
    alive: Callable[[], bool] = lambda: True

    async def authorize(self, request: web.Request, *, repo: str, revision: str) -> str | None:
        """The upstream token for this caller and repo; raises the Hub's answer otherwise."""
        known_as = self.metadata.known_as(repo, revision) if is_commit(revision) else frozenset()
        authorization = request.headers.get("Authorization")
        verdict = await self.gatekeeper.check(
            authorization=authorization, repo=repo, revision=revision, known_as=known_as
        )
        if verdict.outcome == "allowed":
            name = verdict.decision.credential if verdict.decision else None
            return self.credentials.token(name or "default")
        if verdict.outcome == "unauthenticated":
            if not authorization:  # the Hub's answer to an anonymous caller of a private repo
                raise Refused(hub_error(401, REPO_NOT_FOUND, code="RepoNotFound"))
            raise Refused(hub_error(401, INVALID_CREDENTIALS))
        if verdict.outcome == "denied":  # exactly what a caller who cannot see the repo gets
            raise Refused(hub_error(404, REPO_NOT_FOUND, code="RepoNotFound"))
        raise Refused(hub_error(503, "authorization unavailable", **{"Retry-After": "5"}))


def _repo(request: web.Request) -> str:
    return f"{request.match_info['org']}/{request.match_info['name']}"


# The one Gateway an application serves: each route is a plain function that finds it here.
_GATEWAY = web.AppKey("gateway", Gateway)


def build_app(gateway: Gateway) -> web.Application:
    """The Hub's routes, the probes and ``/metrics``, each request counted by :func:`_observe`."""
    app = web.Application(middlewares=[_observe], client_max_size=1024 * 1024)
    app[_GATEWAY] = gateway
    models = "/api/models/{org}/{name}"
    app.add_routes(
        [
            web.get("/healthz", _healthz),
            web.get("/readyz", _readyz),
            web.get("/metrics", _metrics_page),
            web.get("/api/whoami-v2", _whoami_v2),
            web.get(models, _model_info),
            web.get(models + "/revision/{rev}", _model_info),
            web.get(models + "/tree/{rev}", _tree),
            web.get(models + "/tree/{rev}/{path:.+}", _tree),
            web.post(models + "/paths-info/{rev}", _paths_info),
            web.get("/{org}/{name}/resolve/{rev}/{path:.+}", _resolve),  # HEAD too
        ]
    )
    return app


@web.middleware
async def _observe(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Count and time every request by route and code, and turn the answers a route raises
    (:class:`Refused`, :class:`UpstreamUnavailable`) into the Hub-shaped responses they carry."""
    metrics = request.app[_GATEWAY].metrics
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    started = time.perf_counter()
    code = 500
    try:
        response = await handler(request)
        code = response.status
        return response
    except web.HTTPException as exc:
        code = exc.status
        raise
    except Refused as refused:
        code = refused.response.status
        return refused.response
    except UpstreamUnavailable as exc:
        response = _unavailable(exc)
        code = response.status
        return response
    finally:
        metrics.requests.labels(route=route, code=str(code)).inc()
        metrics.request_duration.labels(route=route).observe(time.perf_counter() - started)


async def _model_info(request: web.Request) -> web.StreamResponse:
    gateway = request.app[_GATEWAY]
    repo, revision = _repo(request), request.match_info.get("rev", "")
    token = await gateway.authorize(request, repo=repo, revision=revision or "main")
    answer = await gateway.metadata.info(repo=repo, revision=revision, query=dict(request.query), token=token)
    return _from_answer(answer, request=request)


async def _tree(request: web.Request) -> web.StreamResponse:
    gateway = request.app[_GATEWAY]
    repo, revision = _repo(request), request.match_info["rev"]
    token = await gateway.authorize(request, repo=repo, revision=revision)
    answer = await gateway.metadata.tree(
        repo=repo,
        revision=revision,
        path=request.match_info.get("path", ""),
        query=dict(request.query),
        token=token,
    )
    return _from_answer(answer, request=request)


async def _paths_info(request: web.Request) -> web.StreamResponse:
    gateway = request.app[_GATEWAY]
    repo, revision = _repo(request), request.match_info["rev"]
    token = await gateway.authorize(request, repo=repo, revision=revision)
    form = [(k, str(v)) for k, v in (await request.post()).items()]
    answer = await gateway.metadata.paths_info(repo=repo, revision=revision, form=form, token=token)
    return _from_answer(answer, request=request)


async def _resolve(request: web.Request) -> web.StreamResponse:
    """``HEAD`` answers the file's metadata; ``GET`` its bytes (all, or one ``Range``)."""
    gateway = request.app[_GATEWAY]
    repo, revision, path = _repo(request), request.match_info["rev"], request.match_info["path"]
    token = await gateway.authorize(request, repo=repo, revision=revision)
    meta = await gateway.metadata.file(repo=repo, revision=revision, path=path, token=token)
    if isinstance(meta, Answer):
        return _from_answer(meta, request=request)
    headers = file_headers(meta)
    try:
        wanted = parse_range(request.headers.get("Range"), meta.size)
    except ValueError as exc:
        return web.Response(status=416, headers={**headers, "Content-Range": str(exc)})
    if request.method == "HEAD":
        return web.Response(status=200, headers={**headers, "Content-Length": str(meta.size)})
    return await _send_file(gateway, request, repo=repo, meta=meta, path=path, token=token, wanted=wanted)


async def _whoami_v2(request: web.Request) -> web.StreamResponse:
    verdict = await request.app[_GATEWAY].gatekeeper.authenticate(request.headers.get("Authorization"))
    if verdict.outcome == "unavailable":
        return hub_error(503, "authorization unavailable", **{"Retry-After": "5"})
    if verdict.identity is None:
        return hub_error(401, INVALID_CREDENTIALS)
    return web.json_response(_whoami(verdict.identity))


async def _healthz(request: web.Request) -> web.Response:
    if not request.app[_GATEWAY].alive():
        return web.json_response({"status": "a credential refresh loop stopped"}, status=500)
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    """The credentials' readiness (a refused policy file named in the reason); not ready
    while the cache directory cannot be written, whatever the credentials say."""
    gateway = request.app[_GATEWAY]
    writable, why = gateway.blobs.writable()
    ready, reason = gateway.readiness()
    if not writable:
        ready, reason = False, why
    return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)


async def _metrics_page(request: web.Request) -> web.Response:
    registry = request.app[_GATEWAY].metrics.registry
    return web.Response(body=exposition(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _whoami(identity: Identity) -> dict[str, Any]:
    """whoami-v2 in the Hub's shape, naming the workload (no Hub user stands behind it)."""
    return {
        "type": "user",
        "id": identity.username,
        "name": identity.username,
        "fullname": f"{identity.namespace}/{identity.service_account}",
        "orgs": [],
        "auth": {
            "type": "access_token",
            "accessToken": {"displayName": "kubernetes service account", "role": "read"},
        },
    }


async def _send_file(
    gateway: Gateway,
    request: web.Request,
    *,
    repo: str,
    meta: FileMeta,
    path: str,
    token: str | None,
    wanted: tuple[int, int] | None,
) -> web.StreamResponse:
    """The file's bytes, all or the ``wanted`` range: from a verified blob when the cache has
    one, else as they arrive upstream (through a fill when the cache can take them)."""
    start, end = wanted or (0, meta.size)
    response = web.StreamResponse(status=206 if wanted else 200, headers=file_headers(meta))
    response.content_length = end - start
    if wanted:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{meta.size}"
    blob = gateway.blobs.complete(meta.etag)
    if blob is not None:
        return await _send_blob(
            gateway, request, response=response, blob=blob, etag=meta.etag, start=start, end=end
        )
    return await _send_fetched(
        gateway,
        request,
        response=response,
        meta=meta,
        repo=repo,
        path=path,
        token=token,
        start=start,
        end=end,
    )


async def _send_blob(
    gateway: Gateway,
    request: web.Request,
    *,
    response: web.StreamResponse,
    blob: Path,
    etag: str,
    start: int,
    end: int,
) -> web.StreamResponse:
    """A cache hit: sendfile(2) from the verified blob, leased so eviction leaves it alone."""
    with gateway.blobs.lease(etag), open(blob, "rb") as file:  # noqa: ASYNC230 (page cache; aiohttp does the same)
        await response.prepare(request)
        if end > start:
            await _sendfile(request, response, file, start, end - start)
        gateway.metrics.bytes_served.labels(cache="hit").inc(end - start)
        await response.write_eof()
    return response


async def _send_fetched(
    gateway: Gateway,
    request: web.Request,
    *,
    response: web.StreamResponse,
    meta: FileMeta,
    repo: str,
    path: str,
    token: str | None,
    start: int,
    end: int,
) -> web.StreamResponse:
    """A miss: the bytes of a fill as they arrive, and on from upstream for what a fill does
    not give (not cacheable, or the cache failed locally)."""

    def open_body(offset: int = 0) -> contextlib.AbstractAsyncContextManager[Any]:
        return gateway.upstream.file_body(repo=repo, commit=meta.commit, path=path, token=token, start=offset)

    metrics = gateway.metrics
    fill = gateway.blobs.fill(meta, open_body=open_body)
    await response.prepare(request)
    position = start
    try:
        if fill is not None:
            try:
                async for chunk in read_fill(fill, start=start, end=end):
                    await response.write(chunk)
                    position += len(chunk)
                    metrics.bytes_served.labels(cache="miss").inc(len(chunk))
            except FillFailed as failure:
                if not failure.local:
                    raise
        if position < end:  # not cacheable, or the cache failed locally: on from upstream
            async for chunk in _from_upstream(open_body, position, end):
                await response.write(chunk)
                position += len(chunk)
                metrics.bytes_served.labels(cache="miss").inc(len(chunk))
    except (FillFailed, UpstreamUnavailable) as failure:
        # Headers are out: the only honest signal left is a body cut short.
        log.warning("file download cut short", extra={"repo": repo, "error": safe_error(failure)})
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


async def _from_upstream(
    open_body: Callable[[int], contextlib.AbstractAsyncContextManager[Any]], start: int, end: int
) -> AsyncIterator[bytes]:
    remaining = end - start
    try:
        async with open_body(start) as upstream:
            async for received in upstream.content.iter_any():
                chunk = received[:remaining]
                remaining -= len(chunk)
                yield chunk
                if not remaining:
                    return
    except Exception as exc:
        raise UpstreamUnavailable(f"upstream body failed: {safe_error(exc)}") from None
    if remaining:
        raise UpstreamUnavailable("short upstream body")


async def _sendfile(
    request: web.Request, response: web.StreamResponse, file: Any, offset: int, count: int
) -> None:
    """sendfile(2) from the page cache to the socket, as aiohttp's FileResponse does."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("connection lost")
    loop = asyncio.get_running_loop()
    try:
        await loop.sendfile(transport, file, offset, count)
    except NotImplementedError:  # TLS transports cannot sendfile: copy in chunks
        file.seek(offset)
        while count > 0:
            chunk = await loop.run_in_executor(None, file.read, min(1024 * 1024, count))
            if not chunk:
                raise ConnectionResetError("the cached file shrank") from None
            await response.write(chunk)
            count -= len(chunk)


# -- wiring: `tokensidecar gateway` -----------------------------------------------------------

# In-flight downloads get this long after SIGTERM; a StatefulSet's default grace is 30 s.
SHUTDOWN_GRACE_SECONDS = 10.0


def _build(
    settings: GatewaySettings, *, config: Config
) -> tuple[Gateway, CredentialStore, tuple[PolicyFile, TokenReviewer], CertificateReloader | None]:
    """Every part, checked before anything starts (ConfigError names the setting). ``config``
    holds the sidecar's source settings: the credential ``default`` without a credentials file.

    The control plane's modules are imported only here, when the gateway runs."""
    from tokensidecar.gateway.authz import Gatekeeper as RealGatekeeper
    from tokensidecar.gateway.identity import TokenReviewer

    tls = _certificate(settings)
    cache_dir = _cache_directory(settings)
    metrics = GatewayMetrics()
    credentials = _credentials(settings, config=config, registry=metrics.registry)
    policy = _policy(settings, credentials=credentials, registry=metrics.registry)
    reviewer = TokenReviewer.from_kubeconfig(
        audience=settings.audience, kubeconfig=settings.kubeconfig, registry=metrics.registry
    )
    upstream = Upstream(base_url=settings.upstream, metrics=metrics)
    gateway = Gateway(
        upstream=upstream,
        metadata=Metadata(
            directory=cache_dir,
            upstream=upstream,
            revision_ttl=settings.revision_ttl,
            stale_if_error=settings.stale_if_error,
        ),
        blobs=BlobStore(directory=cache_dir, max_bytes=settings.cache_size, metrics=metrics),
        gatekeeper=RealGatekeeper(reviewer=reviewer, policy=policy, registry=metrics.registry),
        credentials=credentials,
        metrics=metrics,
        readiness=_readiness(credentials=credentials, policy=policy),
        alive=credentials.alive,
    )
    return gateway, credentials, (policy, reviewer), tls


def _certificate(settings: GatewaySettings) -> CertificateReloader | None:
    """The serving certificate when both files are given (HTTPS), else None (plain HTTP)."""
    if settings.tls_cert_file and settings.tls_key_file:
        return CertificateReloader(cert_file=settings.tls_cert_file, key_file=settings.tls_key_file)
    return None


def _cache_directory(settings: GatewaySettings) -> Path:
    """The cache directory, created now: one the gateway cannot create is a setting to fix."""
    cache_dir = Path(settings.cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            "TOKENSIDECAR_GATEWAY_CACHE_DIR", f"cannot create {cache_dir}: {exc.strerror}"
        ) from None
    return cache_dir


def _credentials(
    settings: GatewaySettings, *, config: Config, registry: CollectorRegistry
) -> CredentialStore:
    """The upstream credentials: the credentials file's, or else the one named ``default``
    that the sidecar's source settings in ``config`` describe."""
    from tokensidecar.gateway.credentials import CredentialStore

    if settings.credentials_file:
        return CredentialStore.from_file(
            Path(settings.credentials_file), upstream=settings.upstream, registry=registry
        )
    return CredentialStore.from_sidecar_config(config, upstream=settings.upstream, registry=registry)


def _policy(
    settings: GatewaySettings, *, credentials: CredentialStore, registry: CollectorRegistry
) -> PolicyFile:
    """The policy file, loaded now: a rule naming a credential that does not exist, or a
    file that does not parse, stops the start naming the setting."""
    from tokensidecar.gateway.policy import PolicyError, PolicyFile

    try:
        return PolicyFile(Path(settings.policy_file), credentials=credentials.names(), registry=registry)
    except PolicyError as exc:
        raise ConfigError("TOKENSIDECAR_GATEWAY_POLICY", str(exc)) from None


def _readiness(*, credentials: CredentialStore, policy: PolicyFile) -> Callable[[], tuple[bool, str]]:
    """``/readyz``'s answer: the credentials the policy in force uses, plus a word when a
    newer policy file was refused (the previous one is still in force)."""

    def readiness() -> tuple[bool, str]:
        ready, reason = credentials.readiness(policy.current.credentials())
        if policy.load_error is not None:  # the previous policy is still in force
            reason += f"; policy file refused, previous version in force: {policy.load_error}"
        return ready, reason

    return readiness


async def serve(config: Config, *, ready: asyncio.Future[int] | None = None) -> int:
    """Run until SIGTERM/SIGINT. ``ready`` (tests) receives the bound port once serving."""
    settings = GatewaySettings.resolve(config)
    gateway, credentials, (policy, reviewer), tls = _build(settings, config=config)
    tasks: list[asyncio.Task[None]] = []
    runner = web.AppRunner(
        build_app(gateway), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_SECONDS
    )
    try:
        stop = stop_on_signals()
        await credentials.start()
        tasks.append(asyncio.create_task(policy.watch(), name="policy-watch"))
        if tls is not None:
            tasks.append(asyncio.create_task(tls.watch(), name="certificate-reloader"))
        host, port = settings.listen
        bound = await listen(runner, host=host, port=port, ssl_context=tls.context if tls else None)
        log.info(
            "gateway listening",
            extra={
                "version": __version__,
                "listen": f"{host}:{bound}",
                "port": bound,
                "upstream": settings.upstream,
                "tls": tls is not None,
                "cache_dir": settings.cache_dir,
                "cache_bytes": gateway.blobs.used_bytes,
            },
        )
        await until_stopped(stop, ready=ready, bound=bound)
        log.info("shutting down")
        return 0
    finally:
        await shut_down(tasks=tasks, runner=runner)
        await gateway.blobs.aclose()
        await gateway.upstream.aclose()
        await credentials.aclose()
        await reviewer.aclose()


def main(config: Config) -> int:
    """``tokensidecar gateway``: build every part (exit 2 on bad settings), then serve."""
    return asyncio.run(serve(config))

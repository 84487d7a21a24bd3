"""The webhook's HTTPS server: a thin aiohttp shell around :func:`tokensidecar.webhook.review.review`.

It only moves bytes and counts: every decision is in the pure ``review``/``inject``
functions. What lives here is what a long-running TLS server in a cluster needs:

* **Certificates that change under it.** kubelet updates a Secret volume by swapping a
  ``..data`` symlink, cert-manager renews before expiry, and ``--self-signed`` re-issues
  its own. :class:`tokensidecar.serving.CertificateReloader` (shared with the gateway)
  follows the files into the live ``SSLContext``; this server counts each reload in
  ``tokensidecar_webhook_certificate_reloads_total``.
* **Hostile input.** The body size is capped at what the API server can send, and
  ``review`` never raises: bad bodies get 400, bad pods a well-formed denial, so the API
  server never sees a 500 from input.
* **Memory under a flood.** Parsing a review costs many times its size (a 3 MiB pod of
  small env entries becomes some 30 MiB of dicts and strings, then a patch, its base64 and
  the reply), and aiohttp would otherwise buffer every body that arrives at once. A
  :class:`ReviewBudget` admits bodies into read-and-parse in arrival order while their
  total size stays within ``--max-inflight-bytes``; a review past it waits without
  reading, so its bytes stay in the kernel's socket buffer (aiohttp pauses a transport
  whose unread payload passes 128 KiB). Small reviews — nearly all of them — still run
  side by side; large ones take turns.
* **A clean stop.** SIGTERM closes the listener, lets in-flight reviews finish (the API
  server's timeout is a few seconds), and removes the self-signed key files.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tokensidecar import __version__
from tokensidecar.backends.settings import KubernetesSettings
from tokensidecar.backoff import Backoff, jittered
from tokensidecar.config import Config, ConfigError
from tokensidecar.metrics import CONTENT_TYPE_LATEST, exposition
from tokensidecar.serving import CertificateReloader, listen, shut_down, stop_on_signals, until_stopped
from tokensidecar.webhook.inject import InjectionSettings
from tokensidecar.webhook.metrics import WebhookMetrics
from tokensidecar.webhook.review import ReviewOutcome, review
from tokensidecar.webhook.settings import MAX_REVIEW_BYTES, SelfSignedSettings, WebhookSettings

if TYPE_CHECKING:
    from tokensidecar.gateway.policy import PolicyFile

__all__ = ["ReviewBudget", "build_app", "main", "serve"]

log = logging.getLogger(__name__)

# How often --self-signed re-checks the caBundle: a GitOps tool re-applying the
# configuration without it would otherwise break admission until the next restart.
BUNDLE_RECHECK_SECONDS = 300.0
# The API server gives a webhook timeoutSeconds (5 s in our manifest) per call; in-flight
# reviews get that long to finish after SIGTERM.
SHUTDOWN_GRACE_SECONDS = 5.0


class ReviewBudget:
    """At most ``capacity`` bytes of review bodies being read and parsed at once.

    Granted strictly in arrival order, so a large review is never starved by a stream of
    small ones. A review larger than the whole budget is charged the whole budget: it
    runs alone.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.available = capacity
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[None]:
        size = max(1, min(size, self.capacity))
        if self._waiting or size > self.available:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append((size, turn))
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._release(size)  # granted, then the client went away
                else:
                    self._grant()  # it may have been the head of the queue
                raise
        else:
            self.available -= size
        try:
            yield
        finally:
            self._release(size)

    def _release(self, size: int) -> None:
        self.available += size
        self._grant()

    def _grant(self) -> None:
        while self._waiting:
            size, turn = self._waiting[0]
            if turn.cancelled():
                self._waiting.popleft()
                continue
            if size > self.available:
                return
            self._waiting.popleft()
            self.available -= size
            turn.set_result(None)


# The registry ``/metrics`` exposes, found by the route in its application.
_METRICS = web.AppKey("metrics", WebhookMetrics)


def build_app(
    *,
    settings: InjectionSettings,
    metrics: WebhookMetrics,
    on_invalid: str = "deny",
    max_body_bytes: int = MAX_REVIEW_BYTES,
    max_inflight_bytes: int = MAX_REVIEW_BYTES,
    gateway_policy: PolicyFile | None = None,
) -> web.Application:
    """The webhook's routes: ``POST /mutate``, ``GET /healthz``, ``GET /metrics``.

    ``gateway_policy`` (``--gateway-policy``): each review is judged against the version of
    the gateway's policy in force at that moment."""
    admission = _Admission(
        settings=settings,
        metrics=metrics,
        on_invalid=on_invalid,
        max_body_bytes=max_body_bytes,
        budget=ReviewBudget(max_inflight_bytes),
        gateway_policy=gateway_policy,
    )
    app = web.Application(client_max_size=max_body_bytes)
    app[_METRICS] = metrics
    app.router.add_post("/mutate", admission.mutate)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics_page)
    return app


@dataclass(frozen=True)
class _Admission:
    """``POST /mutate``: one AdmissionReview read, answered and encoded within the budget."""

    settings: InjectionSettings
    metrics: WebhookMetrics
    on_invalid: str
    max_body_bytes: int
    budget: ReviewBudget
    gateway_policy: PolicyFile | None

    async def mutate(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        declared = request.content_length
        if declared is not None and declared > self.max_body_bytes:
            return self._too_large()  # refused before a byte of it is read
        async with self.budget.reserve(self.max_body_bytes if declared is None else declared):
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return self._too_large()
            outcome = review(body, settings=self._settings_in_force(), on_invalid=self.on_invalid)
            del body
            # Encoded inside the budget too: a large pod's patch, base64 and reply are
            # part of what parsing it costs.
            reply = web.json_response(outcome.body, status=outcome.status)
        self.metrics.admissions.labels(result=outcome.result).inc()
        self.metrics.duration.observe(time.perf_counter() - started)
        _log_outcome(outcome)
        return reply

    def _settings_in_force(self) -> InjectionSettings:
        if self.gateway_policy is None:
            return self.settings
        return dataclasses.replace(self.settings, gateway_policy=self.gateway_policy.current)

    def _too_large(self) -> web.Response:
        self.metrics.admissions.labels(result="error").inc()
        return web.json_response(
            {"error": f"the body is larger than {self.max_body_bytes} bytes"}, status=413
        )


def _log_outcome(outcome: ReviewOutcome) -> None:
    """A refused pod or a bad review at warning (someone has to look), an injection at info."""
    response = outcome.body.get("response") or {}
    if outcome.result == "error":
        log.warning(
            "admission refused" if outcome.status == 200 and not response.get("allowed") else "bad review",
            extra={"uid": response.get("uid"), "status": outcome.status, "reason": outcome.message},
        )
    elif outcome.result == "injected":
        log.info("pod injected", extra={"uid": response.get("uid")})


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _metrics_page(request: web.Request) -> web.Response:
    body = exposition(request.app[_METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class _SelfSigned:
    """--self-signed: the shared CA, this replica's serving files, and the caBundle upkeep."""

    def __init__(self, *, settings: SelfSignedSettings) -> None:
        from tokensidecar.backends import kube

        self.settings = settings
        kubernetes = KubernetesSettings.for_kubeconfig(settings.kubeconfig)
        self.api_client = kube.api_client(configuration=kubernetes.configuration)
        namespace = settings.service_namespace or kube.pod_namespace(kubeconfig=settings.kubeconfig)
        if not namespace:
            self.api_client.close()  # type: ignore[no-untyped-call]
            raise ConfigError(
                "TOKENSIDECAR_WEBHOOK_NAMESPACE", "cannot tell the webhook's namespace; set it explicitly"
            )
        self.namespace: str = namespace
        self.core = kube.core_v1(self.api_client)
        self.admission = kube.admissionregistration_v1(self.api_client)
        self.files: Any = None
        self.ca: Any = None
        self.ca_published = False

    def prepare(self) -> tuple[str, str]:
        """Shared CA + serving certificate on disk; returns (cert_file, key_file)."""
        from tokensidecar.webhook import certs

        self.ca = certs.shared_ca(
            self.core, namespace=self.namespace, secret_name=self.settings.ca_secret_name
        )
        self.files = certs.ServingFiles()
        self._issue()
        return str(self.files.cert_file), str(self.files.key_file)

    def _issue(self) -> None:
        from tokensidecar.webhook import certs

        names = certs.service_dns_names(service=self.settings.service_name, namespace=self.namespace)
        self.files.write(certs.issue_serving_cert(self.ca, dns_names=names))

    def upkeep_once(self) -> bool:
        """Renew the serving certificate when due; make sure the bundle is in place."""
        from tokensidecar.webhook import certs

        if self.files.due_for_renewal():
            self._issue()
            log.info("serving certificate re-issued", extra={"not_after": str(self.files.not_after)})
        if self.settings.ca_configmap_name and not self.ca_published:
            certs.publish_ca_certificate(
                self.core,
                namespace=self.namespace,
                name=self.settings.ca_configmap_name,
                ca_pem=self.ca.cert_pem,
            )
            self.ca_published = True
        return certs.ensure_ca_bundle(
            self.admission, name=self.settings.webhook_config_name, ca_pem=self.ca.cert_pem
        )

    async def upkeep(self) -> None:
        from tokensidecar.webhook.certs import CertificateError

        backoff = Backoff(base=1.0, cap=60.0)
        while True:
            try:
                await asyncio.to_thread(self.upkeep_once)
            except CertificateError as exc:
                delay = backoff.next_delay()
                log.warning(
                    "cannot patch the CA bundle yet", extra={"error": str(exc), "retry_in": round(delay, 1)}
                )
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            await asyncio.sleep(jittered(BUNDLE_RECHECK_SECONDS))

    def close(self) -> None:
        if self.files is not None:
            self.files.remove()
        self.api_client.close()  # type: ignore[no-untyped-call]


async def serve(webhook: WebhookSettings, *, ready: asyncio.Future[int] | None = None) -> int:
    """Run until SIGTERM/SIGINT. ``ready`` (tests) receives the bound port once serving."""
    gateway_policy = _gateway_policy(webhook.gateway_policy_file)
    metrics = WebhookMetrics()
    self_signed: _SelfSigned | None = None
    tasks: list[asyncio.Task[None]] = []
    runner: web.AppRunner | None = None
    try:
        if webhook.self_signed is not None:
            self_signed = _SelfSigned(settings=webhook.self_signed)
        pair = await _serving_pair(webhook, self_signed=self_signed)
        if pair is None:
            return 1
        reloader = CertificateReloader(
            cert_file=pair[0], key_file=pair[1], on_reload=metrics.count_certificate_reload
        )
        stop = stop_on_signals()
        app = build_app(
            settings=webhook.injection,
            metrics=metrics,
            on_invalid=webhook.on_invalid,
            max_body_bytes=webhook.max_body_bytes,
            max_inflight_bytes=webhook.max_inflight_bytes,
            gateway_policy=gateway_policy,
        )
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_SECONDS
        )
        host, port = webhook.listen
        bound = await listen(runner, host=host, port=port, ssl_context=reloader.context)
        tasks += _background_tasks(reloader=reloader, gateway_policy=gateway_policy, self_signed=self_signed)
        _log_listening(webhook, listen=f"{host}:{bound}", port=bound, self_signed=self_signed is not None)
        await until_stopped(stop, ready=ready, bound=bound)
        log.info("shutting down")
        return 0
    finally:
        await shut_down(tasks=tasks, runner=runner)
        if self_signed is not None:
            self_signed.close()


async def _serving_pair(
    webhook: WebhookSettings, *, self_signed: _SelfSigned | None
) -> tuple[str, str] | None:
    """The certificate and key files to serve: generated and shared (``--self-signed``), or
    the files given. None when the self-signed set-up failed, which is logged."""
    from tokensidecar.webhook.certs import CertificateError

    if self_signed is None:
        assert webhook.tls_cert_file is not None and webhook.tls_key_file is not None
        return webhook.tls_cert_file, webhook.tls_key_file
    try:
        return await asyncio.to_thread(self_signed.prepare)
    except CertificateError as exc:
        log.error("cannot set up the self-signed certificate", extra={"error": str(exc)})
        return None


def _log_listening(webhook: WebhookSettings, *, listen: str, port: int, self_signed: bool) -> None:
    log.info(
        "webhook listening",
        extra={
            "version": __version__,
            "listen": listen,
            "port": port,
            "certificates": "self-signed" if self_signed else "files",
            "legacy_sidecar": webhook.injection.legacy_sidecar,
            "on_invalid": webhook.on_invalid,
        },
    )


def _background_tasks(
    *, reloader: CertificateReloader, gateway_policy: PolicyFile | None, self_signed: _SelfSigned | None
) -> list[asyncio.Task[None]]:
    """What keeps the served state current while the listener runs: the certificate files,
    the gateway's policy when one is judged, and the self-signed CA bundle when it is ours."""
    tasks = [asyncio.create_task(reloader.watch(), name="certificate-reloader")]
    if gateway_policy is not None:
        tasks.append(asyncio.create_task(gateway_policy.watch(), name="gateway-policy"))
    if self_signed is not None:
        tasks.append(asyncio.create_task(self_signed.upkeep(), name="ca-bundle-upkeep"))
    return tasks


def _gateway_policy(path: str | None) -> PolicyFile | None:
    """The gateway's policy file, loaded now (a bad one is a configuration error) and kept
    current by its own watch; the gateway's module is imported only when it is used."""
    if not path:
        return None
    from tokensidecar.gateway.policy import PolicyError, PolicyFile

    try:
        return PolicyFile(Path(path))
    except PolicyError as exc:
        raise ConfigError("TOKENSIDECAR_INJECT_GATEWAY_POLICY", str(exc)) from None


def main(config: Config) -> int:
    """``tokensidecar webhook``: check the settings, then serve until SIGTERM."""
    return asyncio.run(serve(WebhookSettings.resolve(config)))

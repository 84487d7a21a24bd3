"""Wiring of ``tokensidecar run`` and ``tokensidecar once``: source → refresher → publisher,
plus the HTTP surface, and a shutdown that keeps its promise.

No refresh logic lives here; each room has its module. What does live here is how the
process ends: docs/behaviour.md promises to be gone within 5 s of SIGTERM whatever the upstreams
do. The blocking clients (hvac, the Kubernetes client) run in threads through
:func:`asyncio.to_thread`; a call stuck on an upstream that accepted the connection and
never answers (or trickles a byte every few seconds, which no read timeout catches) would
hold a worker of the default ``ThreadPoolExecutor``, and both ``asyncio.run`` and the
interpreter's exit join those workers. So ``run`` and ``once`` give the loop a
:class:`DaemonThreadExecutor`: one daemon thread per call, never joined. Cancelling the
await abandons the call; its thread dies with the process. Every shutdown step then gets
what is left of one budget counted from the signal, not a fixed timeout of its own. When
calls are still stuck at the end, the process leaves with ``os._exit`` after flushing the
logs: finalizing the interpreter while a daemon thread sits in a C-level socket read can
abort it (SIGABRT, seen here with the Kubernetes client against a trickling server), and
there is nothing left to clean up — the token file stays by design.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from tokensidecar import __version__
from tokensidecar.backends.verify import Verifier, build_verifier
from tokensidecar.config import Config
from tokensidecar.sidecar.metrics import SidecarMetrics
from tokensidecar.sidecar.notify import Notifier
from tokensidecar.sidecar.publish import Publisher
from tokensidecar.sidecar.refresh import Refresher, RefreshFailed, close_upstreams
from tokensidecar.sidecar.settings import SidecarSettings
from tokensidecar.sources import Source, build_source

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["Sidecar", "main_once", "main_run"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Kubernetes waits terminationGracePeriodSeconds (30 s by default) after SIGTERM; we
# promise to be gone within 5 s (docs/behaviour.md). This is the budget from the signal to the
# end of the event loop, which leaves a second for the interpreter to exit. Within it:
# stopping the refresh loop (at most 1 s), closing the source, i.e. revoking a Vault
# login (what is left but 0.5 s), stopping the HTTP server (the last 0.5 s).
SHUTDOWN_SECONDS = 4.0
REFRESH_STOP_SECONDS = 1.0
HTTP_STOP_SECONDS = 0.5

# Publish first, serve second: importing aiohttp (which builds TLS contexts at import)
# takes ~0.2 s, and a token on disk matters more than a probe port a moment earlier —
# the startupProbe polls every second anyway. Serving starts after the first refresh,
# or after this long if the source is slow.
FIRST_TOKEN_HEAD_START_SECONDS = 2.0

# ``once`` (an init container) has no SIGTERM to answer, but the pod waits on its exit: a
# Vault that hangs while the login token is revoked must not hold it past this. The
# login then ends at its TTL, as after a hung revocation in ``run``.
ONCE_CLOSE_SECONDS = 2.0


@dataclass
class Sidecar:
    source: Source
    verifier: Verifier | None
    refresher: Refresher

    @classmethod
    def from_config(cls, config: Config) -> Sidecar:
        """Resolve the settings and build every part; raises ConfigError before anything starts."""
        return cls.from_settings(SidecarSettings.resolve(config))

    @classmethod
    def from_settings(cls, settings: SidecarSettings) -> Sidecar:
        source = build_source(settings.source)
        verifier = build_verifier(settings.verify)
        metrics = SidecarMetrics(source=source.kind)
        publisher = Publisher(token_path=settings.token_file, mode=settings.file_mode)
        notify = settings.notify
        refresher = Refresher(
            source=source,
            publisher=publisher,
            metrics=metrics,
            verifier=verifier,
            notifier=None if notify is None else Notifier.from_settings(notify, metrics=metrics),
            refresh_interval=settings.refresh_interval,
            max_backoff=settings.max_backoff,
            on_hub_outage=settings.on_hub_outage,
        )
        return cls(source=source, verifier=verifier, refresher=refresher)

    async def aclose(self) -> None:
        await close_upstreams(source=self.source, verifier=self.verifier)


class DaemonThreadExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs each call in a new daemon thread, and never waits for one on shutdown.

    A ``ThreadPoolExecutor`` in type only (``loop.set_default_executor`` accepts nothing
    else); none of its pool machinery is used. A thread per call costs ~0.1 ms, nothing
    next to a Vault or API request, and a sidecar makes a few per minute.
    """

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="tokensidecar-call")
        self._lock = threading.Lock()
        self._running = 0

    @property
    def busy(self) -> int:
        """How many calls are still running (abandoned ones included)."""
        with self._lock:
            return self._running

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            try:
                if not future.set_running_or_notify_cancel():
                    return
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            finally:
                with self._lock:
                    self._running -= 1

        with self._lock:
            self._running += 1
        name = f"tokensidecar-call-{getattr(fn, '__name__', 'fn')}"
        threading.Thread(target=call, name=name, daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to join: a call still running is abandoned with its daemon thread."""


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        # Not a configuration error (exit 2): the same setting works once the port is free.
        reason = (exc.strerror or str(exc)).lower()
        raise OSError(exc.errno, f"cannot listen on {host}:{port} (TOKENSIDECAR_LISTEN): {reason}") from None
    listener.listen(128)
    listener.setblocking(False)
    return listener


class _StopSignal:
    """SIGTERM or SIGINT, and the loop time the first one came: the shutdown budget is
    counted from the signal, not from when the loop got round to noticing it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.event = asyncio.Event()
        self.at: float | None = None
        self._loop = loop
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._received)

    def _received(self) -> None:
        if not self.event.is_set():
            self.at = self._loop.time()
            self.event.set()

    def deadline(self) -> float:
        """When the event loop must be done: the budget from the signal (or from now, when
        the loop ended without one)."""
        return (self.at if self.at is not None else self._loop.time()) + SHUTDOWN_SECONDS


async def _run(settings: SidecarSettings, *, executor: DaemonThreadExecutor) -> int:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(executor)
    sidecar = Sidecar.from_settings(settings)
    refresher = sidecar.refresher
    await asyncio.to_thread(refresher.publisher.prepare)
    stop = _StopSignal(loop)
    # Bind the probe port before anything else, so a taken port fails the start at once.
    host, port = settings.listen
    listener = _bind(host, port)
    loop_task = asyncio.create_task(refresher.run(), name="refresh-loop")
    stop_task = asyncio.create_task(stop.event.wait())
    await _head_start(refresher, stop_task=stop_task)
    runner = await _serve_probes(listener, refresher=refresher, loop_task=loop_task)
    _log_started(settings, listen=f"{host}:{listener.getsockname()[1]}")
    try:
        await asyncio.wait({loop_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _outlive_a_dead_loop(loop_task, stop=stop.event)
        deadline = stop.deadline()
        log.info("shutting down")
        stop_task.cancel()
        await _shutdown(loop_task, sidecar=sidecar, runner=runner, deadline=deadline)
    log.info("stopped")
    return 0


async def _head_start(refresher: Refresher, *, stop_task: asyncio.Task[Any]) -> None:
    """Give the first refresh up to ``FIRST_TOKEN_HEAD_START_SECONDS`` before serving (see
    there): a token on disk comes before the probe port; a signal ends the wait too."""
    first_attempt = asyncio.create_task(refresher.first_attempt.wait())
    await asyncio.wait(
        {first_attempt, stop_task},
        timeout=FIRST_TOKEN_HEAD_START_SECONDS,
        return_when=asyncio.FIRST_COMPLETED,
    )
    first_attempt.cancel()


async def _serve_probes(
    listener: socket.socket, *, refresher: Refresher, loop_task: asyncio.Task[None]
) -> web.AppRunner:
    """Serve /healthz, /readyz, /metrics and /status on the bound ``listener``; the runner.

    aiohttp is imported only now, after the head start, since importing it takes a while."""
    from aiohttp import web

    from tokensidecar.sidecar.server import build_app

    runner = web.AppRunner(build_app(refresher=refresher, loop_task=loop_task), access_log=None)
    await runner.setup()
    await web.SockSite(runner, listener, shutdown_timeout=HTTP_STOP_SECONDS).start()
    return runner


def _log_started(settings: SidecarSettings, *, listen: str) -> None:
    """The one line that says what this sidecar reads, where it publishes and serves."""
    log.info(
        "tokensidecar started",
        extra={
            "version": __version__,
            "source": settings.source.kind,
            "token_file": settings.token_file,
            "listen": listen,
            "verify": settings.verify.mode,
        },
    )


async def _outlive_a_dead_loop(loop_task: asyncio.Task[None], *, stop: asyncio.Event) -> None:
    """When the refresh loop died, say why and keep serving /healthz=500 until the kubelet
    restarts us (SIGTERM); a loop that ended any other way returns at once."""
    if loop_task.done() and not loop_task.cancelled() and loop_task.exception() is not None:
        log.error("refresh loop died", exc_info=loop_task.exception())
        await stop.wait()


async def _shutdown(loop_task: asyncio.Task[None], *, sidecar: Sidecar, runner: Any, deadline: float) -> None:
    """Stop the refresh loop, close the source (revoke a Vault login), stop serving —
    each within what is left of the budget. Upstream calls still running are abandoned."""
    loop = asyncio.get_running_loop()

    def left(cap: float, *, keep: float = 0.0) -> float:
        return max(0.0, min(cap, deadline - keep - loop.time()))

    loop_task.cancel()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
        await asyncio.wait_for(loop_task, timeout=left(REFRESH_STOP_SECONDS, keep=HTTP_STOP_SECONDS))
    await _close_within(sidecar, seconds=left(SHUTDOWN_SECONDS, keep=HTTP_STOP_SECONDS))
    with contextlib.suppress(Exception):
        await asyncio.wait_for(runner.cleanup(), timeout=max(left(HTTP_STOP_SECONDS), 0.1))


async def _once(settings: SidecarSettings, *, executor: DaemonThreadExecutor) -> int:
    asyncio.get_running_loop().set_default_executor(executor)
    sidecar = Sidecar.from_settings(settings)
    try:
        await asyncio.to_thread(sidecar.refresher.publisher.prepare)
        token = await sidecar.refresher.fetch_and_publish()
    except RefreshFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if exc.config_error else 1
    finally:
        await _close_within(sidecar, seconds=ONCE_CLOSE_SECONDS)
    log.info(
        "token published",
        extra={"fingerprint": token.fingerprint, "token_file": settings.token_file},
    )
    return 0


async def _close_within(sidecar: Sidecar, *, seconds: float) -> None:
    """Close the source (revoke a Vault login) and the verifier, giving up after ``seconds``."""
    try:
        await asyncio.wait_for(sidecar.aclose(), timeout=seconds)
    except TimeoutError:
        log.warning("closing the source took too long; abandoned (a Vault login ends at its TTL)")
    except Exception:
        log.debug("closing the source failed", exc_info=True)


def _leave(code: int, *, executor: DaemonThreadExecutor) -> int:
    """Return the exit code, or leave at once when calls abandoned at the end are still
    stuck upstream: never finalize the interpreter under them (see the module docstring)."""
    if executor.busy:
        logging.shutdown()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    return code


def main_run(config: Config) -> int:
    settings = SidecarSettings.resolve(config)
    executor = DaemonThreadExecutor()
    return _leave(asyncio.run(_run(settings, executor=executor)), executor=executor)


def main_once(config: Config) -> int:
    settings = SidecarSettings.resolve(config)
    executor = DaemonThreadExecutor()
    return _leave(asyncio.run(_once(settings, executor=executor)), executor=executor)

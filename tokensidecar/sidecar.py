"""Wiring of ``tokensidecar run`` and ``tokensidecar once``: source → refresher → publisher,
plus the HTTP surface. No logic of its own lives here; each room has its module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from dataclasses import dataclass

from tokensidecar import __version__
from tokensidecar.config import Config, sidecar_settings
from tokensidecar.metrics import SidecarMetrics
from tokensidecar.notify import Notifier
from tokensidecar.publish import Publisher
from tokensidecar.refresh import Refresher, RefreshFailed
from tokensidecar.sources import Source, build_source
from tokensidecar.verify import Verifier, build_verifier

__all__ = ["SETTINGS", "Sidecar", "main_once", "main_run"]

log = logging.getLogger(__name__)

SETTINGS = sidecar_settings()

# Kubernetes waits terminationGracePeriodSeconds (30 s by default) after SIGTERM; we
# promise to be gone within 5 s (docs/behaviour.md), leaving time to revoke a Vault login.
SHUTDOWN_SECONDS = 4.0

# Publish first, serve second: importing aiohttp (which builds TLS contexts at import)
# takes ~0.2 s, and a token on disk matters more than a probe port a moment earlier —
# the startupProbe polls every second anyway. Serving starts after the first refresh,
# or after this long if the source is slow.
FIRST_TOKEN_HEAD_START_SECONDS = 2.0


@dataclass
class Sidecar:
    source: Source
    verifier: Verifier | None
    refresher: Refresher

    @classmethod
    def from_config(cls, config: Config) -> Sidecar:
        """Build every part; raises ConfigError before anything starts."""
        source = build_source(config)
        verifier = build_verifier(config)
        metrics = SidecarMetrics(source=source.kind)
        publisher = Publisher(token_path=config.token_file, mode=config.file_mode)
        refresher = Refresher(
            source=source,
            publisher=publisher,
            metrics=metrics,
            verifier=verifier,
            notifier=Notifier.from_config(config, metrics=metrics),
            refresh_interval=config.refresh_interval,
            max_backoff=config.max_backoff,
            on_hub_outage=config.verify_on_hub_outage,
        )
        return cls(source=source, verifier=verifier, refresher=refresher)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.source.aclose()
        if self.verifier is not None:
            with contextlib.suppress(Exception):
                await self.verifier.aclose()


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


async def _run(config: Config) -> int:
    sidecar = Sidecar.from_config(config)
    refresher = sidecar.refresher
    await asyncio.to_thread(refresher.publisher.prepare)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    # Bind the probe port before anything else, so a taken port fails the start at once.
    host, port = config.listen
    listener = _bind(host, port)
    loop_task = asyncio.create_task(refresher.run(), name="refresh-loop")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(refresher.first_attempt.wait(), timeout=FIRST_TOKEN_HEAD_START_SECONDS)

    from aiohttp import web

    from tokensidecar.server import build_app

    runner = web.AppRunner(build_app(refresher=refresher, loop_task=loop_task), access_log=None)
    await runner.setup()
    await web.SockSite(runner, listener, shutdown_timeout=1.0).start()
    bound = listener.getsockname()[1]
    log.info(
        "tokensidecar started",
        extra={
            "version": __version__,
            "source": config.source,
            "token_file": str(config.token_file),
            "listen": f"{host}:{bound}",
            "verify": config.verify,
        },
    )
    stop_task = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({loop_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if loop_task.done() and not loop_task.cancelled() and loop_task.exception() is not None:
            log.error("refresh loop died", exc_info=loop_task.exception())
            # Keep serving /healthz=500 until the kubelet restarts us.
            await stop.wait()
        log.info("shutting down")
        loop_task.cancel()
        stop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(loop_task, timeout=1.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sidecar.aclose(), timeout=SHUTDOWN_SECONDS - 1.5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(runner.cleanup(), timeout=1.0)
    log.info("stopped")
    return 0


async def _once(config: Config) -> int:
    sidecar = Sidecar.from_config(config)
    try:
        await asyncio.to_thread(sidecar.refresher.publisher.prepare)
        token = await sidecar.refresher.fetch_and_publish()
    except RefreshFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await sidecar.aclose()
    log.info(
        "token published",
        extra={"fingerprint": token.fingerprint, "token_file": str(config.token_file)},
    )
    return 0


def main_run(config: Config) -> int:
    return asyncio.run(_run(config))


def main_once(config: Config) -> int:
    return asyncio.run(_once(config))

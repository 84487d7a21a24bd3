"""The sidecar's HTTP surface: probes, metrics and status (docs/behaviour.md, HTTP endpoints).

Small on purpose — it only reads the refresher's state. ``/readyz`` is what the native
sidecar's startupProbe polls, so later init containers (KServe's storage-initializer)
start only once a token is on disk.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from tokensidecar import __version__
from tokensidecar.metrics import CONTENT_TYPE_LATEST, exposition

if TYPE_CHECKING:
    from tokensidecar.sidecar.refresh import Refresher

__all__ = ["build_app"]


def build_app(*, refresher: Refresher, loop_task: asyncio.Task[None] | None = None) -> web.Application:
    """``loop_task`` is the refresh loop; /healthz fails once it has died."""

    async def healthz(_: web.Request) -> web.Response:
        if loop_task is not None and loop_task.done():
            return web.json_response({"status": "refresh loop stopped"}, status=500)
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ready, reason = refresher.state.readiness()
        refresher.metrics.ready.set(1 if ready else 0)
        return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        refresher.update_ready()  # expiry can pass between refreshes
        body = exposition(refresher.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status(_: web.Request) -> web.Response:
        document = refresher.state.status()
        document["tokensidecar_version"] = __version__
        return web.json_response(document)

    app = web.Application(client_max_size=1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    return app

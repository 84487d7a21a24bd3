"""How the long-running HTTP servers (the webhook and the gateway) start listening and stop.

Both are an aiohttp ``AppRunner`` beside a few background tasks (a certificate watch, a
policy watch, the CA bundle upkeep), both stop on SIGTERM from the kubelet, and both must
stop the same way: the background tasks first, so none of them touches a part the cleanup
is about to close, then the runner, which stops accepting and gives in-flight requests
its ``shutdown_timeout``. One copy of that order, here, where neither server imports the
other to use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import Iterable

from aiohttp import web

__all__ = ["listen", "shut_down", "stop_on_signals", "until_stopped"]


def stop_on_signals() -> asyncio.Event:
    """An event that SIGTERM (the kubelet stopping the pod) or SIGINT sets.

    Installed before anything starts, so a signal that arrives during start-up still ends
    in the clean stop rather than Python's default of dying mid-way."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def listen(runner: web.AppRunner, *, host: str, port: int, ssl_context: ssl.SSLContext | None) -> int:
    """Set the runner up and open its listener; the port bound (``port`` 0 picks a free one)."""
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    return runner.addresses[0][1] if runner.addresses else port


async def until_stopped(stop: asyncio.Event, *, ready: asyncio.Future[int] | None, bound: int) -> None:
    """Tell a waiting caller (tests) the bound port, then serve until ``stop`` is set."""
    if ready is not None and not ready.done():
        ready.set_result(bound)
    await stop.wait()


async def shut_down(*, tasks: Iterable[asyncio.Task[None]], runner: web.AppRunner | None) -> None:
    """Cancel the background tasks and wait until each has ended, then clean the runner up.

    A task that failed or does not take its cancellation quietly must not keep the runner,
    and whatever the caller closes after it, from being cleaned up."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    if runner is not None:
        await runner.cleanup()

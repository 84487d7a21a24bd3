"""How the long-running HTTP servers (the webhook and the gateway) serve TLS, start and stop.

Both are an aiohttp ``AppRunner`` beside a few background tasks (a certificate watch, a
policy watch, the CA bundle upkeep), both stop on SIGTERM from the kubelet, and both must
stop the same way: the background tasks first, so none of them touches a part the cleanup
is about to close, then the runner, which stops accepting and gives in-flight requests
its ``shutdown_timeout``. One copy of that order, here, where neither server imports the
other to use it.

Both serve certificates that change under them, too: kubelet updates a Secret volume by
swapping a ``..data`` symlink, cert-manager renews before expiry, and the webhook's
``--self-signed`` re-issues its own. :class:`CertificateReloader` ``stat``\\ s the files
(following symlinks, so the swap shows as a new inode) and calls ``load_cert_chain`` on
the live ``SSLContext``: new handshakes use the new pair, open connections finish on the
old one, nothing restarts. A pair that does not load (half-written, key/cert mismatch) is
logged and retried; the old one keeps serving. Each server counts the reloads its own way
(the webhook in a metric), through the reloader's ``on_reload`` callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

from tokensidecar.config import ConfigError
from tokensidecar.redact import safe_error

__all__ = ["CertificateReloader", "listen", "shut_down", "stop_on_signals", "until_stopped"]

log = logging.getLogger(__name__)

# How often the certificate files are stat()ed. Two stat calls a second cost nothing,
# and kubelet itself takes 60-90 s to propagate a Secret change.
RELOAD_INTERVAL_SECONDS = 1.0


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


def _tls_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    return context


@dataclass(frozen=True)
class _FileState:
    resolved: str
    inode: int
    mtime_ns: int
    size: int


class CertificateReloader:
    """One live ``SSLContext`` whose certificate follows the files on disk.

    ``on_reload`` hears the result of each load after the first: ``"success"`` or
    ``"failure"`` (the first load's failure is a :class:`ConfigError` instead)."""

    def __init__(
        self, *, cert_file: str, key_file: str, on_reload: Callable[[str], None] | None = None
    ) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.on_reload = on_reload
        self.context = _tls_context()
        self._loaded: tuple[_FileState, ...] | None = None
        self._failed: tuple[_FileState, ...] | None = None
        try:
            state = self._state()
            self.context.load_cert_chain(certfile=cert_file, keyfile=key_file)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(
                "TOKENSIDECAR_TLS_CERT_FILE", f"cannot load {cert_file} with its key: {safe_error(exc)}"
            ) from None
        self._loaded = state

    def _state(self) -> tuple[_FileState, ...]:
        states = []
        for path in (self.cert_file, self.key_file):
            # stat() follows symlinks: kubelet's ..data swap shows up as a new inode.
            info = os.stat(path)
            states.append(_FileState(os.path.realpath(path), info.st_ino, info.st_mtime_ns, info.st_size))
        return tuple(states)

    def reload_if_changed(self) -> bool:
        """Load the pair again if either file changed; True when a new pair is in use."""
        try:
            state = self._state()
        except OSError:
            return False  # mid-swap or removed: keep serving the loaded pair
        if state in (self._loaded, self._failed):
            return False
        try:
            self.context.load_cert_chain(certfile=self.cert_file, keyfile=self.key_file)
        except (ssl.SSLError, OSError, ValueError) as exc:
            self._failed = state
            self._reloaded("failure")
            log.warning(
                "the new certificate does not load; still serving the previous one",
                extra={"cert_file": self.cert_file, "error": safe_error(exc)},
            )
            return False
        self._loaded, self._failed = state, None
        self._reloaded("success")
        log.info("serving certificate reloaded", extra={"cert_file": self.cert_file})
        return True

    def _reloaded(self, result: str) -> None:
        if self.on_reload is not None:
            self.on_reload(result)

    async def watch(self, *, interval: float = RELOAD_INTERVAL_SECONDS) -> None:
        """Look at the files every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()

"""Telling the model server that a new token is on disk (optional; docs/behaviour.md).

Most predictors need nothing — huggingface_hub re-reads ``HF_TOKEN_PATH`` on every Hub
request. Servers that cache the token at start can be sent a signal (found by process
name, which needs ``shareProcessNamespace: true`` in the pod) or an HTTP POST whose body
is ``token.json`` (fingerprint and times, never the token). A failed notification is
logged and counted; it never undoes a publish.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokensidecar.redact import safe_error

if TYPE_CHECKING:
    from tokensidecar.sidecar.metrics import SidecarMetrics
    from tokensidecar.sidecar.settings import NotifySettings

__all__ = ["Notifier", "find_processes"]

log = logging.getLogger(__name__)

NOTIFY_TIMEOUT_SECONDS = 5.0


def find_processes(names: set[str], *, proc: Path = Path("/proc")) -> list[int]:
    """PIDs whose command name (``comm``) or argv[0] basename is in ``names``."""
    found: list[int] = []
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            continue  # the process ended while we looked
        if comm in names or os.path.basename(argv0) in names:
            found.append(int(entry.name))
    return found


class Notifier:
    def __init__(
        self,
        *,
        metrics: SidecarMetrics,
        signal_number: int | None = None,
        process_names: set[str] | None = None,
        url: str | None = None,
    ) -> None:
        self.metrics = metrics
        self.signal_number = signal_number
        self.process_names = process_names or set()
        self.url = url

    @classmethod
    def from_settings(cls, settings: NotifySettings, *, metrics: SidecarMetrics) -> Notifier:
        return cls(
            metrics=metrics,
            signal_number=settings.signal_number,
            process_names=set(settings.process_names),
            url=settings.url,
        )

    async def notify(self, metadata: dict[str, Any]) -> None:
        if self.signal_number is not None and self.process_names:
            self._signal()
        if self.url:
            await self._post(metadata)

    def _signal(self) -> None:
        assert self.signal_number is not None
        pids = find_processes(self.process_names)
        if not pids:
            self.metrics.notify_failures.labels(kind="signal").inc()
            log.warning("no process to notify", extra={"process_names": sorted(self.process_names)})
        for pid in pids:
            try:
                os.kill(pid, self.signal_number)
                log.info(
                    "notified process", extra={"pid": pid, "signal": signal.Signals(self.signal_number).name}
                )
            except OSError as exc:
                self.metrics.notify_failures.labels(kind="signal").inc()
                log.warning("could not signal process", extra={"pid": pid, "error": safe_error(exc)})

    async def _post(self, metadata: dict[str, Any]) -> None:
        import aiohttp

        assert self.url is not None
        try:
            timeout = aiohttp.ClientTimeout(total=NOTIFY_TIMEOUT_SECONDS)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(self.url, json=metadata) as response,
            ):
                if response.status >= 400:
                    raise RuntimeError(f"HTTP {response.status}")
        except (TimeoutError, aiohttp.ClientError, RuntimeError) as exc:
            self.metrics.notify_failures.labels(kind="http").inc()
            log.warning("notify URL failed", extra={"error": safe_error(exc)})

"""Predictor-side helper for servers that read the Hugging Face token once and cache it.

Most model servers need nothing from tokensidecar: huggingface_hub re-reads
``HF_TOKEN_PATH`` on every Hub request (as long as ``HF_TOKEN`` is unset, because it wins).
A server that copies the token into its own client at start-up, though, keeps the old one
after a rotation. For those, :func:`watch_token` calls back with each new token::

    from tokensidecar.client import watch_token
    watch_token("/var/run/tokensidecar/token", lambda token: my_client.set_token(token))

This module imports nothing beyond the standard library, so it is cheap to import into any
predictor. It polls ``os.stat`` of the path (a few microseconds) instead of using inotify:
the sidecar publishes by renaming a new file over the old one, and a rename is seen by a
stat of the path on every filesystem, including the memory-backed emptyDir it lives on.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["TokenWatch", "read_token", "watch_token"]

log = logging.getLogger(__name__)

DEFAULT_TOKEN_PATH = "/var/run/tokensidecar/token"
POLL_SECONDS = 1.0


def read_token(path: str | os.PathLike[str] = DEFAULT_TOKEN_PATH) -> str | None:
    """The token currently published at ``path`` (stripped), or None when there is none yet."""
    try:
        token = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


class TokenWatch:
    """A running watch; :meth:`stop` ends it (also usable as a context manager)."""

    def __init__(
        self,
        *,
        path: str | os.PathLike[str],
        callback: Callable[[str], object],
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.path = Path(path)
        self.callback = callback
        self.poll_seconds = poll_seconds
        self._stopped = threading.Event()
        self._last: str | None = None
        self._seen: tuple[int, int, int] | None = None
        self._thread = threading.Thread(target=self._run, name="tokensidecar-watch", daemon=True)

    def start(self, *, call_now: bool = True) -> TokenWatch:
        # Take the file's signature before reading it, so a rotation that lands while the
        # first callback runs is still seen as a change by the thread.
        self._seen = self._signature()
        if call_now:
            self._check()
        else:
            self._last = read_token(self.path)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stopped.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> TokenWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _check(self) -> None:
        token = read_token(self.path)
        if token is None or token == self._last:
            return
        self._last = token
        try:
            self.callback(token)
        except Exception as exc:
            # A failing callback must not end the watch: the next rotation calls it again.
            # Only the exception's type is logged: its text could quote the token.
            log.error("token watch callback failed: %s", type(exc).__name__)

    def _run(self) -> None:
        while not self._stopped.wait(self.poll_seconds):
            signature = self._signature()
            if signature != self._seen:
                self._seen = signature
                self._check()


def watch_token(
    path: str | os.PathLike[str],
    callback: Callable[[str], object],
    *,
    poll_seconds: float = POLL_SECONDS,
    call_now: bool = True,
) -> TokenWatch:
    """Call ``callback(token)`` now (if a token is published) and after every change.

    Returns the running :class:`TokenWatch`; call ``.stop()`` to end it. The watch runs in a
    daemon thread, so it never keeps a server from exiting.
    """
    return TokenWatch(path=path, callback=callback, poll_seconds=poll_seconds).start(call_now=call_now)

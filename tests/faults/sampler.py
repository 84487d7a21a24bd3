"""A reader that watches the token file from outside, as huggingface_hub would read it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

__all__ = ["FileSampler"]


class FileSampler:
    """Reads the token file in a tight loop (every ``interval`` seconds) in a thread.

    ``seen`` lists every value read in order. Before the first token is published a missing
    file is expected and not recorded; after it, a missing file is recorded as ``None``,
    because docs/behaviour.md (the token file) promises the file never goes missing or empty once published.
    """

    def __init__(self, path: Path, *, interval: float = 0.001) -> None:
        self.path = path
        self.interval = interval
        self.seen: list[str | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="token-file-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.seen.append(self.path.read_text())
            except FileNotFoundError:
                if self.seen:
                    self.seen.append(None)
            time.sleep(self.interval)

    def assert_only(self, values: list[str], *, in_order: bool = True) -> None:
        """Every read was one of ``values`` (never empty or missing), and, with ``in_order``,
        no older value came back after a newer one."""
        assert self.seen, "the sampler never saw a token"
        assert None not in self.seen, "the token file went missing after the first publish"
        assert "" not in self.seen, "the token file was empty"
        unknown = set(self.seen) - set(values)
        assert not unknown, f"{len(unknown)} value(s) on disk that were never meant to be published"
        if in_order:
            order = [values.index(value) for value in self.seen if value is not None]
            assert order == sorted(order), "an older token came back after a newer one"

    def __enter__(self) -> FileSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

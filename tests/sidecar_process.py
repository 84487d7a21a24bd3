"""Run the real ``tokensidecar`` CLI as a subprocess and watch it from outside.

End-to-end tests drive the sidecar the way kubelet does: environment variables in, the
token file and the HTTP endpoints out. Use :class:`SidecarProcess` as a context manager;
it picks a free port, waits for ``/healthz``, and on exit sends SIGTERM and collects the
logs (``.logs``) so a test can assert that no secret was ever printed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["SidecarProcess", "free_port", "hub_file_sidecar", "wait_for"]


def hub_file_sidecar(*, hub_url: str, directory: Path, **env: str) -> tuple[SidecarProcess, Path]:
    """A sidecar (not started) reading the file source ``<directory>/source/token`` and
    verifying each token at the Hub ``hub_url`` (whoami, backoff capped at 1 s), ``env`` on
    top; publishes to ``<directory>/out/token``. Returns it and the source file to write."""
    source_file = directory / "source" / "token"
    source_file.parent.mkdir()
    (directory / "out").mkdir()
    sidecar = SidecarProcess(
        token_file=directory / "out" / "token",
        env={
            "TOKENSIDECAR_SOURCE": "file",
            "TOKENSIDECAR_SOURCE_FILE": str(source_file),
            "HF_ENDPOINT": hub_url,
            "TOKENSIDECAR_VERIFY": "whoami",
            "TOKENSIDECAR_MAX_BACKOFF": "1s",
            **env,
        },
    )
    return sidecar, source_file


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until ``predicate()`` is truthy; return its value or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)


class SidecarProcess:
    def __init__(
        self,
        *,
        token_file: Path,
        env: Mapping[str, str],
        command: str = "run",
        args: list[str] | None = None,
    ) -> None:
        self.token_file = Path(token_file)
        self.port = free_port()
        self.command = command
        self.args = args or []
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("TOKENSIDECAR_", "VAULT_", "HF_"))},
            "TOKENSIDECAR_LISTEN": f"127.0.0.1:{self.port}",
            "TOKENSIDECAR_TOKEN_FILE": str(self.token_file),
            "TOKENSIDECAR_VERIFY": "none",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.logs = ""
        self._log_path = self.token_file.parent.parent / f"sidecar-{self.port}.log"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> SidecarProcess:
        self._log_file = open(self._log_path, "wb")  # noqa: SIM115 - closed in stop()
        # Benchmarks run the sidecar from a runtime-only virtualenv (see bench/common.py).
        python = os.environ.get("BENCH_SIDECAR_PYTHON") or sys.executable
        self.process = subprocess.Popen(
            [python, "-m", "tokensidecar", self.command, *self.args],
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._alive_and_listening, timeout=15)
        return self

    def _alive_and_listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"sidecar exited with {self.process.returncode}: {self.read_logs()}")
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    def stop(self, *, timeout: float = 10.0) -> int:
        """SIGTERM, wait, return the exit code (SIGKILL if it does not stop)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
        self.logs = self.read_logs()
        return self.process.returncode

    def terminate_within(self, seconds: float) -> tuple[int, float]:
        """SIGTERM, then wait at most ``seconds`` for the process to exit by itself; returns
        its exit code and the seconds it took (AssertionError if it is still running)."""
        assert self.process is not None
        sent = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {seconds:g} s after SIGTERM") from None
        return code, time.monotonic() - sent

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def read_logs(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> SidecarProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None:
            self.stop()

    # -- observation -------------------------------------------------------------------

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def status(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.get("/status")[1])
        return document

    def metric(self, name: str, labels: str = "") -> float | None:
        """Value of one series from /metrics, e.g. metric("tokensidecar_rotations_total",
        'result="success"'); None when absent."""
        prefix = f"{name}{{{labels}}}" if labels else name
        for line in self.get("/metrics")[1].splitlines():
            if line.startswith(prefix + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def token(self) -> str | None:
        try:
            return self.token_file.read_text().strip()
        except FileNotFoundError:
            return None

    def wait_for_token(self, value: str, *, timeout: float = 10.0) -> float:
        """Wait until the token file holds ``value``; return the seconds it took."""
        started = time.monotonic()
        wait_for(lambda: self.token() == value, timeout=timeout, interval=0.005)
        return time.monotonic() - started

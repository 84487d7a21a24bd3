"""The real ``tokensidecar webhook`` command in a subprocess, started and stopped one way.

The command tests (tests/webhook/test_server.py), the flood fault tests and
``bench/webhook.py --flood`` (through tests/faults/webhook_flood.py) all run the shipped
command rather than the app in-process, so that what they see is what a pod runs: settings
from the environment, the JSON log on stderr, SIGTERM handling. :func:`webhook_command`
is that lifecycle: the environment holds no ``TOKENSIDECAR_`` variable but the ones given,
the port is read from the ``webhook listening`` log line (``127.0.0.1:0`` picks a free one),
stderr is drained into :attr:`WebhookProcess.stderr_lines` so the pipe never fills, and on
the way out the process gets SIGTERM (killed if it has not exited within 10 s).
:func:`webhook_command_exit` runs it to its own exit, for the settings it refuses.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = ["WebhookProcess", "read_listening_port", "webhook_command", "webhook_command_exit"]


@dataclass
class WebhookProcess:
    process: subprocess.Popen[str]
    port: int
    ca_file: pathlib.Path
    stderr_lines: list[str]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def peak_rss_bytes(self) -> int:
        """The kernel's high-water mark of the process's resident set."""
        return _status_kib(self.process.pid, "VmHWM") * 1024

    def rss_bytes(self) -> int:
        return _status_kib(self.process.pid, "VmRSS") * 1024

    def alive(self) -> bool:
        return self.process.poll() is None


def _status_kib(pid: int, field: str) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/{pid}/status")


def read_listening_port(
    process: subprocess.Popen[str], *, timeout: float = 20.0, seen: list[str] | None = None
) -> int:
    """Read the webhook's JSON log lines until "webhook listening"; ``seen`` collects them."""
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    seen = [] if seen is None else seen
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            if process.poll() is not None:
                raise AssertionError(f"webhook exited {process.returncode}: {''.join(seen)}")
            continue
        seen.append(line)
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == "webhook listening":
            return int(entry["port"])
    raise AssertionError(f"webhook did not start: {''.join(seen)}")


@contextlib.contextmanager
def webhook_command(
    *,
    cert_file: pathlib.Path,
    key_file: pathlib.Path,
    ca_file: pathlib.Path,
    env: Mapping[str, str] | None = None,
    python: str = sys.executable,
) -> Iterator[WebhookProcess]:
    """``python -m tokensidecar webhook`` serving TLS with ``cert_file``/``key_file`` on a
    free loopback port, ``env`` on top; yields it once it listens, stops it on the way out."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSIDECAR_")}
    child_env.update(
        TOKENSIDECAR_WEBHOOK_LISTEN="127.0.0.1:0",
        TOKENSIDECAR_TLS_CERT_FILE=str(cert_file),
        TOKENSIDECAR_TLS_KEY_FILE=str(key_file),
    )
    child_env.update(env or {})
    process = subprocess.Popen(
        [python, "-m", "tokensidecar", "webhook"], env=child_env, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    drain = threading.Thread(target=_drain, args=(process, lines), daemon=True)
    try:
        port = read_listening_port(process, seen=lines)
        drain.start()
        yield WebhookProcess(process=process, port=port, ca_file=ca_file, stderr_lines=lines)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if drain.is_alive():
            drain.join(timeout=5)
        assert process.stderr is not None
        process.stderr.close()


def webhook_command_exit(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the command with ``env`` (and no other ``TOKENSIDECAR_`` variable) until it
    exits by itself, as it does on a configuration error; its stderr is captured."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSIDECAR_")}
    child_env.update({"TOKENSIDECAR_WEBHOOK_LISTEN": "127.0.0.1:0", **env})
    return subprocess.run(
        [sys.executable, "-m", "tokensidecar", "webhook"],
        check=False,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _drain(process: subprocess.Popen[str], lines: list[str]) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        lines.append(line)

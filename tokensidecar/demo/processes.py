"""What both flows of the demo do with the processes they start: a port, a wait, a stop.

The sidecar flow (:mod:`tokensidecar.demo.run`) and the gateway flow
(:mod:`tokensidecar.demo.gateway_flow`) each run ``tokensidecar`` as a child process, wait
for it to reach a state they can observe (a token on disk, a metric), and stop it the way
the kubelet would. One copy of each, so both flows measure and stop alike.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

__all__ = ["free_port", "stop_process", "wait_until"]

# How long a child gets between SIGTERM and SIGKILL (the kubelet's default is 30 s; the
# demo's processes hold no downloads worth waiting that long for).
STOP_TIMEOUT_SECONDS = 10


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, for a child process to bind."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float) -> bool:
    """Poll ``predicate`` every ``interval`` seconds; True once it holds, False after ``timeout``
    (checked one last time at the deadline). ``interval`` bounds how precisely a wait measures."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def stop_process(process: subprocess.Popen[Any]) -> int:
    """SIGTERM, as the kubelet sends it; SIGKILL if it is still running after the timeout.
    The exit code. Safe to call again on a process that already ended."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode

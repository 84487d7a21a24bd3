"""What both flows of the demo do alike around what they start: a port, a wait, the
rotation rhythm, a stop.

The sidecar flow (:mod:`tokensidecar.demo.run`) and the gateway flow
(:mod:`tokensidecar.demo.gateway_flow`) each run ``tokensidecar`` as a child process, rotate
its token ``--rotations`` times (or ``--forever``), wait for it to reach a state they can
observe (a token on disk, a metric), and stop it the way the kubelet would. One copy of
each, so both flows pace, measure and stop alike.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

__all__ = ["free_port", "rotate_repeatedly", "stop_process", "wait_until"]

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


def rotate_repeatedly(
    rotate: Callable[[int, str], dict[str, Any]],
    *,
    first: str,
    rotations: int,
    forever: bool,
    pause: float,
    results: list[dict[str, Any]],
) -> bool:
    """Call ``rotate(number, current)`` ``rotations`` times (without end when ``forever``),
    ``pause`` seconds apart, each from the token the one before left (``first`` to begin).

    Every result goes to ``results`` as it comes, so a summary after Ctrl-C still shows the
    rotations done; the first that is not ``ok`` ends the run (False)."""
    number = 0
    current = first
    while forever or number < rotations:
        number += 1
        result = rotate(number, current)
        results.append(result)
        if not result["ok"]:
            return False
        current = result["token"]
        if forever or number < rotations:
            time.sleep(pause)
    return True


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

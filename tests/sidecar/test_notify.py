"""Notification after a publish: a signal to processes found by name, and an HTTP POST of
token.json — against a real child process and a real local HTTP server. A failed
notification is counted and logged, never raised."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.fixtures.notify import NotifyEndpoint, SignalReceiver
from tokensidecar.config import ConfigError, resolve
from tokensidecar.sidecar.metrics import SidecarMetrics
from tokensidecar.sidecar.notify import NOTIFY_TIMEOUT_SECONDS, Notifier, find_processes
from tokensidecar.sidecar.settings import NotifySettings, sidecar_settings
from tokensidecar.token import Token


def _notifier(**flags: str) -> tuple[Notifier | None, SidecarMetrics]:
    metrics = SidecarMetrics(source="file")
    config = resolve(sidecar_settings(), flags, {})
    notify = NotifySettings.resolve(config)
    return (None if notify is None else Notifier.from_settings(notify, metrics=metrics)), metrics


def _failures(metrics: SidecarMetrics, kind: str) -> float:
    return metrics.registry.get_sample_value("tokensidecar_notify_failures_total", {"kind": kind}) or 0.0


METADATA = Token(value="hf_notifytoken000001", source="file", version="3").metadata()


# -- configuration -------------------------------------------------------------------


def test_no_notify_settings_means_no_notifier() -> None:
    assert _notifier()[0] is None


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("SIGHUP", signal.SIGHUP),
        ("hup", signal.SIGHUP),
        ("SIGUSR1", signal.SIGUSR1),
        ("term", signal.SIGTERM),
    ],
)
def test_signal_names_with_or_without_sig_prefix(name: str, number: int) -> None:
    notifier, _ = _notifier(notify_signal=name, notify_process="app")
    assert notifier is not None
    assert notifier.signal_number == number


def test_process_names_alone_default_to_sighup() -> None:
    notifier, _ = _notifier(notify_process=" vllm , python3 ,")
    assert notifier is not None
    assert notifier.signal_number == signal.SIGHUP
    assert notifier.process_names == {"vllm", "python3"}


def test_url_alone_sends_no_signal() -> None:
    notifier, _ = _notifier(notify_url="http://127.0.0.1:9/hook")
    assert notifier is not None
    assert notifier.signal_number is None
    assert notifier.url == "http://127.0.0.1:9/hook"


def test_signal_without_process_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="TOKENSIDECAR_NOTIFY_PROCESS is required"):
        _notifier(notify_signal="SIGHUP")


def test_unknown_signal_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        _notifier(notify_signal="SIGWAKEUP", notify_process="app")
    assert caught.value.setting == "TOKENSIDECAR_NOTIFY_SIGNAL"


# -- finding processes ---------------------------------------------------------------


def _fake_process(proc: Path, pid: int, *, comm: str, argv: list[str]) -> None:
    entry = proc / str(pid)
    entry.mkdir()
    (entry / "comm").write_text(comm + "\n")
    (entry / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def test_find_processes_matches_comm_or_argv0_basename(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    _fake_process(proc, 10, comm="vllm", argv=["python3", "-m", "vllm"])
    _fake_process(proc, 11, comm="python3", argv=["/usr/local/bin/huggingfaceserver", "--model_name=a"])
    _fake_process(proc, 12, comm="python3", argv=["python3", "serve.py", "vllm"])  # vllm only as an argument
    _fake_process(proc, os.getpid(), comm="vllm", argv=["vllm"])  # never ourselves
    (proc / "13").mkdir()  # a process that ended while we looked: no comm, no cmdline
    (proc / "self").mkdir()
    (proc / "meminfo").write_text("")
    assert sorted(find_processes({"vllm", "huggingfaceserver"}, proc=proc)) == [10, 11]
    assert find_processes({"absent"}, proc=proc) == []


def test_find_processes_sees_a_real_child_by_argv0(receiver: SignalReceiver) -> None:
    assert find_processes({receiver.name}) == [receiver.process.pid]


# -- notifying -----------------------------------------------------------------------


async def test_signal_reaches_the_named_process(receiver: SignalReceiver) -> None:
    notifier, metrics = _notifier(notify_signal="SIGUSR1", notify_process=receiver.name)
    assert notifier is not None
    deadline = time.monotonic() + 5
    for count in (1, 2):
        # One at a time: a second SIGUSR1 sent while the first is still pending would merge
        # with it (POSIX does not queue standard signals), and the child would see one.
        await notifier.notify(METADATA)
        while len(receiver.received()) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    assert receiver.received() == ["SIGUSR1", "SIGUSR1"]
    assert receiver.process.poll() is None
    assert _failures(metrics, "signal") == 0


async def test_no_process_to_signal_is_counted_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    notifier, metrics = _notifier(notify_process=f"absent-{uuid.uuid4().hex}")
    assert notifier is not None
    await notifier.notify(METADATA)
    assert _failures(metrics, "signal") == 1
    assert "no process to notify" in caplog.text


async def test_http_notify_posts_token_json(endpoint: NotifyEndpoint) -> None:
    notifier, metrics = _notifier(notify_url=endpoint.url)
    assert notifier is not None
    await notifier.notify(METADATA)
    assert endpoint.bodies == [METADATA]
    assert set(endpoint.bodies[0]) == {"version", "fingerprint", "source", "fetched_at", "expires_at"}
    assert _failures(metrics, "http") == 0


async def test_http_error_answer_is_counted_not_raised(
    endpoint: NotifyEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint.status = 500
    notifier, metrics = _notifier(notify_url=endpoint.url)
    assert notifier is not None
    await notifier.notify(METADATA)
    assert len(endpoint.bodies) == 1
    assert _failures(metrics, "http") == 1
    assert "notify URL failed" in caplog.text


async def test_unreachable_url_is_counted_not_raised(endpoint: NotifyEndpoint) -> None:
    url = endpoint.url
    await endpoint.stop()  # nothing listens there any more
    notifier, metrics = _notifier(notify_url=url)
    assert notifier is not None
    started = time.monotonic()
    await notifier.notify(METADATA)
    # A refused connection fails in milliseconds; the bound is the notifier's own budget
    # for one POST (NOTIFY_TIMEOUT_SECONDS, 5 s): more would mean it waited or retried.
    assert time.monotonic() - started < NOTIFY_TIMEOUT_SECONDS
    assert _failures(metrics, "http") == 1


async def test_signal_and_url_both_fire(receiver: SignalReceiver, endpoint: NotifyEndpoint) -> None:
    notifier, _ = _notifier(notify_process=receiver.name, notify_url=endpoint.url)
    assert notifier is not None
    await notifier.notify(METADATA)
    deadline = time.monotonic() + 5
    while not receiver.received() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert receiver.received() == ["SIGHUP"]
    assert endpoint.bodies == [METADATA]

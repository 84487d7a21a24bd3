"""Canary: a distinctive token flows through every sidecar path — success, an invalid value,
source errors and Hub rejections that echo it, notify failures, shutdown — and must appear in
none of: logs (JSON and text), /metrics, /status, /readyz, token.json, exception text, stderr,
or the process's argv and environment (docs/security.md).

Two canaries: one shaped like a Hugging Face token (also caught by the shape patterns) and one
with no known shape, which only ``remember()`` can hide — so a path that skips the registry
is caught too.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from tests.sidecar_process import SidecarProcess, free_port, wait_for
from tokensidecar import logs
from tokensidecar.backends.hub_errors import TokenRejected
from tokensidecar.metrics import exposition
from tokensidecar.sidecar.metrics import SidecarMetrics
from tokensidecar.sidecar.notify import Notifier
from tokensidecar.sidecar.publish import Publisher
from tokensidecar.sidecar.refresh import Refresher, RefreshFailed
from tokensidecar.sources import Source, SourceError
from tokensidecar.sources.file import FileSource
from tokensidecar.token import Token

CANARIES = {
    "hf-shaped": "hf_CANARY" + secrets.token_hex(16),
    "shapeless": "zzCANARY" + secrets.token_hex(16),
}


def _write(path: Path, value: str | bytes) -> None:
    staged = path.with_name(f".{path.name}.staged")
    if isinstance(value, bytes):
        staged.write_bytes(value)
    else:
        staged.write_text(value)
    staged.replace(path)


def _assert_absent(canary: str, where: str, text: str) -> None:
    assert canary not in text, f"canary leaked into {where}"
    # Not even a large piece of it (a truncated echo is still a leak).
    assert canary[:16] not in text, f"canary prefix leaked into {where}"


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


class EchoingSource(Source):
    """An upstream that puts the secret into its error text (as some APIs echo a request)."""

    kind: ClassVar[str] = "echoing"

    def __init__(self, canary: str) -> None:
        self.canary = canary

    async def fetch(self) -> Token:
        raise SourceError(f"upstream answered 400: invalid value {self.canary!r}")


class EchoingVerifier:
    """A Hub stand-in whose rejection message echoes the token it was given."""

    async def verify(self, token: Token) -> Token:
        raise TokenRejected(f"401 Unauthorized: token {token.value} is revoked")

    async def aclose(self) -> None:
        pass


def _observations(refresher: Refresher, token_file: Path) -> dict[str, str]:
    ready, reason = refresher.state.readiness()
    metadata_file = token_file.with_name("token.json")
    return {
        "/status": json.dumps(refresher.state.status()),
        "/readyz": json.dumps({"ready": ready, "reason": reason}),
        "/metrics": exposition(refresher.metrics.registry).decode(),
        "token.json": metadata_file.read_text() if metadata_file.exists() else "",
    }


@pytest.mark.parametrize("fmt", ["json", "text"])
@pytest.mark.parametrize("kind", sorted(CANARIES))
async def test_canary_never_leaks_in_process(
    tmp_path: Path, log_stream: io.StringIO, kind: str, fmt: str
) -> None:
    canary = CANARIES[kind]
    logs.configure(fmt=fmt, level="debug", stream=log_stream)
    source_file, token_file = tmp_path / "source", tmp_path / "out" / "token"
    metrics = SidecarMetrics(source="file")
    closed_port = free_port()
    refresher = Refresher(
        source=FileSource(path=source_file),
        publisher=Publisher(token_path=token_file),
        metrics=metrics,
        notifier=Notifier(
            metrics=metrics,
            signal_number=int(signal.SIGHUP),
            process_names={f"absent-{secrets.token_hex(4)}"},
            url=f"http://127.0.0.1:{closed_port}/rotated",
        ),
    )
    refresher.publisher.prepare()
    errors: list[str] = []

    async def attempt() -> None:
        try:
            await refresher.fetch_and_publish()
        except RefreshFailed as exc:
            errors.append(str(exc))
        await refresher._attempt(None)  # the loop's bookkeeping: status, metrics, logs

    _write(source_file, canary + "\n")  # success (and failed notifications)
    await attempt()
    assert token_file.read_text() == canary
    _write(source_file, f"{canary} trailing")  # invalid: inner whitespace
    await attempt()
    _write(source_file, f"{canary}\u00e9".encode())  # not ASCII
    await attempt()
    _write(source_file, "\n".join([canary] * 2000))  # too long
    await attempt()
    source_file.unlink()  # source error
    await attempt()
    assert token_file.read_text() == canary  # still the last good one
    assert len(errors) == 4
    http_failures = refresher.metrics.registry.get_sample_value(
        "tokensidecar_notify_failures_total", {"kind": "http"}
    )
    assert http_failures == 1
    observed = _observations(refresher, token_file)
    observed["exceptions"] = "\n".join(errors)
    observed["logs"] = log_stream.getvalue()
    assert "refresh failed" in observed["logs"]
    for where, text in observed.items():
        _assert_absent(canary, where, text)


@pytest.mark.parametrize("kind", sorted(CANARIES))
async def test_secret_echoed_by_an_upstream_error_is_masked_everywhere(
    tmp_path: Path, log_stream: io.StringIO, kind: str
) -> None:
    canary = CANARIES[kind]
    logs.configure(fmt="json", level="debug", stream=log_stream)
    source_file, token_file = tmp_path / "source", tmp_path / "out" / "token"
    refresher = Refresher(
        source=FileSource(path=source_file),
        publisher=Publisher(token_path=token_file),
        metrics=SidecarMetrics(source="file"),
    )
    refresher.publisher.prepare()
    _write(source_file, canary)
    await refresher._attempt(None)
    assert token_file.read_text() == canary
    errors: list[str] = []
    observed: dict[str, str] = {}
    rejected = canary[::-1] + "x"
    attempts: list[tuple[Source, EchoingVerifier | None]] = [
        (EchoingSource(canary), None),  # an upstream that echoes the secret
        (FileSource(path=source_file), EchoingVerifier()),  # a Hub rejection echoing the token
    ]
    for source, verifier in attempts:
        refresher.source, refresher.verifier = source, verifier
        _write(source_file, rejected)
        try:
            await refresher.fetch_and_publish()
        except RefreshFailed as exc:
            errors.append(str(exc))
        await refresher._attempt(None)
        for where, text in _observations(refresher, token_file).items():
            observed[f"{where} after {type(source).__name__}"] = text
    observed["exceptions"] = "\n".join(errors)
    observed["logs"] = log_stream.getvalue()
    for where, text in observed.items():
        _assert_absent(canary, where, text)
        _assert_absent(rejected, where, text)


def _sidecar(tmp_path: Path, source_file: Path, **env: str) -> SidecarProcess:
    (tmp_path / "out").mkdir(exist_ok=True)
    return SidecarProcess(
        token_file=tmp_path / "out" / "token",
        env={
            "TOKENSIDECAR_SOURCE": "file",
            "TOKENSIDECAR_SOURCE_FILE": str(source_file),
            "TOKENSIDECAR_MAX_BACKOFF": "1s",
            "TOKENSIDECAR_LOG_LEVEL": "debug",
            "TOKENSIDECAR_NOTIFY_URL": f"http://127.0.0.1:{free_port()}/rotated",
            "TOKENSIDECAR_NOTIFY_PROCESS": f"absent-{secrets.token_hex(4)}",
            **env,
        },
    )


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_canary_never_leaks_from_the_sidecar_process(tmp_path: Path, fmt: str) -> None:
    canary = CANARIES["shapeless"] if fmt == "json" else CANARIES["hf-shaped"]
    source_file = tmp_path / "source"
    _write(source_file, canary)
    sidecar = _sidecar(tmp_path, source_file, TOKENSIDECAR_LOG_FORMAT=fmt)
    observed: dict[str, str] = {}
    with sidecar:
        sidecar.wait_for_token(canary)
        assert sidecar.process is not None
        pid = sidecar.process.pid
        observed["argv"] = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        observed["environ"] = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        wait_for(lambda: (sidecar.metric("tokensidecar_notify_failures_total", 'kind="http"') or 0) >= 1)

        def failures() -> float:
            return sidecar.metric("tokensidecar_rotations_total", 'result="failure"') or 0

        for bad in (f"{canary} trailing", f"{canary}\u00e9"):
            before = failures()
            _write(source_file, bad)
            wait_for(lambda before=before: failures() > before)  # type: ignore[misc]
        before = failures()
        source_file.unlink()
        wait_for(lambda: failures() > before)
        for endpoint in ("/status", "/metrics", "/readyz", "/healthz"):
            observed[endpoint] = sidecar.get(endpoint)[1]
        observed["token.json"] = sidecar.token_file.with_name("token.json").read_text()
        sidecar.process.send_signal(signal.SIGTERM)
        assert sidecar.process.wait(timeout=5) == 0
    observed["logs"] = sidecar.logs
    assert "refresh failed" in sidecar.logs
    assert sidecar.token() == canary
    for where, text in observed.items():
        _assert_absent(canary, where, text)


def test_canary_never_leaks_from_once(tmp_path: Path) -> None:
    canary = CANARIES["shapeless"]
    source_file = tmp_path / "source"
    env = {
        "TOKENSIDECAR_SOURCE": "file",
        "TOKENSIDECAR_SOURCE_FILE": str(source_file),
        "TOKENSIDECAR_TOKEN_FILE": str(tmp_path / "out" / "token"),
        "TOKENSIDECAR_VERIFY": "none",
        "TOKENSIDECAR_LOG_LEVEL": "debug",
    }
    outputs = []
    for content in (canary, f"{canary} trailing", f"{canary}\u00e9"):
        _write(source_file, content)
        result = subprocess.run(
            [sys.executable, "-m", "tokensidecar", "once"],
            env={"PATH": "/usr/bin:/bin", **env},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        outputs.append(result.stdout + result.stderr)
    assert (tmp_path / "out" / "token").read_text() == canary
    for output in outputs:
        _assert_absent(canary, "once output", output)


def _encoded_canaries() -> dict[str, tuple[str, str]]:
    """(what must not show, the text that carries it) for each way a token hides in a line."""
    org, glued, pct, jwt = (
        "api_org_CANARY" + secrets.token_hex(14),
        "hf_CANARYglued" + secrets.token_hex(14),
        "hf_CANARYpct" + secrets.token_hex(14),
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJDQU5BUlki" + secrets.token_hex(14) + "." + secrets.token_hex(24),
    )
    shapeless = CANARIES["shapeless"]
    basic_pair = base64.b64encode(f"client-app:{shapeless}".encode()).decode()
    bearer_credential = "CANARYbearer" + secrets.token_hex(14)
    scheme_credential = "CANARYscheme" + secrets.token_hex(14)
    return {
        "api_org": (org, f"org token {org} was refused"),
        "my_hf_": (glued, f"env MY_HF_TOKEN=my_{glued}"),
        "%22hf_": (pct, f"GET /x?token=%22{pct}%22"),
        "url-encoded jwt": (jwt.split(".", 1)[1], f"subject=%22{jwt.replace('.', '%2E')}%22"),
        "bearer + spaces/tab": (bearer_credential, f"header Authorization: Bearer \t  {bearer_credential}"),
        "token scheme": (scheme_credential, f"sent Authorization: token {scheme_credential}"),
        "basic scheme": (basic_pair, f"sent Basic {basic_pair} to /oauth/token"),
        "base64 of a remembered token": (
            base64.b64encode(shapeless.encode()).decode(),
            f'Secret data: {{"token": "{base64.b64encode(shapeless.encode()).decode()}"}}',
        ),
    }


@pytest.mark.parametrize("fmt", ["json", "text"])
@pytest.mark.parametrize("form", sorted(_encoded_canaries()))
def test_canary_in_every_shape_and_encoding_never_leaks(log_stream: io.StringIO, fmt: str, form: str) -> None:
    from tokensidecar.redact import remember, safe_error

    remember(CANARIES["shapeless"])  # as every path that reads a token does
    secret, line = _encoded_canaries()[form]
    logs.configure(fmt=fmt, level="debug", stream=log_stream)
    log = logging.getLogger("tokensidecar.canary")
    log.warning(line, extra={"detail": line})
    log.warning("upstream failed", extra={"error": safe_error(RuntimeError(line))})
    try:
        raise RuntimeError(line)
    except RuntimeError:
        log.exception("with a traceback")
    output = log_stream.getvalue()
    assert output.count("[REDACTED sha256:") >= 4
    _assert_absent(secret, f"{fmt} logs ({form})", output)
    _assert_absent(CANARIES["shapeless"], f"{fmt} logs ({form})", output)

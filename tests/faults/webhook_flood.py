"""A flood of large AdmissionReviews against the real ``tokensidecar webhook`` process.

Shared by ``tests/faults/test_webhook_faults.py`` (which asserts the behaviour) and
``bench/webhook.py --flood`` (which prints the numbers). The server is the shipped
command in its own process, so what is measured is its whole resident set: the
interpreter, aiohttp, TLS buffers, every body in flight and every parsed pod. The peak
is the kernel's own high-water mark (``VmHWM`` in ``/proc/<pid>/status``), so no sample
can miss it.

The bodies are AdmissionReview-shaped and ask for injection (matchConditions would let
them through), and their bulk is the shape that costs Python the most per byte: many
small JSON objects (env entries), each of which becomes a dict and two strings.
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tokensidecar.webhook import certs

MIB = 1024 * 1024
SERVICE = "tokensidecar-webhook"
NAMESPACE = "tokensidecar-system"


def flood_review(*, size: int, uid: str) -> bytes:
    """An AdmissionReview of a pod that asks for injection, padded to ``size`` bytes
    with environment variables in its container (the costliest shape to parse)."""
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "flood-",
            "namespace": "models",
            "annotations": {
                "tokensidecar.io/inject": "true",
                "tokensidecar.io/vault-path": "secret/hf/flood",
                "tokensidecar.io/vault-role": "flood",
            },
        },
        "spec": {"containers": [{"name": "app", "image": "busybox", "env": []}]},
    }
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "models",
            "operation": "CREATE",
            "object": pod,
        },
    }
    base = len(json.dumps(review, separators=(",", ":")))
    entry = len(json.dumps({"name": "V000000", "value": "x"}, separators=(",", ":"))) + 1
    env = pod["spec"]["containers"][0]["env"]
    env.extend({"name": f"V{n:06d}", "value": "x"} for n in range((size - base) // entry))
    body = json.dumps(review, separators=(",", ":")).encode()
    # Top up to the exact size inside the last value (still valid JSON, same shape).
    shortfall = size - len(body)
    if shortfall > 0 and env:
        env[-1]["value"] += "x" * shortfall
        body = json.dumps(review, separators=(",", ":")).encode()
    return body


@dataclass
class WebhookProcess:
    process: subprocess.Popen[str]
    port: int
    ca_file: pathlib.Path
    stderr_lines: list[str]

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


@contextmanager
def webhook_process(
    directory: pathlib.Path,
    *,
    env: Mapping[str, str] | None = None,
    python: str = sys.executable,
) -> Iterator[WebhookProcess]:
    """``python -m tokensidecar webhook`` over TLS on a free port; SIGTERM on exit."""
    ca = certs.generate_ca()
    serving = certs.issue_serving_cert(
        ca, dns_names=certs.service_dns_names(service=SERVICE, namespace=NAMESPACE)
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    (directory / "tls.crt").write_bytes(serving.cert_pem)
    key_file = directory / "tls.key"
    key_file.write_bytes(serving.key_pem)
    key_file.chmod(0o600)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSIDECAR_")}
    child_env.update(
        TOKENSIDECAR_WEBHOOK_LISTEN="127.0.0.1:0",
        TOKENSIDECAR_TLS_CERT_FILE=str(directory / "tls.crt"),
        TOKENSIDECAR_TLS_KEY_FILE=str(key_file),
        TOKENSIDECAR_INJECT_VAULT_ADDR="https://vault.vault:8200",
    )
    child_env.update(env or {})
    process = subprocess.Popen(
        [python, "-m", "tokensidecar", "webhook"], env=child_env, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    try:
        port = _listening_port(process, lines)
        drain = threading.Thread(target=_drain, args=(process, lines), daemon=True)
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


def _listening_port(process: subprocess.Popen[str], lines: list[str]) -> int:
    assert process.stderr is not None
    while True:
        line = process.stderr.readline()
        if not line:
            raise RuntimeError(f"webhook exited {process.wait()}: {''.join(lines)}")
        lines.append(line)
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == "webhook listening":
            return int(entry["port"])


def _drain(process: subprocess.Popen[str], lines: list[str]) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        lines.append(line)


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # the JSON reply, or the exception text when the connection failed


def flood(server: WebhookProcess, bodies: list[bytes], *, timeout: float = 120.0) -> list[Reply]:
    """Send every body at once, one TLS connection each, and collect every reply."""
    context = ssl.create_default_context(cafile=str(server.ca_file))
    context.check_hostname = False  # 127.0.0.1 is not in the certificate; the chain still is checked
    replies: list[Reply | None] = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def send(index: int) -> None:
        connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=timeout)
        try:
            connection.connect()
            start.wait(timeout=timeout)
            connection.request(
                "POST", "/mutate", body=bodies[index], headers={"Content-Type": "application/json"}
            )
            reply = connection.getresponse()
            payload = reply.read()
            try:
                replies[index] = Reply(reply.status, json.loads(payload))
            except ValueError:
                replies[index] = Reply(reply.status, payload[:200].decode(errors="replace"))
        except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as exc:
            replies[index] = Reply(0, f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(index,)) for index in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 10)
    return [reply or Reply(0, "no reply") for reply in replies]

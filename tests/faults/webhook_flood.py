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
import pathlib
import ssl
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.webhook_process import WebhookProcess, webhook_command
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


@contextmanager
def webhook_process(
    directory: pathlib.Path,
    *,
    env: Mapping[str, str] | None = None,
    python: str = sys.executable,
) -> Iterator[WebhookProcess]:
    """``python -m tokensidecar webhook`` over TLS on a free port (a CA of its own, in
    ``directory``); SIGTERM on exit (:func:`tests.webhook_process.webhook_command`)."""
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
    with webhook_command(
        cert_file=directory / "tls.crt",
        key_file=key_file,
        ca_file=ca_file,
        env={"TOKENSIDECAR_INJECT_VAULT_ADDR": "https://vault.vault:8200", **(env or {})},
        python=python,
    ) as server:
        yield server


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

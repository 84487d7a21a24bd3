"""``--self-signed`` against the fake Kubernetes API (kmock over real HTTP, official client):
one CA shared through a Secret, the caBundle patched into every webhook, replicas converging."""

from __future__ import annotations

import base64
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509

from tests.fixtures.kube import WEBHOOK_CONFIGS, KubeApi
from tests.webhook_process import read_listening_port
from tokensidecar.webhook import certs

NAMESPACE = "tokensidecar-system"
SERVICE_HOST = f"tokensidecar-webhook.{NAMESPACE}.svc"


def webhook_configuration() -> dict[str, Any]:
    def webhook(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "clientConfig": {
                "service": {"name": "tokensidecar-webhook", "namespace": NAMESPACE, "path": "/mutate"}
            },
            "rules": [
                {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}
            ],
        }

    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "tokensidecar"},
        "webhooks": [webhook("inject.tokensidecar.io"), webhook("inject-legacy.tokensidecar.io")],
    }


def create_configuration(kube_client: Any) -> None:
    from kubernetes import client

    client.AdmissionregistrationV1Api(kube_client).create_mutating_webhook_configuration(
        body=webhook_configuration()
    )


def bundles(kube_api: KubeApi) -> list[str]:
    stored = kube_api.get(WEBHOOK_CONFIGS, "tokensidecar")
    assert stored is not None
    return [w["clientConfig"].get("caBundle", "") for w in stored["webhooks"]]


def configuration_reads(kube_api: KubeApi) -> int:
    requests = kube_api.call(lambda: list(kube_api.store.requests))
    return sum(
        1 for method, path, _ in requests if method == "GET" and "mutatingwebhookconfigurations" in path
    )


def wait_for(predicate: Any, *, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def served_certificate(port: int, *, ca_pem: bytes) -> x509.Certificate:
    """Handshake with the replica, verifying it for the Service name against ``ca_pem`` only."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=SERVICE_HOST) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


class Replicas:
    def __init__(self, kube_api: KubeApi) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSIDECAR_")}
        self.env.update(
            {
                "KUBECONFIG": str(kube_api.kubeconfig_path),
                "TOKENSIDECAR_SELF_SIGNED": "true",
                "TOKENSIDECAR_WEBHOOK_NAMESPACE": NAMESPACE,
                "TOKENSIDECAR_WEBHOOK_LISTEN": "127.0.0.1:0",
                "TOKENSIDECAR_LOG_LEVEL": "debug",
            }
        )
        self.processes: list[subprocess.Popen[str]] = []
        self.early_logs: dict[int, list[str]] = {}

    def start(self, count: int) -> list[int]:
        started = [
            subprocess.Popen(
                [sys.executable, "-m", "tokensidecar", "webhook"],
                env=self.env,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(count)
        ]
        self.processes += started
        for process in started:
            self.early_logs[process.pid] = []
        return [read_listening_port(process, seen=self.early_logs[process.pid]) for process in started]

    def stop(self) -> list[str]:
        logs = []
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr is not None and not process.stderr.closed:
                logs.append("".join(self.early_logs[process.pid]) + process.stderr.read())
                process.stderr.close()
        return logs


@pytest.fixture
def replicas(kube_api: KubeApi) -> Iterator[Replicas]:
    group = Replicas(kube_api)
    try:
        yield group
    finally:
        group.stop()


def test_two_replicas_started_together_converge_on_one_valid_bundle(
    kube_api: KubeApi, kube_client: Any, replicas: Replicas
) -> None:
    create_configuration(kube_client)
    ports = replicas.start(2)
    wait_for(lambda: all(bundles(kube_api)))
    secret = kube_api.get("v1/secrets", "tokensidecar-webhook-ca", namespace=NAMESPACE)
    assert secret is not None and secret["type"] == "kubernetes.io/tls"
    ca_pem = base64.b64decode(secret["data"]["tls.crt"])
    assert set(bundles(kube_api)) == {base64.b64encode(ca_pem).decode()}
    # The CA certificate alone, for Prometheus (manifests/monitoring/servicemonitor.yaml).
    wait_for(lambda: kube_api.get("v1/configmaps", "tokensidecar-webhook-ca", namespace=NAMESPACE))
    published = kube_api.get("v1/configmaps", "tokensidecar-webhook-ca", namespace=NAMESPACE)
    assert published is not None and published["data"] == {"ca.crt": ca_pem.decode()}
    # Each replica serves its own certificate, and both verify against the one bundle.
    served = [served_certificate(port, ca_pem=ca_pem) for port in ports]
    assert served[0].serial_number != served[1].serial_number
    for certificate in served:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(names.get_values_for_type(x509.DNSName)) == set(
            certs.service_dns_names(service="tokensidecar-webhook", namespace=NAMESPACE)
        )
    logs = replicas.stop()
    assert [process.returncode for process in replicas.processes] == [0, 0]
    assert all("PRIVATE KEY" not in text for text in logs)
    assert sum("created the shared webhook CA" in text for text in logs) == 1


def test_a_replica_started_later_reuses_the_ca_and_leaves_the_bundle_alone(
    kube_api: KubeApi, kube_client: Any, replicas: Replicas
) -> None:
    create_configuration(kube_client)
    replicas.start(1)
    wait_for(lambda: all(bundles(kube_api)))
    before = kube_api.get(WEBHOOK_CONFIGS, "tokensidecar")
    assert before is not None
    reads_before = configuration_reads(kube_api)
    (port,) = replicas.start(1)
    secret = kube_api.get("v1/secrets", "tokensidecar-webhook-ca", namespace=NAMESPACE)
    assert secret is not None
    served_certificate(port, ca_pem=base64.b64decode(secret["data"]["tls.crt"]))
    wait_for(lambda: configuration_reads(kube_api) > reads_before)  # the new replica looked
    after = kube_api.get(WEBHOOK_CONFIGS, "tokensidecar")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_configuration_applied_after_the_webhook_starts_still_gets_the_bundle(
    kube_api: KubeApi, kube_client: Any, replicas: Replicas
) -> None:
    replicas.start(1)
    time.sleep(0.3)  # the first attempt meets a 404 and backs off
    create_configuration(kube_client)
    wait_for(lambda: all(bundles(kube_api)), timeout=15)


def test_bundle_patch_retries_on_conflict(kube_api: KubeApi, kube_client: Any) -> None:
    from kubernetes import client

    create_configuration(kube_client)
    ca = certs.generate_ca()
    admission = client.AdmissionregistrationV1Api(kube_client)
    kube_api.fail_next(2, status=409, method="PATCH", path_contains="mutatingwebhookconfigurations")
    assert certs.ensure_ca_bundle(admission, name="tokensidecar", ca_pem=ca.cert_pem) is True
    assert set(bundles(kube_api)) == {base64.b64encode(ca.cert_pem).decode()}
    assert certs.ensure_ca_bundle(admission, name="tokensidecar", ca_pem=ca.cert_pem) is False


def test_a_stale_resource_version_is_refused_and_reread(kube_api: KubeApi, kube_client: Any) -> None:
    """Another writer changes the configuration between our read and our patch."""
    from kubernetes import client

    create_configuration(kube_client)
    admission = client.AdmissionregistrationV1Api(kube_client)
    ca = certs.generate_ca()

    class RacingApi:
        """The real client, with a competing write slipped in after the first read."""

        def __init__(self) -> None:
            self.reads = 0

        def read_mutating_webhook_configuration(self, *, name: str) -> Any:
            current = admission.read_mutating_webhook_configuration(name=name)
            self.reads += 1
            if self.reads == 1:
                admission.patch_mutating_webhook_configuration(
                    name=name, body={"metadata": {"labels": {"touched": "yes"}}}
                )
            return current

        def patch_mutating_webhook_configuration(self, **kwargs: Any) -> Any:
            return admission.patch_mutating_webhook_configuration(**kwargs)

    racing = RacingApi()
    assert certs.ensure_ca_bundle(racing, name="tokensidecar", ca_pem=ca.cert_pem) is True
    assert racing.reads == 2
    stored = kube_api.get(WEBHOOK_CONFIGS, "tokensidecar")
    assert stored is not None and stored["metadata"]["labels"] == {"touched": "yes"}
    assert set(bundles(kube_api)) == {base64.b64encode(ca.cert_pem).decode()}


def test_an_unusable_ca_secret_is_reported_not_overwritten(kube_api: KubeApi, kube_client: Any) -> None:
    from kubernetes import client

    kube_api.put_secret(
        "tokensidecar-webhook-ca", {"tls.crt": "junk", "tls.key": "junk"}, namespace=NAMESPACE
    )
    with pytest.raises(certs.CertificateError, match="delete it"):
        certs.shared_ca(
            client.CoreV1Api(kube_client), namespace=NAMESPACE, secret_name="tokensidecar-webhook-ca"
        )
    secret = kube_api.get("v1/secrets", "tokensidecar-webhook-ca", namespace=NAMESPACE)
    assert secret is not None and base64.b64decode(secret["data"]["tls.crt"]) == b"junk"


def test_serving_files_are_private_and_removed(tmp_path: Any) -> None:
    files = certs.ServingFiles(directory=str(tmp_path))
    ca = certs.generate_ca()
    files.write(certs.issue_serving_cert(ca, dns_names=[SERVICE_HOST]))
    assert files.directory.stat().st_mode & 0o777 == 0o700
    assert files.key_file.stat().st_mode & 0o777 == 0o600
    assert not files.due_for_renewal()
    files.write(certs.issue_serving_cert(ca, dns_names=[SERVICE_HOST], validity=certs.CLOCK_SKEW / 10))
    assert files.due_for_renewal()
    files.remove()
    assert not files.directory.exists()


def test_the_published_ca_certificate_is_brought_up_to_date(kube_api: KubeApi, kube_client: Any) -> None:
    from kubernetes import client

    core = client.CoreV1Api(kube_client)
    old, new = certs.generate_ca(), certs.generate_ca()
    assert certs.publish_ca_certificate(core, namespace=NAMESPACE, name="ca", ca_pem=old.cert_pem) is True
    assert certs.publish_ca_certificate(core, namespace=NAMESPACE, name="ca", ca_pem=old.cert_pem) is False
    assert certs.publish_ca_certificate(core, namespace=NAMESPACE, name="ca", ca_pem=new.cert_pem) is True
    stored = kube_api.get("v1/configmaps", "ca", namespace=NAMESPACE)
    assert stored is not None and stored["data"] == {"ca.crt": new.cert_pem.decode()}
    assert b"PRIVATE KEY" not in new.cert_pem

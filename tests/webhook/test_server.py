"""The webhook server over real HTTPS, with certificates made by cryptography.

The server runs on its own event loop in a thread (as it would in its own process), and
the tests talk to it with a plain TLS client that trusts only the test CA.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import io
import json
import logging
import os
import pathlib
import secrets
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import jsonpatch
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.webhook.test_inject import VAULT_ANNOTATIONS, kserve_predictor_pod
from tests.webhook_process import WebhookProcess, webhook_command, webhook_command_exit
from tokensidecar import logs
from tokensidecar.serving import CertificateReloader
from tokensidecar.webhook import certs
from tokensidecar.webhook.inject import KNOWN_ANNOTATIONS, InjectionSettings
from tokensidecar.webhook.metrics import WebhookMetrics
from tokensidecar.webhook.review import decode_patch
from tokensidecar.webhook.server import ReviewBudget, build_app

SERVICE_HOST = "tokensidecar-webhook.tokensidecar-system.svc"
INJECTION = InjectionSettings(
    image="ghcr.io/tokensidecar/tokensidecar:0.1.0",
    vault_addr="https://vault:8200",
    gateway_url="http://tokensidecar-gateway.tokensidecar-system.svc:8080",
)


def write_pair(directory: pathlib.Path, pair: certs.KeyPair) -> tuple[pathlib.Path, pathlib.Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    key_file.write_bytes(pair.key_pem)
    key_file.chmod(0o600)
    cert_file.write_bytes(pair.cert_pem)
    return cert_file, key_file


class RunningWebhook:
    """The aiohttp app on its own loop in a thread, over TLS, on a free port."""

    def __init__(
        self,
        *,
        cert_file: pathlib.Path,
        key_file: pathlib.Path,
        on_invalid: str = "deny",
        max_body_bytes: int = 64 * 1024,
    ) -> None:
        self.metrics = WebhookMetrics()
        self.reloader = CertificateReloader(
            cert_file=str(cert_file), key_file=str(key_file), on_reload=self.metrics.count_certificate_reload
        )
        self.app = build_app(
            settings=INJECTION, metrics=self.metrics, on_invalid=on_invalid, max_body_bytes=max_body_bytes
        )
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())
        self.loop.close()

    async def _serve(self) -> None:
        from aiohttp import web

        self._stop = asyncio.Event()
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.reloader.context)
        await site.start()
        self.port = runner.addresses[0][1]
        watcher = asyncio.create_task(self.reloader.watch(interval=0.05))
        self._ready.set()
        await self._stop.wait()
        watcher.cancel()
        await runner.cleanup()

    def __enter__(self) -> RunningWebhook:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


class HostAdapter(requests.adapters.HTTPAdapter):
    """Connect to 127.0.0.1 but verify the certificate for the Service's DNS name."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["assert_hostname"] = SERVICE_HOST
        super().init_poolmanager(*args, **kwargs)


def client(ca_file: pathlib.Path) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise replace the test CA
    session.verify = str(ca_file)
    session.mount("https://", HostAdapter())
    return session


@pytest.fixture(scope="module")
def ca() -> certs.KeyPair:
    return certs.generate_ca()


@pytest.fixture
def tls_files(tmp_path: pathlib.Path, ca: certs.KeyPair) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    names = certs.service_dns_names(service="tokensidecar-webhook", namespace="tokensidecar-system")
    cert_file, key_file = write_pair(tmp_path / "tls", certs.issue_serving_cert(ca, dns_names=names))
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    return cert_file, key_file, ca_file


@pytest.fixture
def webhook(
    tls_files: tuple[pathlib.Path, pathlib.Path, pathlib.Path],
) -> Iterator[tuple[RunningWebhook, requests.Session]]:
    cert_file, key_file, ca_file = tls_files
    with RunningWebhook(cert_file=cert_file, key_file=key_file) as running, client(ca_file) as session:
        yield running, session


def admission_review(
    pod: dict[str, Any], *, uid: str = "705ab4f5-6393-11e8-b7cc-42010a800002", operation: str = "CREATE"
) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "models",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def peer_serial(port: int, ca_file: pathlib.Path) -> int:
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=SERVICE_HOST) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    from cryptography import x509

    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def metric_value(session: requests.Session, url: str, line_prefix: str) -> float:
    text = session.get(url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_prefix} not in /metrics")


def test_review_round_trip_returns_the_same_uid_and_a_base64_json_patch(
    webhook: tuple[RunningWebhook, requests.Session],
) -> None:
    running, session = webhook
    reply = session.post(running.url + "/mutate", json=admission_review(kserve_predictor_pod()), timeout=5)
    assert reply.status_code == 200
    body = reply.json()
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
    response = body["response"]
    assert response["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    assert patch == decode_patch(body)
    assert any(
        op["path"] == "/spec/initContainers/0" and op["value"]["name"] == "tokensidecar" for op in patch
    )
    assert metric_value(session, running.url, 'tokensidecar_webhook_admissions_total{result="injected"}') == 1
    assert metric_value(session, running.url, "tokensidecar_webhook_duration_seconds_count") == 1
    assert (
        metric_value(session, running.url, 'tokensidecar_build_info{component="webhook",version="0.1.0"}')
        == 1
    )


def test_pod_without_annotation_is_allowed_without_patch(
    webhook: tuple[RunningWebhook, requests.Session],
) -> None:
    running, session = webhook
    reply = session.post(
        running.url + "/mutate", json=admission_review(kserve_predictor_pod({})), timeout=5
    ).json()
    assert reply["response"] == {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": True}
    update = admission_review(kserve_predictor_pod(), operation="UPDATE")
    assert "patch" not in session.post(running.url + "/mutate", json=update, timeout=5).json()["response"]
    assert metric_value(session, running.url, 'tokensidecar_webhook_admissions_total{result="skipped"}') == 2


def test_invalid_annotations_are_denied_with_a_message_naming_the_annotation(
    webhook: tuple[RunningWebhook, requests.Session],
) -> None:
    running, session = webhook
    pod = kserve_predictor_pod({**VAULT_ANNOTATIONS, "tokensidecar.io/memory-limit": "lots"})
    response = session.post(running.url + "/mutate", json=admission_review(pod), timeout=5).json()["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert "tokensidecar.io/memory-limit" in response["status"]["message"]
    assert "patch" not in response
    assert metric_value(session, running.url, 'tokensidecar_webhook_admissions_total{result="error"}') == 1


def test_on_invalid_skip_admits_with_a_warning(
    tls_files: tuple[pathlib.Path, pathlib.Path, pathlib.Path],
) -> None:
    cert_file, key_file, ca_file = tls_files
    pod = kserve_predictor_pod({**VAULT_ANNOTATIONS, "tokensidecar.io/sorce": "vault"})
    with (
        RunningWebhook(cert_file=cert_file, key_file=key_file, on_invalid="skip") as running,
        client(ca_file) as session,
    ):
        response = session.post(running.url + "/mutate", json=admission_review(pod), timeout=5).json()[
            "response"
        ]
    assert response["allowed"] is True and "patch" not in response
    assert len(response["warnings"]) == 1 and "tokensidecar.io/sorce" in response["warnings"][0]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"kind": "AdmissionReview"}',
        b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "x"}}',
        b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}',
        b"\xff\xfe\x00",
        b"[" * 50_000,
    ],
    ids=["empty", "text", "list", "no-version", "v1beta1", "no-uid", "binary", "deep-nesting"],
)
def test_a_body_that_is_not_an_admission_review_gets_400_with_a_message(
    webhook: tuple[RunningWebhook, requests.Session], body: bytes
) -> None:
    running, session = webhook
    reply = session.post(running.url + "/mutate", data=body, timeout=5)
    assert reply.status_code == 400
    assert reply.json()["error"]


def test_oversized_body_is_refused_without_reading_it_all(
    webhook: tuple[RunningWebhook, requests.Session],
) -> None:
    running, session = webhook
    reply = session.post(running.url + "/mutate", data=b"x" * (65 * 1024), timeout=5)
    assert reply.status_code == 413


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_below_1_2_is_refused(
    webhook: tuple[RunningWebhook, requests.Session],
    tls_files: tuple[pathlib.Path, pathlib.Path, pathlib.Path],
) -> None:
    running, _ = webhook
    context = ssl.create_default_context(cafile=str(tls_files[2]))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.0/1.1 at all
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    assert running.reloader.context.minimum_version == ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as raw, pytest.raises(ssl.SSLError):
        context.wrap_socket(raw, server_hostname=SERVICE_HOST)


def wait_for(predicate: Any, *, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_certificate_rewritten_on_disk_is_served_without_restart(
    webhook: tuple[RunningWebhook, requests.Session],
    tls_files: tuple[pathlib.Path, pathlib.Path, pathlib.Path],
    ca: certs.KeyPair,
) -> None:
    running, session = webhook
    cert_file, _, ca_file = tls_files
    first = peer_serial(running.port, ca_file)
    renewed = certs.issue_serving_cert(ca, dns_names=[SERVICE_HOST])
    write_pair(cert_file.parent, renewed)
    wait_for(lambda: peer_serial(running.port, ca_file) == renewed.certificate.serial_number)
    assert renewed.certificate.serial_number != first
    assert session.get(running.url + "/healthz", timeout=5).status_code == 200


def test_kubelet_secret_volume_swap_is_picked_up(tmp_path: pathlib.Path, ca: certs.KeyPair) -> None:
    """kubelet writes a new timestamped directory and renames the ``..data`` symlink over the old one."""
    volume = tmp_path / "secret-volume"
    first_dir = volume / "..2024_05_01_10_00_00.000000001"
    write_pair(first_dir, certs.issue_serving_cert(ca, dns_names=[SERVICE_HOST]))
    (volume / "..data").symlink_to(first_dir.name)
    for name in ("tls.crt", "tls.key"):
        (volume / name).symlink_to(f"..data/{name}")
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    with RunningWebhook(cert_file=volume / "tls.crt", key_file=volume / "tls.key") as running:
        renewed = certs.issue_serving_cert(ca, dns_names=[SERVICE_HOST])
        second_dir = volume / "..2024_06_01_10_00_00.000000002"
        write_pair(second_dir, renewed)
        (volume / "..data_tmp").symlink_to(second_dir.name)
        os.replace(volume / "..data_tmp", volume / "..data")
        wait_for(lambda: peer_serial(running.port, ca_file) == renewed.certificate.serial_number)
        assert running.metrics.certificate_reloads.labels(result="success")._value.get() == 1


def test_a_broken_certificate_on_disk_keeps_the_old_one_serving(
    webhook: tuple[RunningWebhook, requests.Session],
    tls_files: tuple[pathlib.Path, pathlib.Path, pathlib.Path],
) -> None:
    running, session = webhook
    cert_file, _, ca_file = tls_files
    before = peer_serial(running.port, ca_file)
    cert_file.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    wait_for(lambda: running.metrics.certificate_reloads.labels(result="failure")._value.get() == 1)
    assert peer_serial(running.port, ca_file) == before
    assert session.get(running.url + "/healthz", timeout=5).status_code == 200


# --- malformed input never produces a 500 or a crash ------------------------------------------

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
_json = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
# Every annotation the webhook knows, plus one it does not.
_annotation_keys = st.sampled_from([f"tokensidecar.io/{k}" for k in (*sorted(KNOWN_ANNOTATIONS), "bogus")])
_annotation_values = st.sampled_from(
    [
        "true",
        "vault",
        "file",
        "kubernetes-secret",
        "oidc-exchange",
        "repo",
        "secret/hf/x",
        "64Mi",
        "1e3",
        "kserve-container",
        "",
    ]
) | st.text(max_size=16)
_pods = st.fixed_dictionaries(
    {
        "metadata": st.fixed_dictionaries(
            {"annotations": st.dictionaries(_annotation_keys, _annotation_values, max_size=8) | _json}
        ),
        "spec": st.fixed_dictionaries(
            {
                "containers": st.lists(
                    st.fixed_dictionaries(
                        {"name": st.sampled_from(["app", "tokensidecar", "storage-initializer"]) | _json},
                        optional={
                            "env": _json | st.lists(_json, max_size=3),
                            "volumeMounts": _json,
                            "envFrom": _json,
                        },
                    ),
                    max_size=3,
                )
                | _json,
            },
            optional={"initContainers": _json, "volumes": _json, "securityContext": _json},
        )
        | _json,
    }
)
_reviews = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from(["admission.k8s.io/v1", "admission.k8s.io/v1beta1"]) | _json_scalars,
        "kind": st.just("AdmissionReview") | _json_scalars,
        "request": st.fixed_dictionaries(
            {
                "uid": st.text(min_size=0, max_size=40) | _json_scalars,
                "kind": st.just({"group": "", "version": "v1", "kind": "Pod"}) | _json,
                "operation": st.sampled_from(["CREATE", "UPDATE"]) | _json_scalars,
                "object": _pods | _json,
            }
        )
        | _json,
    }
)


class KeepAliveClient:
    """One persistent TLS connection (http.client): a fraction of requests' per-call cost,
    which matters over thousands of examples. Verifies the chain against the test CA."""

    def __init__(self, *, port: int, ca_file: pathlib.Path) -> None:
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self.context.check_hostname = False  # 127.0.0.1 is not in the certificate; the chain still is checked
        self.port = port
        self.connection = http.client.HTTPSConnection("127.0.0.1", port, context=self.context, timeout=5)

    def post(self, body: bytes) -> tuple[int, Any]:
        self.connection.request("POST", "/mutate", body=body, headers={"Content-Type": "application/json"})
        reply = self.connection.getresponse()
        payload = reply.read()
        return reply.status, json.loads(payload)

    def close(self) -> None:
        self.connection.close()


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory, ca: certs.KeyPair) -> Iterator[KeepAliveClient]:
    directory = tmp_path_factory.mktemp("fuzz")
    names = certs.service_dns_names(service="tokensidecar-webhook", namespace="tokensidecar-system")
    cert_file, key_file = write_pair(directory, certs.issue_serving_cert(ca, dns_names=names))
    ca_file = directory / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    with RunningWebhook(cert_file=cert_file, key_file=key_file) as running:
        fuzz_client = KeepAliveClient(port=running.port, ca_file=ca_file)
        try:
            yield fuzz_client
        finally:
            fuzz_client.close()


def assert_well_formed(status: int, body: Any, sent: Any) -> None:
    assert status in (200, 400), body
    if status == 400:
        assert isinstance(body["error"], str) and body["error"]
        return
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
    assert body["response"]["uid"] == sent["request"]["uid"]
    assert isinstance(body["response"]["allowed"], bool)
    if "patch" in body["response"]:
        assert isinstance(decode_patch(body), list)


# 600 + 600 + 800 = 2,000 generated bodies, all over HTTPS.
@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(body=st.binary(max_size=256))
def test_arbitrary_bytes_never_produce_a_500(fuzz_target: KeepAliveClient, body: bytes) -> None:
    status, reply = fuzz_target.post(body)
    assert status == 400 and reply["error"]


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(document=_json)
def test_arbitrary_json_never_produces_a_500(fuzz_target: KeepAliveClient, document: Any) -> None:
    status, reply = fuzz_target.post(json.dumps(document).encode())
    assert status == 400 and reply["error"]


@settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(document=_reviews)
def test_review_shaped_garbage_gets_a_well_formed_reply(fuzz_target: KeepAliveClient, document: Any) -> None:
    status, reply = fuzz_target.post(json.dumps(document).encode())
    assert_well_formed(status, reply, document)


# --- secrets never leak -----------------------------------------------------------------------


def test_canary_token_in_the_pod_reaches_no_log_metric_or_message(
    webhook: tuple[RunningWebhook, requests.Session],
) -> None:
    running, session = webhook
    canary = "hf_canary" + secrets.token_hex(16)
    stream = io.StringIO()
    logs.configure(fmt="json", level="debug", stream=stream)
    try:
        pod = kserve_predictor_pod()
        pod["spec"]["containers"][0]["env"].append({"name": "HF_TOKEN", "value": canary})
        injected = session.post(running.url + "/mutate", json=admission_review(pod), timeout=5).json()
        bad = kserve_predictor_pod({**VAULT_ANNOTATIONS, "tokensidecar.io/vault-path": canary})
        bad["spec"]["containers"][0]["env"].append({"name": "HF_TOKEN", "value": canary})
        denied = session.post(running.url + "/mutate", json=admission_review(bad), timeout=5).json()
        skipped_bytes = session.post(running.url + "/mutate", data=canary.encode(), timeout=5).json()
        metrics_text = session.get(running.url + "/metrics", timeout=5).text
    finally:
        logging.getLogger().handlers.clear()
    assert denied["response"]["allowed"] is False
    assert "tokensidecar.io/vault-path" in denied["response"]["status"]["message"]
    for text in (
        json.dumps(decode_patch(injected)),
        json.dumps(denied),
        json.dumps(skipped_bytes),
        metrics_text,
        stream.getvalue(),
    ):
        assert canary not in text
    assert "admission refused" in stream.getvalue()


# --- the command itself -----------------------------------------------------------------------


def test_webhook_command_serves_https_and_stops_on_sigterm(
    tls_files: tuple[pathlib.Path, pathlib.Path, pathlib.Path],
) -> None:
    with _webhook_command(tls_files, TOKENSIDECAR_INJECT_VAULT_ADDR="https://vault:8200") as server:
        with client(server.ca_file) as session:
            assert session.get(f"{server.url}/healthz", timeout=5).json() == {"status": "ok"}
            reply = session.post(
                f"{server.url}/mutate", json=admission_review(kserve_predictor_pod()), timeout=5
            ).json()
            assert decode_patch(reply)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=10) == 0
        assert time.monotonic() - started < 5


@contextlib.contextmanager
def _webhook_command(
    tls_files: tuple[pathlib.Path, pathlib.Path, pathlib.Path], **settings: str
) -> Iterator[WebhookProcess]:
    """The real command with the ``tls_files`` certificate and ``settings`` in its environment."""
    cert_file, key_file, ca_file = tls_files
    with webhook_command(cert_file=cert_file, key_file=key_file, ca_file=ca_file, env=settings) as server:
        yield server


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "TOKENSIDECAR_TLS_CERT_FILE is required when --self-signed is not set"),
        (
            {"TOKENSIDECAR_SELF_SIGNED": "true", "TOKENSIDECAR_TLS_CERT_FILE": "/x"},
            "TOKENSIDECAR_TLS_CERT_FILE",
        ),
        ({"TOKENSIDECAR_ON_INVALID": "ignore"}, "TOKENSIDECAR_ON_INVALID"),
        ({"TOKENSIDECAR_SIDECAR_MEMORY_LIMIT": "lots"}, "TOKENSIDECAR_SIDECAR_MEMORY_LIMIT"),
        (
            {
                "TOKENSIDECAR_TLS_CERT_FILE": "/nonexistent/tls.crt",
                "TOKENSIDECAR_TLS_KEY_FILE": "/nonexistent/tls.key",
            },
            "TOKENSIDECAR_TLS_CERT_FILE",
        ),
        (
            {
                "TOKENSIDECAR_INJECT_VAULT_ADDR": "http://vault:8200",
                "TOKENSIDECAR_TLS_CERT_FILE": "/nonexistent/tls.crt",
                "TOKENSIDECAR_TLS_KEY_FILE": "/nonexistent/tls.key",
            },
            "TOKENSIDECAR_INJECT_VAULT_ADDR: 'http://vault:8200' is plain http://",
        ),
        (
            {"TOKENSIDECAR_ALLOWED_SECRET_NAMESPACES": "team-a,Team_B"},
            "TOKENSIDECAR_ALLOWED_SECRET_NAMESPACES",
        ),
        ({"TOKENSIDECAR_ALLOWED_VAULT_ADDRS": "https://vault/v1/secret"}, "TOKENSIDECAR_ALLOWED_VAULT_ADDRS"),
        (
            {
                "TOKENSIDECAR_INJECT_MODE": "gateway",
                "TOKENSIDECAR_TLS_CERT_FILE": "/nonexistent/tls.crt",
                "TOKENSIDECAR_TLS_KEY_FILE": "/nonexistent/tls.key",
            },
            "TOKENSIDECAR_INJECT_GATEWAY_URL is required when TOKENSIDECAR_INJECT_MODE=gateway",
        ),
        ({"TOKENSIDECAR_LOCALMODEL_ANNOTATIONS": "[1]"}, "TOKENSIDECAR_LOCALMODEL_ANNOTATIONS"),
    ],
    ids=[
        "no-certificates",
        "both-modes",
        "bad-on-invalid",
        "bad-quantity",
        "missing-files",
        "http-vault",
        "bad-namespace",
        "vault-with-path",
        "gateway-without-url",
        "bad-localmodel-annotations",
    ],
)
def test_bad_configuration_exits_2_with_one_line(extra: dict[str, str], message: str) -> None:
    result = webhook_command_exit(extra)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


# --- the review budget ------------------------------------------------------------------------


async def test_review_budget_grants_in_arrival_order_within_its_capacity() -> None:
    budget = ReviewBudget(100)
    order: list[str] = []
    release = {name: asyncio.Event() for name in ("small-1", "large", "small-2", "small-3")}

    async def review_of(name: str, size: int) -> None:
        async with budget.reserve(size):
            order.append(name)
            await release[name].wait()

    tasks = [asyncio.create_task(review_of("small-1", 40))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(review_of("large", 500)))  # more than the budget: runs alone
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(review_of("small-2", 10)))  # fits, but arrived after "large"
    cancelled = asyncio.create_task(review_of("small-3", 10))
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == ["small-1"] and budget.available == 60
    cancelled.cancel()  # a client that gives up while waiting leaves no trace
    release["small-1"].set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == ["small-1", "large"] and budget.available == 0
    release["large"].set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == ["small-1", "large", "small-2"]
    release["small-2"].set()
    await asyncio.gather(*tasks)
    assert budget.available == 100 and cancelled.cancelled()


def test_the_webhook_command_denies_annotations_outside_what_it_allows(
    tls_files: tuple[pathlib.Path, pathlib.Path, pathlib.Path],
) -> None:
    settings = {
        "TOKENSIDECAR_INJECT_VAULT_ADDR": "https://vault.vault:8200",
        "TOKENSIDECAR_ALLOWED_VAULT_ADDRS": "https://vault.team-a:8200",
        "TOKENSIDECAR_ALLOWED_IMAGES": "registry.local/tokensidecar:*",
        "TOKENSIDECAR_ALLOWED_SECRET_NAMESPACES": "hf-tokens",
        "TOKENSIDECAR_VAULT_TOKEN_AUDIENCE": "vault.corp.example",
    }
    secret = {
        "tokensidecar.io/inject": "true",
        "tokensidecar.io/source": "kubernetes-secret",
        "tokensidecar.io/secret-name": "hf",
    }
    denied = {
        "vault-addr": {**VAULT_ANNOTATIONS, "tokensidecar.io/vault-addr": "https://vault.evil.example"},
        "image": {**VAULT_ANNOTATIONS, "tokensidecar.io/image": "docker.io/attacker/sidecar:1"},
        "secret-namespace": {**secret, "tokensidecar.io/secret-namespace": "kube-system"},
    }
    allowed = [
        {**VAULT_ANNOTATIONS, "tokensidecar.io/vault-addr": "https://vault.team-a:8200"},
        {**VAULT_ANNOTATIONS, "tokensidecar.io/image": "registry.local/tokensidecar:0.2.0"},
        {**secret, "tokensidecar.io/secret-namespace": "hf-tokens"},
    ]
    with _webhook_command(tls_files, **settings) as server:
        url = f"{server.url}/mutate"
        with client(server.ca_file) as session:
            for subject, annotations in denied.items():
                reply = session.post(
                    url, json=admission_review(kserve_predictor_pod(annotations)), timeout=10
                )
                response = reply.json()["response"]
                assert reply.status_code == 200 and response["allowed"] is False, response
                assert response["status"]["message"].startswith(f"tokensidecar: tokensidecar.io/{subject}: ")
            for annotations in allowed:
                reply = session.post(
                    url, json=admission_review(kserve_predictor_pod(annotations)), timeout=10
                )
                assert reply.json()["response"]["allowed"] is True and decode_patch(reply.json())
            # The dedicated audience reaches the injected pod.
            reply = session.post(url, json=admission_review(kserve_predictor_pod()), timeout=10)
            volumes = [op["value"] for op in decode_patch(reply.json()) if op["path"] == "/spec/volumes/-"]
            audiences = [
                source["serviceAccountToken"]["audience"]
                for volume in volumes
                for source in volume.get("projected", {}).get("sources", [])
            ]
            assert audiences == ["vault.corp.example"]


def test_the_webhook_command_in_gateway_mode_injects_predictors_and_localmodel_pods(
    tls_files: tuple[pathlib.Path, pathlib.Path, pathlib.Path],
) -> None:
    from tests.webhook.test_inject_gateway import GATEWAY_URL, localmodel_download_pod

    settings = {
        "TOKENSIDECAR_INJECT_MODE": "gateway",
        "TOKENSIDECAR_INJECT_GATEWAY_URL": GATEWAY_URL,
        "TOKENSIDECAR_LOCALMODEL_MODE": "gateway",
    }
    with _webhook_command(tls_files, **settings) as server:
        url = f"{server.url}/mutate"
        with client(server.ca_file) as session:
            predictor = kserve_predictor_pod({"tokensidecar.io/inject": "true"})
            localmodel = localmodel_download_pod()
            review = admission_review(localmodel)
            review["request"]["namespace"] = "kserve-localmodel-jobs"
            for pod, sent in ((predictor, admission_review(predictor)), (localmodel, review)):
                reply = session.post(url, json=sent, timeout=10).json()
                assert reply["response"]["allowed"] is True
                patched = jsonpatch.apply_patch(pod, decode_patch(reply))
                containers = patched["spec"].get("initContainers", []) + patched["spec"]["containers"]
                assert all(c["name"] != "tokensidecar" for c in containers)
                for item in containers:
                    env_names = {e["name"]: e.get("value") for e in item.get("env", [])}
                    assert env_names["HF_ENDPOINT"] == GATEWAY_URL and "HF_TOKEN" not in env_names


def test_the_webhook_command_judges_gateway_pods_by_the_policy_in_force(
    tls_files: tuple[pathlib.Path, pathlib.Path, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    from tests.webhook.test_inject_gateway import GATEWAY_URL, gateway_predictor

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("rules:\n  - subjects: [{namespace: kserve-test}]\n    repos: [acme/*]\n")
    settings = {
        "TOKENSIDECAR_INJECT_GATEWAY_URL": GATEWAY_URL,
        "TOKENSIDECAR_INJECT_GATEWAY_POLICY": str(policy_file),
    }
    pod = gateway_predictor(service_account="llama-server", uri="hf://meta-llama/Llama-3.1-8B-Instruct")
    with _webhook_command(tls_files, **settings) as server:
        url = f"{server.url}/mutate"
        with client(server.ca_file) as session:

            def allowed() -> bool:
                reply = session.post(url, json=admission_review(pod), timeout=10)
                response = reply.json()["response"]
                if not response["allowed"]:
                    assert response["status"]["message"].startswith("tokensidecar: storageUri: ")
                return bool(response["allowed"])

            assert allowed() is False  # denied at admission: no rule grants meta-llama/*
            # The ConfigMap changes (written whole, as the kubelet swaps it): the new rule holds.
            staged = tmp_path / "policy.staged"
            staged.write_text("rules:\n  - subjects: [{namespace: kserve-test}]\n    repos: [meta-llama/*]\n")
            staged.replace(policy_file)
            deadline = time.monotonic() + 30
            while not allowed():
                assert time.monotonic() < deadline, "the new policy was never applied"
                time.sleep(0.2)


def test_an_invalid_gateway_policy_file_exits_2_naming_the_setting(
    tls_files: tuple[pathlib.Path, pathlib.Path, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    cert_file, key_file, _ = tls_files
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("rules: [{subjects: nobody}]\n")
    result = webhook_command_exit(
        {
            "TOKENSIDECAR_TLS_CERT_FILE": str(cert_file),
            "TOKENSIDECAR_TLS_KEY_FILE": str(key_file),
            "TOKENSIDECAR_INJECT_GATEWAY_POLICY": str(policy_file),
        }
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: TOKENSIDECAR_INJECT_GATEWAY_POLICY: "), lines

"""The gateway over HTTPS (``--tls-cert-file``/``--tls-key-file``): huggingface_hub trusts the
cluster CA and downloads through it (a cache hit over TLS cannot use sendfile: the copy
path), and a renewed certificate is served without a restart."""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.kube import KubeApi
from tests.gateway.conftest import KubeletVolume, ServiceAccountTokens
from tests.gateway.harness import HUB_SETUP, GatewayProcess, run_client
from tests.sidecar_process import wait_for
from tokensidecar.demo.hub import HubStandIn, serve_in_thread
from tokensidecar.webhook import certs

REPO = "acme/private-model"
BIG = "weights/model.safetensors"
FILES = {"config.json": b"{}\n", BIG: hashlib.sha256(b"tls").digest() * (2 * 1024 * 1024 // 32)}


@pytest.fixture
def hub() -> Iterator[HubStandIn]:
    with serve_in_thread(HubStandIn(files=FILES, lfs_files=(BIG,))) as started:
        yield started


def _write(directory: Path, pair: certs.KeyPair) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.key").write_bytes(pair.key_pem)
    (directory / "tls.crt").write_bytes(pair.cert_pem)


def _served_serial(port: int, ca_file: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def test_https_download_and_certificate_reload(
    hub: HubStandIn,
    cluster: ServiceAccountTokens,
    kube_api: KubeApi,
    projected_token: KubeletVolume,
    tmp_path: Path,
) -> None:
    ca = certs.generate_ca(common_name="cluster-ca")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    first = certs.issue_serving_cert(ca, dns_names=["localhost"])
    _write(tmp_path / "tls", first)
    gateway = GatewayProcess.in_front_of(
        hub,
        kube_api=kube_api,
        tmp_path=tmp_path,
        env={
            "TOKENSIDECAR_TLS_CERT_FILE": str(tmp_path / "tls/tls.crt"),
            "TOKENSIDECAR_TLS_KEY_FILE": str(tmp_path / "tls/tls.key"),
        },
    )
    projected_token.write(cluster.issue(namespace="team-a", service_account="predictor"))
    endpoint = f"https://localhost:{gateway.port}"
    gateway._alive_and_listening = lambda: (
        gateway.process is not None and _tls_up(gateway.port, tmp_path / "ca.crt")
    )  # type: ignore[method-assign]
    with gateway:
        for home in ("cold", "warm"):  # a miss (streamed from the fill), then a hit (TLS copy path)
            result = run_client(
                f"hashlib.sha256(open(hf_hub_download({REPO!r}, {BIG!r}), 'rb').read()).hexdigest()",
                endpoint=endpoint,
                token_path=projected_token.path,
                home=tmp_path / home,
                setup=HUB_SETUP + "import hashlib\n",
                env={"SSL_CERT_FILE": str(tmp_path / "ca.crt")},
            )
            assert result == {"ok": True, "value": hashlib.sha256(FILES[BIG]).hexdigest()}, result
        assert _served_serial(gateway.port, tmp_path / "ca.crt") == first.certificate.serial_number
        renewed = certs.issue_serving_cert(ca, dns_names=["localhost"])
        _write(tmp_path / "tls", renewed)
        wait_for(
            lambda: _served_serial(gateway.port, tmp_path / "ca.crt") == renewed.certificate.serial_number,
            timeout=30,
        )


def _tls_up(port: int, ca_file: Path) -> bool:
    try:
        _served_serial(port, ca_file)
    except OSError:
        return False
    return True

"""Upstream credentials: real sources (file, OpenBao, the Kubernetes API), verified at the Hub
stand-in as the upstream, kept fresh by the sidecar's refresher, and never written to disk."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import pathlib
import secrets
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx2
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.fixtures.jwt import JwtIssuer
from tests.fixtures.kube import KubeApi
from tests.gateway.conftest import KubeletVolume, ServiceAccountTokens
from tests.gateway.harness import GatewayProcess
from tests.sidecar_process import wait_for
from tokensidecar.config import ConfigError, resolve
from tokensidecar.demo.hub import HubStandIn, serve_in_thread
from tokensidecar.demo.openbao import DevServer
from tokensidecar.gateway.credentials import CREDENTIAL_SETTINGS, CredentialStore
from tokensidecar.logs import JsonFormatter
from tokensidecar.sidecar.metrics import SidecarMetrics
from tokensidecar.sidecar.settings import sidecar_settings

DEFAULT_TOKEN_FILE = pathlib.Path("/var/run/tokensidecar/token")


async def until(predicate: Callable[[], bool], *, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def files_containing(directory: pathlib.Path, value: str) -> list[pathlib.Path]:
    needle = value.encode()
    found = []
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if needle in path.read_bytes():
                    found.append(path)
            except OSError:
                continue
    return found


@pytest.fixture
def secret_volume(tmp_path: pathlib.Path) -> KubeletVolume:
    """A kubelet-mounted Secret volume holding the upstream token (the ``file`` source)."""
    directory = tmp_path / "hf-secret"
    directory.mkdir()
    return KubeletVolume(directory=directory, name="token")


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
async def stores() -> AsyncIterator[list[CredentialStore]]:
    """Stores a test opened; all closed (refreshers stopped, sources closed) at the end."""
    opened: list[CredentialStore] = []
    yield opened
    for store in opened:
        await store.aclose()


async def test_file_credential_rotates_in_memory_and_a_rejected_token_keeps_the_last_good(
    hub: HubStandIn, secret_volume: KubeletVolume, stores: list[CredentialStore], logs: io.StringIO
) -> None:
    first, second = hub.issue_token(), hub.issue_token()
    secret_volume.write(first)
    registry = CollectorRegistry()
    store = CredentialStore.from_yaml(
        f"credentials:\n  mounted:\n    source: file\n    source-file: {secret_volume.path}\n"
        "    verify: whoami\n",
        upstream=hub.url,
        environ={},
        registry=registry,
    )
    stores.append(store)
    assert store.names() == frozenset({"mounted"})
    assert store.readiness(["mounted"]) == (False, "credential 'mounted': no token published yet")
    await store.start()
    await until(lambda: store.token("mounted") == first)
    assert store.readiness(["mounted"]) == (True, "credentials ready")

    secret_volume.write(second)  # the rotation job updated the Secret; kubelet swapped ..data
    await until(lambda: store.token("mounted") == second)

    unknown_to_the_hub = "hf_" + secrets.token_hex(16)
    secret_volume.write(unknown_to_the_hub)
    await until(lambda: store.status()["mounted"]["consecutive_failures"] >= 1)
    assert store.token("mounted") == second  # the verified token stays
    assert store.readiness(["mounted"])[0]
    assert hub.calls["whoami"] >= 3

    exposition = generate_latest(registry).decode()
    assert 'tokensidecar_rotations_total{credential="mounted",result="success"} 2.0' in exposition
    assert 'tokensidecar_verify_total{credential="mounted",result="rejected"}' in exposition
    assert 'tokensidecar_ready{credential="mounted"} 1.0' in exposition
    assert "process_" not in exposition  # the gateway's registry has its own
    for value in (first, second, unknown_to_the_hub):
        assert value not in exposition
        assert value not in logs.getvalue()
        assert value not in str(store.status())
    # kubelet removed the old version from the volume; the gateway wrote the tokens nowhere.
    assert not DEFAULT_TOKEN_FILE.exists() or second not in DEFAULT_TOKEN_FILE.read_text()
    assert files_containing(secret_volume.directory.parent, first) == []
    assert files_containing(secret_volume.directory.parent, second) == []
    assert [p.name for p in files_containing(secret_volume.directory, unknown_to_the_hub)] == ["token"]


async def test_vault_credential_from_openbao_uses_the_gateways_vault_settings(
    openbao: DevServer, hub: HubStandIn, tmp_path: pathlib.Path, stores: list[CredentialStore]
) -> None:
    path = f"secret/gateway-{secrets.token_hex(4)}/acme"
    first, second = hub.issue_token(), hub.issue_token()
    openbao.put_kv(path, {"token": first})
    token_file = tmp_path / "vault-token"
    token_file.write_text(openbao.root_token)
    text = f"""
        credentials:
          default:
            source: vault
            vault-path: {path}
            vault-auth: token
            vault-token-file: {token_file}
            refresh-interval: 1s
            verify: repo
            model-id: {hub.repo_id}
    """
    store = CredentialStore.from_yaml(
        textwrap.dedent(text), upstream=hub.url, environ={"VAULT_ADDR": openbao.addr}
    )
    stores.append(store)
    await store.start()
    await until(lambda: store.token("default") == first)
    openbao.put_kv(path, {"token": second})  # rotated in Vault: seen at the next poll
    await until(lambda: store.token("default") == second)
    assert files_containing(tmp_path, first) == files_containing(tmp_path, second) == []
    assert not DEFAULT_TOKEN_FILE.exists() or second not in DEFAULT_TOKEN_FILE.read_text()


async def test_kubernetes_secret_credential_is_watched(
    kube_api: KubeApi, hub: HubStandIn, tmp_path: pathlib.Path, stores: list[CredentialStore]
) -> None:
    first, second = hub.issue_token(), hub.issue_token()
    kube_api.put_secret("hf-partner-token", {"token": first}, namespace="gateway")
    text = """
        credentials:
          partner:
            source: kubernetes-secret
            secret-name: hf-partner-token
            secret-namespace: gateway
    """
    store = CredentialStore.from_yaml(
        textwrap.dedent(text), upstream=hub.url, environ={"KUBECONFIG": str(kube_api.kubeconfig_path)}
    )
    stores.append(store)
    await store.start()
    await until(lambda: store.token("partner") == first)
    kube_api.put_secret("hf-partner-token", {"token": second}, namespace="gateway")
    await until(lambda: store.token("partner") == second)
    assert files_containing(tmp_path, first) == files_containing(tmp_path, second) == []


async def test_several_credentials_are_independent(
    hub: HubStandIn, tmp_path: pathlib.Path, stores: list[CredentialStore]
) -> None:
    volumes = {}
    for name in ("default", "partner"):
        (tmp_path / name).mkdir()
        volumes[name] = KubeletVolume(directory=tmp_path / name)
    good = hub.issue_token()
    volumes["default"].write(good)
    volumes["partner"].write("hf_" + secrets.token_hex(16))  # the Hub refuses it
    text = "credentials:\n" + "".join(
        f"  {name}:\n    source: file\n    source-file: {volume.path}\n" for name, volume in volumes.items()
    )
    store = CredentialStore.from_yaml(text, upstream=hub.url, environ={})
    stores.append(store)
    await store.start()
    await until(lambda: store.token("default") == good)
    await until(lambda: store.status()["partner"]["consecutive_failures"] >= 1)
    assert store.token("partner") is None
    assert store.readiness(["default"]) == (True, "credentials ready")
    ready, reason = store.readiness(["default", "partner", "nobody"])
    assert not ready
    assert "credential 'nobody' is not defined" in reason
    assert "credential 'partner': no token published yet; last error: the Hub rejected" in reason
    assert store.token("nobody") is None


async def test_without_a_file_the_sidecar_settings_make_the_default_credential(
    hub: HubStandIn, secret_volume: KubeletVolume, stores: list[CredentialStore]
) -> None:
    token = hub.issue_token()
    secret_volume.write(token)
    environ = {"TOKENSIDECAR_SOURCE": "file", "TOKENSIDECAR_SOURCE_FILE": str(secret_volume.path)}
    config = resolve(CREDENTIAL_SETTINGS, {}, environ=environ)
    store = CredentialStore.from_sidecar_config(config, upstream=hub.url)
    stores.append(store)
    assert store.names() == frozenset({"default"})
    await store.start()
    await until(lambda: store.token("default") == token)


def test_the_sidecars_own_metrics_are_unchanged() -> None:
    exposition = generate_latest(SidecarMetrics(source="file").registry).decode()
    assert "credential=" not in exposition
    assert 'tokensidecar_rotations_total{result="success"} 0.0' in exposition


def test_credential_settings_are_the_sidecars_source_settings() -> None:
    names = {setting.name for setting in CREDENTIAL_SETTINGS}
    assert {
        "source",
        "vault_path",
        "secret_name",
        "source_file",
        "oidc_resource",
        "verify",
        "model_id",
    } <= names
    assert names.isdisjoint({"token_file", "file_mode", "listen", "notify_url", "hf_endpoint"})
    assert names <= {setting.name for setting in sidecar_settings()}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("credentials: {}", "credentials: must map at least one name"),
        ("creds: {}", "must be a mapping with one key, credentials"),
        ("credentials: [a]", "credentials: must map at least one name"),
        ("credentials: {a: {source: file, source-file: /x, bogus: 1}}", "credentials.a.bogus: not a setting"),
        ("credentials: {a: {source: file, token-file: /x}}", "credentials.a.token-file: not a setting"),
        ("credentials: {a: {source: vault, vault-token: s.x}}", "credentials.a.vault-token: not a setting"),
        ("credentials: {a: {source-file: /x}}", "credentials.a.source: is required"),
        ("credentials: {a: {source: ftp}}", "credentials.a.source: 'ftp' is not one of"),
        (
            "credentials: {a: {source: file}}",
            "credentials.a.source-file is required when credentials.a.source=file",
        ),
        ("credentials: {a: {source: vault, vault-addr: 'http://v'}}", "credentials.a.vault-path is required"),
        (
            "credentials: {a: {source: file, source-file: /x, refresh-interval: soon}}",
            "credentials.a.refresh-interval",
        ),
        (
            "credentials: {a: {source: file, source-file: [/x]}}",
            "credentials.a.source-file: must be a string",
        ),
        (
            "credentials: {a: {source: file, source-file: /x, verify: repo}}",
            "credentials.a.model-id is required",
        ),
        ("credentials: {Bad Name: {source: file}}", "credentials.Bad Name: a name is lower-case"),
        ("credentials: {a: 1}", "credentials.a: must be a mapping of settings"),
        ("credentials: {a: {source: file\n", "line"),
    ],
)
def test_invalid_credentials_files_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        CredentialStore.from_yaml(text, upstream="https://huggingface.co", environ={})
    assert raised.value.setting == "TOKENSIDECAR_GATEWAY_CREDENTIALS"
    assert str(raised.value).startswith("TOKENSIDECAR_GATEWAY_CREDENTIALS: " + message), str(raised.value)


def test_unreadable_file_names_the_setting(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="TOKENSIDECAR_GATEWAY_CREDENTIALS: cannot read"):
        CredentialStore.from_file(tmp_path / "missing.yaml", upstream="https://huggingface.co")


async def test_oidc_exchange_credential_is_minted_at_the_upstream(
    hub: HubStandIn, oidc_issuer: JwtIssuer, projected_token: KubeletVolume, stores: list[CredentialStore]
) -> None:
    projected_token.write(oidc_issuer.mint())  # aud: https://huggingface.co, as the Hub requires
    text = f"""
        credentials:
          exchanged:
            source: oidc-exchange
            oidc-resource: {hub.repo_id}
            oidc-token-file: {projected_token.path}
    """
    # HF_ENDPOINT in the gateway's environment is not where exchanges go: the upstream is.
    store = CredentialStore.from_yaml(
        textwrap.dedent(text), upstream=hub.url, environ={"HF_ENDPOINT": "http://127.0.0.1:9"}
    )
    stores.append(store)
    await store.start()
    await until(lambda: store.token("exchanged") is not None)
    token = store.token("exchanged")
    assert token is not None and token.startswith("hf_jwt_") and hub.is_valid(token)
    assert hub.calls["oauth_token"] == 1
    assert store.status()["exchanged"]["expires_at"] is not None  # the exchange's expires_in
    assert files_containing(projected_token.directory.parent, token) == []


# -- the real gateway: a rotation mid-download --------------------------------------------

BIG = "weights/model.bin"
BIG_CONTENT = hashlib.sha256(b"rotation").digest() * (8 * 1024 * 1024 // 32)  # 8 MiB


@pytest.fixture
def big_hub() -> Iterator[HubStandIn]:
    files = {"config.json": b"{}\n", "README.md": b"# model\n", BIG: BIG_CONTENT}
    with serve_in_thread(HubStandIn(files=files)) as started:
        yield started


def test_rotation_mid_download_keeps_the_download_and_moves_new_requests_to_the_new_token(
    big_hub: HubStandIn, cluster: ServiceAccountTokens, kube_api: KubeApi, tmp_path: pathlib.Path
) -> None:
    hub = big_hub
    old, new = hub.issue_token(), hub.issue_token()
    caller = cluster.issue(namespace="team-a", service_account="predictor")
    gateway = GatewayProcess.in_front_of(hub, kube_api=kube_api, tmp_path=tmp_path, upstream_token=old)
    headers = {"Authorization": f"Bearer {caller}"}
    hub.stall_next_body(1, after=2 * 1024 * 1024, delay=8.0)
    received = bytearray()
    with gateway:
        gateway.wait_until_ready()

        def download() -> None:
            url = f"{gateway.url}/{hub.repo_id}/resolve/main/{BIG}"
            with httpx2.stream("GET", url, headers=headers, timeout=60) as response:
                for chunk in response.iter_bytes():
                    received.extend(chunk)

        reader = threading.Thread(target=download)
        reader.start()
        wait_for(lambda: len(received) > 0, timeout=30)
        # The rotation job writes a new token and revokes the old one while the body streams.
        (tmp_path / "gw" / "next-token").write_text(new)
        os.replace(tmp_path / "gw" / "next-token", tmp_path / "gw" / "upstream-token")
        wait_for(
            lambda: (
                gateway.metric("tokensidecar_rotations_total", 'credential="default",result="success"') == 2.0
            ),
            timeout=30,
        )
        hub.revoke(old)
        in_flight_at_revocation = len(received)
        reader.join(timeout=60)
        assert 0 < in_flight_at_revocation < len(BIG_CONTENT)
        assert hashlib.sha256(received).hexdigest() == hashlib.sha256(BIG_CONTENT).hexdigest()
        after = httpx2.get(f"{gateway.url}/{hub.repo_id}/resolve/main/README.md", headers=headers, timeout=30)
        assert (after.status_code, after.content) == (200, b"# model\n")
    fingerprint = hashlib.sha256(new.encode()).hexdigest()[:12]
    assert hub.downloads_by_token[fingerprint] >= 1  # README.md came with the new token
    assert old not in gateway.logs and new not in gateway.logs
    assert not [p for p in gateway.cache_dir.rglob("*") if p.is_file() and new.encode() in p.read_bytes()]

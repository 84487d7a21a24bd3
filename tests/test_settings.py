"""Each room's settings: resolved once at the door into frozen, typed values, each check
made once (an endpoint, a model id, a Vault login, a kubeconfig), a bad one a ConfigError
that names the setting."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path
from typing import Any

import pytest

from tokensidecar.backends.settings import HubSettings, KubernetesSettings, VaultSettings, VerifySettings
from tokensidecar.backends.vault import KvPath
from tokensidecar.config import Config, ConfigError, resolve
from tokensidecar.demo.settings import SETTINGS as DEMO_SETTINGS
from tokensidecar.demo.settings import DemoSettings
from tokensidecar.gateway.settings import SETTINGS as GATEWAY_SETTINGS
from tokensidecar.gateway.settings import GatewaySettings
from tokensidecar.rotate.settings import SETTINGS as ROTATE_SETTINGS
from tokensidecar.rotate.settings import (
    CommandIssuerSettings,
    RotationSettings,
    SecretTargetSettings,
    VaultTargetSettings,
)
from tokensidecar.sidecar.settings import NotifySettings, SidecarSettings, sidecar_settings
from tokensidecar.sources.settings import (
    FileSourceSettings,
    OidcExchangeSettings,
    VaultSourceSettings,
    resolve_source,
)
from tokensidecar.webhook.settings import SETTINGS as WEBHOOK_SETTINGS
from tokensidecar.webhook.settings import WebhookSettings


def sidecar(**environ: str) -> Config:
    return resolve(sidecar_settings(), {}, environ)


def test_the_sidecar_settings_are_typed_and_frozen(tmp_path: Path) -> None:
    settings = SidecarSettings.resolve(
        sidecar(
            TOKENSIDECAR_SOURCE="file",
            TOKENSIDECAR_SOURCE_FILE=str(tmp_path / "token"),
            TOKENSIDECAR_VERIFY="none",
            TOKENSIDECAR_LISTEN="127.0.0.1:0",
            TOKENSIDECAR_REFRESH_INTERVAL="5m",
        )
    )
    assert settings.source == FileSourceSettings(path=str(tmp_path / "token"))
    assert settings.verify == VerifySettings(mode="none")
    assert (settings.token_file, settings.file_mode) == ("/var/run/tokensidecar/token", 0o440)
    assert settings.listen == ("127.0.0.1", 0)
    assert (settings.refresh_interval, settings.max_backoff) == (300.0, 60.0)
    assert settings.on_hub_outage == "publish"
    assert settings.notify is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.token_file = "/elsewhere"  # type: ignore[misc]


def test_the_vault_source_parses_its_path_once_and_carries_the_sidecar_backoff() -> None:
    settings = resolve_source(
        sidecar(
            VAULT_ADDR="https://vault:8200",
            TOKENSIDECAR_VAULT_PATH="/secret/hf/model-a/",
            TOKENSIDECAR_VAULT_AUTH="token",
            VAULT_TOKEN="s.root",
            VAULT_SKIP_VERIFY="true",
        ),
        max_backoff=5.0,
    )
    assert isinstance(settings, VaultSourceSettings)
    assert settings.path == KvPath(mount="secret", path="hf/model-a")
    assert (settings.key, settings.kv_version) == ("token", 2)
    assert (settings.vault.addr, settings.vault.tls_verify, settings.vault.max_backoff) == (
        "https://vault:8200",
        False,
        5.0,
    )
    assert settings.vault.login.method == "token"
    assert "s.root" not in repr(settings)


def test_hf_endpoint_is_checked_once_for_every_room_that_uses_it() -> None:
    bad = {"HF_ENDPOINT": "huggingface.co"}
    with pytest.raises(ConfigError, match=r"HF_ENDPOINT: 'huggingface\.co' is not an http"):
        HubSettings.resolve(sidecar(**bad))
    with pytest.raises(ConfigError, match="HF_ENDPOINT"):
        VerifySettings.resolve(sidecar(**bad))
    with pytest.raises(ConfigError, match="HF_ENDPOINT"):
        OidcExchangeSettings.resolve(
            sidecar(**bad, TOKENSIDECAR_OIDC_RESOURCE="org/model", TOKENSIDECAR_OIDC_TOKEN_FILE="/sa/token")
        )
    rotate = resolve(
        ROTATE_SETTINGS,
        {},
        {
            **bad,
            "TOKENSIDECAR_ISSUER": "oidc-exchange",
            "TOKENSIDECAR_OIDC_RESOURCE": "org/model",
            "TOKENSIDECAR_OIDC_TOKEN_FILE": "/sa/token",
        },
    )
    with pytest.raises(ConfigError, match="HF_ENDPOINT"):
        RotationSettings.resolve(rotate)
    assert HubSettings.resolve(sidecar(HF_ENDPOINT=" https://hub.local/ ")).endpoint == "https://hub.local"


def test_verification_none_needs_no_endpoint_and_a_model_must_be_org_slash_name() -> None:
    assert VerifySettings.resolve(sidecar(TOKENSIDECAR_VERIFY="none", HF_ENDPOINT="nope")).hub is None
    with pytest.raises(ConfigError, match="TOKENSIDECAR_MODEL_ID: 'a/b/c' is not a repository id"):
        VerifySettings.resolve(sidecar(TOKENSIDECAR_VERIFY="scope", TOKENSIDECAR_MODEL_ID="a/b/c"))
    settings = VerifySettings.resolve(sidecar(TOKENSIDECAR_VERIFY="repo", TOKENSIDECAR_MODEL_ID="org/model"))
    assert settings == VerifySettings(
        mode="repo", model_id="org/model", hub=HubSettings(endpoint="https://huggingface.co")
    )


def test_a_vault_ca_bundle_must_exist(tmp_path: Path) -> None:
    environ = {"VAULT_ADDR": "https://vault:8200", "TOKENSIDECAR_VAULT_AUTH": "token", "VAULT_TOKEN": "t"}
    with pytest.raises(ConfigError, match="VAULT_CACERT"):
        VaultSettings.resolve(sidecar(**environ, VAULT_CACERT=str(tmp_path / "missing.pem")))
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert VaultSettings.resolve(sidecar(**environ, VAULT_CACERT=str(bundle))).tls_verify == str(bundle)


def test_an_unusable_kubeconfig_is_a_configuration_error_naming_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"KUBECONFIG: .*missing does not exist"):
        KubernetesSettings.for_kubeconfig(str(tmp_path / "missing"))


def test_notifications_name_the_signal_and_default_to_sighup() -> None:
    assert NotifySettings.resolve(sidecar()) is None
    only_names = NotifySettings.resolve(sidecar(TOKENSIDECAR_NOTIFY_PROCESS="vllm, tgi"))
    assert only_names == NotifySettings(
        signal_number=int(signal.SIGHUP), process_names=frozenset({"vllm", "tgi"})
    )
    with pytest.raises(ConfigError, match="TOKENSIDECAR_NOTIFY_SIGNAL"):
        NotifySettings.resolve(sidecar(TOKENSIDECAR_NOTIFY_SIGNAL="SIGNOPE", TOKENSIDECAR_NOTIFY_PROCESS="x"))


def rotation(**environ: str) -> Config:
    return resolve(ROTATE_SETTINGS, {}, environ)


def test_the_rotation_settings_prove_repo_access_when_a_model_is_named(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u, namespace: models}}]\n"
        "users: [{name: u, user: {token: x}}]\n"
    )
    settings = RotationSettings.resolve(
        rotation(
            TOKENSIDECAR_ISSUER="command",
            TOKENSIDECAR_ISSUER_COMMAND='["mint-hf-token", "--org", "acme"]',
            TOKENSIDECAR_SECRET_NAME="hf-token",
            KUBECONFIG=str(kubeconfig),
            TOKENSIDECAR_MODEL_ID="org/model",
            TOKENSIDECAR_REVOKE_AFTER="1h",
        )
    )
    assert settings.issuer == CommandIssuerSettings(argv=("mint-hf-token", "--org", "acme"), timeout=60.0)
    assert isinstance(settings.target, SecretTargetSettings)
    assert (settings.target.name, settings.target.namespace, settings.target.key) == (
        "hf-token",
        "models",
        "token",
    )
    assert (settings.verify.mode, settings.verify.model_id) == ("repo", "org/model")
    assert (settings.revoke_after, settings.min_remaining, settings.dry_run) == (3600.0, None, False)
    assert settings.store_unverified_on_outage is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.dry_run = True  # type: ignore[misc]


def test_a_vault_target_needs_kv_v2() -> None:
    environ = {"VAULT_ADDR": "https://vault:8200", "TOKENSIDECAR_VAULT_PATH": "secret/hf"}
    with pytest.raises(ConfigError, match="TOKENSIDECAR_VAULT_KV_VERSION"):
        VaultTargetSettings.resolve(rotation(**environ, TOKENSIDECAR_VAULT_KV_VERSION="1"))


def webhook(**environ: str) -> Config:
    return resolve(WEBHOOK_SETTINGS, {}, environ)


def test_the_webhook_settings_carry_the_injection_defaults() -> None:
    settings = WebhookSettings.resolve(
        webhook(TOKENSIDECAR_TLS_CERT_FILE="/tls/tls.crt", TOKENSIDECAR_TLS_KEY_FILE="/tls/tls.key")
    )
    assert (settings.tls_cert_file, settings.tls_key_file, settings.self_signed) == (
        "/tls/tls.crt",
        "/tls/tls.key",
        None,
    )
    assert settings.listen == ("0.0.0.0", 8443)
    assert settings.injection.verify == "whoami"
    with pytest.raises(ConfigError, match="cannot be combined with --self-signed"):
        WebhookSettings.resolve(
            webhook(TOKENSIDECAR_SELF_SIGNED="true", TOKENSIDECAR_TLS_CERT_FILE="/tls/tls.crt")
        )


def test_the_gateway_needs_both_tls_files_or_neither() -> None:
    with pytest.raises(ConfigError, match="go together"):
        GatewaySettings.resolve(
            resolve(
                GATEWAY_SETTINGS,
                {},
                {"TOKENSIDECAR_GATEWAY_POLICY": "/policy.yaml", "TOKENSIDECAR_TLS_CERT_FILE": "/tls.crt"},
            )
        )


def test_the_demo_settings_list_the_flows() -> None:
    settings = DemoSettings.resolve(resolve(DEMO_SETTINGS, {"demo_flow": "gateway"}, {}))
    assert (settings.flows, settings.rotations, settings.forever) == (("gateway",), 3, False)


@pytest.mark.parametrize(
    "frozen",
    [
        HubSettings(endpoint="https://hub"),
        VerifySettings(mode="none"),
        FileSourceSettings(path="/token"),
        NotifySettings(url="http://predictor/reload"),
        DemoSettings(),
    ],
    ids=lambda value: type(value).__name__,
)
def test_each_settings_object_is_frozen(frozen: Any) -> None:
    field = dataclasses.fields(frozen)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(frozen, field, None)

"""The webhook's settings (:mod:`tokensidecar.webhook.settings`): the injection defaults,
TLS files that cannot be combined with a self-signed certificate, and allow-lists read from
the environment."""

from __future__ import annotations

import jsonpatch
import pytest

from tokensidecar.config import Config, ConfigError, resolve
from tokensidecar.webhook.inject import SA_TOKEN_VOLUME, InvalidInjection, inject
from tokensidecar.webhook.settings import SETTINGS as WEBHOOK_SETTINGS
from tokensidecar.webhook.settings import WebhookSettings


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


def test_allowed_token_audiences_from_the_environment_confine_the_annotation() -> None:
    settings = WebhookSettings.resolve(
        webhook(
            TOKENSIDECAR_TLS_CERT_FILE="/tls/tls.crt",
            TOKENSIDECAR_TLS_KEY_FILE="/tls/tls.key",
            TOKENSIDECAR_INJECT_VAULT_ADDR="https://vault.vault:8200",
            TOKENSIDECAR_ALLOWED_TOKEN_AUDIENCES=" vault.team-a ,tokensidecar-gateway,",
        )
    ).injection
    assert settings.allowed_token_audiences == ("vault.team-a", "tokensidecar-gateway")

    def pod(audience: str) -> dict[str, object]:
        annotations = {
            "tokensidecar.io/inject": "true",
            "tokensidecar.io/vault-path": "secret/hf/llama",
            "tokensidecar.io/vault-role": "llama-predictor",
            "tokensidecar.io/token-audience": audience,
        }
        return {
            "metadata": {"name": "llama", "namespace": "models", "annotations": annotations},
            "spec": {"containers": [{"name": "kserve-container", "image": "kserve/huggingfaceserver"}]},
        }

    injected = jsonpatch.apply_patch(pod("vault.team-a"), inject(pod("vault.team-a"), settings=settings))
    (volume,) = [v for v in injected["spec"]["volumes"] if v["name"] == SA_TOKEN_VOLUME]
    assert volume["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "vault.team-a"
    for audience in ("vault.team-b", "tokensidecar-gateway"):
        with pytest.raises(InvalidInjection) as caught:
            inject(pod(audience), settings=settings)
        assert caught.value.subject == "tokensidecar.io/token-audience"
    with pytest.raises(ConfigError, match="TOKENSIDECAR_ALLOWED_TOKEN_AUDIENCES"):
        WebhookSettings.resolve(webhook(TOKENSIDECAR_ALLOWED_TOKEN_AUDIENCES="vault, my audience"))

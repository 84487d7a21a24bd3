"""The webhook's settings (:mod:`tokensidecar.webhook.settings`): the injection defaults,
and TLS files that cannot be combined with a self-signed certificate."""

from __future__ import annotations

import pytest

from tokensidecar.config import Config, ConfigError, resolve
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

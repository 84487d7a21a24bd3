"""The gateway's settings (:mod:`tokensidecar.gateway.settings`): its TLS files come in pairs."""

from __future__ import annotations

import pytest

from tokensidecar.config import ConfigError, resolve
from tokensidecar.gateway.settings import SETTINGS as GATEWAY_SETTINGS
from tokensidecar.gateway.settings import GatewaySettings


def test_the_gateway_needs_both_tls_files_or_neither() -> None:
    with pytest.raises(ConfigError, match="go together"):
        GatewaySettings.resolve(
            resolve(
                GATEWAY_SETTINGS,
                {},
                {"TOKENSIDECAR_GATEWAY_POLICY": "/policy.yaml", "TOKENSIDECAR_TLS_CERT_FILE": "/tls.crt"},
            )
        )

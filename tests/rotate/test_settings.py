"""The rotation job's settings (:mod:`tokensidecar.rotate.settings`): the issuer, the target
and verification resolved once, at the door, into frozen, typed values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tokensidecar.config import Config, ConfigError, resolve
from tokensidecar.rotate.settings import SETTINGS as ROTATE_SETTINGS
from tokensidecar.rotate.settings import (
    CommandIssuerSettings,
    RotationSettings,
    SecretTargetSettings,
    VaultTargetSettings,
)


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

"""The upstreams' settings (:mod:`tokensidecar.backends.settings`): each check made once (an
endpoint, a model id, a Vault CA bundle, a kubeconfig), for every room that uses it; a bad
value a ConfigError that names the setting."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from tokensidecar.backends.settings import HubSettings, KubernetesSettings, VaultSettings, VerifySettings
from tokensidecar.config import Config, ConfigError, resolve
from tokensidecar.rotate.settings import SETTINGS as ROTATE_SETTINGS
from tokensidecar.rotate.settings import RotationSettings
from tokensidecar.sidecar.settings import sidecar_settings
from tokensidecar.sources.settings import OidcExchangeSettings


def sidecar(**environ: str) -> Config:
    return resolve(sidecar_settings(), {}, environ)


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


@pytest.mark.parametrize(
    "frozen",
    [HubSettings(endpoint="https://hub"), VerifySettings(mode="none")],
    ids=lambda value: type(value).__name__,
)
def test_each_settings_object_is_frozen(frozen: Any) -> None:
    field = dataclasses.fields(frozen)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(frozen, field, None)


@pytest.mark.parametrize("model_id", ["../x", "org/my model", "-org/x", "org/x\n", "org", "org/x/y"])
def test_a_model_id_that_is_not_org_slash_name_is_refused_at_the_door(model_id: str) -> None:
    # Put into /api/models/{id}/auth-check, "../x" would ask about another URL; every room
    # (sidecar, rotation job, gateway, webhook) refuses it with the same one check.
    with pytest.raises(ConfigError, match="TOKENSIDECAR_MODEL_ID"):
        VerifySettings.resolve(sidecar(TOKENSIDECAR_VERIFY="repo", TOKENSIDECAR_MODEL_ID=model_id))

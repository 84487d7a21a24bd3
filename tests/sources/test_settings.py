"""The sources' settings (:mod:`tokensidecar.sources.settings`): a Vault path parsed once,
at the door, and the sidecar's backoff carried to the Vault session."""

from __future__ import annotations

import dataclasses

import pytest

from tokensidecar.backends.vault import KvPath
from tokensidecar.config import Config, resolve
from tokensidecar.sidecar.settings import sidecar_settings
from tokensidecar.sources.settings import FileSourceSettings, VaultSourceSettings, resolve_source


def sidecar(**environ: str) -> Config:
    return resolve(sidecar_settings(), {}, environ)


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


def test_the_file_source_settings_are_frozen() -> None:
    frozen = FileSourceSettings(path="/token")
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(frozen, dataclasses.fields(frozen)[0].name, None)

"""The sidecar's settings (:mod:`tokensidecar.sidecar.settings`): resolved once at the door
into frozen, typed values; a bad notification signal is a ConfigError that names it."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import pytest

from tokensidecar.backends.settings import VerifySettings
from tokensidecar.config import Config, ConfigError, resolve
from tokensidecar.sidecar.settings import NotifySettings, SidecarSettings, sidecar_settings
from tokensidecar.sources.settings import FileSourceSettings


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


def test_notifications_name_the_signal_and_default_to_sighup() -> None:
    assert NotifySettings.resolve(sidecar()) is None
    only_names = NotifySettings.resolve(sidecar(TOKENSIDECAR_NOTIFY_PROCESS="vllm, tgi"))
    assert only_names == NotifySettings(
        signal_number=int(signal.SIGHUP), process_names=frozenset({"vllm", "tgi"})
    )
    with pytest.raises(ConfigError, match="TOKENSIDECAR_NOTIFY_SIGNAL"):
        NotifySettings.resolve(sidecar(TOKENSIDECAR_NOTIFY_SIGNAL="SIGNOPE", TOKENSIDECAR_NOTIFY_PROCESS="x"))


def test_the_notify_settings_are_frozen() -> None:
    frozen = NotifySettings(url="http://predictor/reload")
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(frozen, dataclasses.fields(frozen)[0].name, None)

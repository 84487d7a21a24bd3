"""Settings: durations, precedence (flag > environment > default), choices, booleans, file
modes and listen addresses, through the same ``resolve`` every command uses."""

from __future__ import annotations

import math

import pytest

from tokensidecar.config import (
    Config,
    ConfigError,
    Setting,
    parse_bool,
    parse_duration,
    parse_file_mode,
    parse_listen,
    resolve,
)
from tokensidecar.sidecar.settings import sidecar_settings


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1h2m3s", 3723.0),
        ("2s500ms", 2.5),
        ("1.5s", 1.5),
        ("1d", 86400.0),
        ("45", 45.0),
        ("0.25", 0.25),
        (" 10s ", 10.0),
        ("0", 0.0),
    ],
)
def test_durations_accept_units_combinations_and_bare_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "abc", "5x", "1m30", "s", "m5", "5 m", "1m 30s", "-5", "-5s", "5S", "1h-1m", "30s,"],
)
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "infinity"])
def test_durations_that_are_not_finite_are_refused(text: str) -> None:
    # A refresh interval of NaN or infinity would stop the refresh loop silently.
    with pytest.raises(ValueError):
        parse_duration(text)


def test_refresh_interval_must_be_positive() -> None:
    settings = sidecar_settings()
    with pytest.raises(ConfigError) as caught:
        resolve(settings, {}, {"TOKENSIDECAR_REFRESH_INTERVAL": "0s"})
    assert caught.value.setting == "TOKENSIDECAR_REFRESH_INTERVAL"
    assert "greater than zero" in str(caught.value)


def test_defaults_are_parsed_like_user_input() -> None:
    config = resolve(sidecar_settings(), {}, {})
    assert config.values["refresh_interval"] == 60.0
    assert config.values["max_backoff"] == 60.0
    assert config.values["file_mode"] == 0o440
    assert config.values["listen"] == ("0.0.0.0", 8099)
    assert config.values["source"] == "vault"
    assert config.values["token_file"] == "/var/run/tokensidecar/token"
    assert config.values["vault_skip_verify"] is False
    assert config.values["vault_kv_version"] == 2
    assert config.values["notify_url"] is None
    assert not config.is_set("source")


def test_flag_wins_over_environment_which_wins_over_default() -> None:
    settings = sidecar_settings()
    env = {"TOKENSIDECAR_REFRESH_INTERVAL": "5m", "TOKENSIDECAR_TOKEN_FILE": "/env/token"}
    config = resolve(settings, {"refresh_interval": "30s"}, env)
    assert config.values["refresh_interval"] == 30.0  # flag
    assert config.values["token_file"] == "/env/token"  # environment
    assert config.values["max_backoff"] == 60.0  # default
    assert config.is_set("refresh_interval")
    assert config.is_set("token_file")
    assert not config.is_set("max_backoff")


def test_empty_environment_value_falls_back_to_default() -> None:
    # Kubernetes renders `value: ""` for an unset Helm/Kustomize value; it means "not set".
    config = resolve(sidecar_settings(), {}, {"TOKENSIDECAR_REFRESH_INTERVAL": ""})
    assert config.values["refresh_interval"] == 60.0
    assert not config.is_set("refresh_interval")


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(sidecar_settings(), {}, {"TOKENSIDECAR_MAX_BACKOFF": "soon"})
    assert str(caught.value).startswith("TOKENSIDECAR_MAX_BACKOFF: ")
    assert "'soon' is not a duration" in str(caught.value)


def test_bad_flag_value_names_the_flag_the_user_typed() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(sidecar_settings(), {"max_backoff": "soon"}, {"TOKENSIDECAR_MAX_BACKOFF": "5s"})
    assert caught.value.setting == "--max-backoff"
    with pytest.raises(ConfigError) as caught:
        resolve(sidecar_settings(), {}, {"TOKENSIDECAR_MAX_BACKOFF": "soon"})
    assert caught.value.setting == "TOKENSIDECAR_MAX_BACKOFF"


def test_config_labels_a_setting_the_way_it_was_given() -> None:
    config = resolve(sidecar_settings(), {"vault_path": "secret/hf/a"}, {"VAULT_ADDR": "http://vault:8200"})
    assert config.label("vault_path") == "--vault-path"
    assert config.label("vault_addr") == "VAULT_ADDR"
    assert config.label("vault_role") == "TOKENSIDECAR_VAULT_ROLE"  # not given: its env var


def test_durations_accept_days() -> None:
    assert parse_duration("1d") == 86400
    assert parse_duration("1d12h") == 1.5 * 86400


def test_choices_are_enforced_with_the_list_of_valid_values() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(sidecar_settings(), {}, {"TOKENSIDECAR_SOURCE": "s3"})
    message = str(caught.value)
    assert message.startswith("TOKENSIDECAR_SOURCE: 's3' is not one of")
    for choice in ("vault", "kubernetes-secret", "file", "oidc-exchange"):
        assert choice in message
    config = resolve(sidecar_settings(), {"source": "file"}, {"TOKENSIDECAR_SOURCE": "s3"})
    assert config.values["source"] == "file"  # the flag wins before the bad env value is even read


def test_choices_are_case_sensitive() -> None:
    with pytest.raises(ConfigError):
        resolve(sidecar_settings(), {}, {"TOKENSIDECAR_VERIFY": "WHOAMI"})


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("off", False),
        ("", False),
    ],
)
def test_booleans(text: str, value: bool) -> None:
    assert parse_bool(text) is value


def test_bad_boolean_in_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(sidecar_settings(), {}, {"VAULT_SKIP_VERIFY": "maybe"})
    assert caught.value.setting == "VAULT_SKIP_VERIFY"


def test_boolean_flag_wins_over_environment_both_ways() -> None:
    settings = sidecar_settings()
    assert (
        resolve(settings, {"vault_skip_verify": False}, {"VAULT_SKIP_VERIFY": "true"}).values[
            "vault_skip_verify"
        ]
        is False
    )
    assert (
        resolve(settings, {"vault_skip_verify": True}, {"VAULT_SKIP_VERIFY": "false"}).values[
            "vault_skip_verify"
        ]
        is True
    )
    assert resolve(settings, {}, {"VAULT_SKIP_VERIFY": "true"}).values["vault_skip_verify"] is True


def test_env_only_setting_ignores_a_flag_value() -> None:
    # VAULT_TOKEN is never read from argv, where every local user could see it.
    config = resolve(sidecar_settings(), {"vault_token": "from-argv"}, {"VAULT_TOKEN": "from-env"})
    assert config.values["vault_token"] == "from-env"


@pytest.mark.parametrize(
    ("text", "mode"), [("0440", 0o440), ("440", 0o440), ("0600", 0o600), ("0", 0), ("777", 0o777)]
)
def test_file_modes_are_octal(text: str, mode: int) -> None:
    assert parse_file_mode(text) == mode


@pytest.mark.parametrize("text", ["rw-r-----", "0999", "1777", "-1", "", "0x1ff"])
def test_bad_file_modes_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_file_mode(text)


def test_file_mode_from_environment() -> None:
    config = resolve(sidecar_settings(), {}, {"TOKENSIDECAR_FILE_MODE": "0400"})
    assert config.values["file_mode"] == 0o400
    with pytest.raises(ConfigError) as caught:
        resolve(sidecar_settings(), {}, {"TOKENSIDECAR_FILE_MODE": "0999"})
    assert caught.value.setting == "TOKENSIDECAR_FILE_MODE"


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("0.0.0.0:8099", ("0.0.0.0", 8099)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        (":9000", ("0.0.0.0", 9000)),
        ("[::1]:8099", ("::1", 8099)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_listen_addresses(text: str, address: tuple[str, int]) -> None:
    assert parse_listen(text) == address


@pytest.mark.parametrize("text", ["8099", "host:", "host:http", "host:65536", "host:-1", ""])
def test_bad_listen_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


def test_require_names_the_environment_variable_and_the_condition() -> None:
    config = resolve(sidecar_settings(), {}, {})
    with pytest.raises(ConfigError) as caught:
        config.require("vault_path", when="--source=vault")
    assert str(caught.value) == "TOKENSIDECAR_VAULT_PATH is required when --source=vault"
    assert (
        resolve(sidecar_settings(), {}, {"TOKENSIDECAR_VAULT_PATH": "secret/a"}).require(
            "vault_path", when="--source=vault"
        )
        == "secret/a"
    )


def test_a_misspelt_setting_name_is_an_error_at_once() -> None:
    config = Config(values={"a": 1, "b": None})
    assert config.get("a", int) == 1
    assert config.optional("b", int) is None
    with pytest.raises(LookupError):
        config.get("c", int)
    with pytest.raises(LookupError):
        config.optional("c", int)


def test_a_setting_read_as_the_wrong_type_is_an_error() -> None:
    config = resolve(sidecar_settings(), {}, {})
    assert config.get("refresh_interval", float) == 60.0
    with pytest.raises(TypeError):
        config.get("refresh_interval", str)


def test_every_sidecar_setting_has_a_distinct_flag_and_env_name() -> None:
    settings = sidecar_settings()
    assert len({s.cli_flag for s in settings}) == len(settings)
    assert len({s.env for s in settings}) == len(settings)
    for setting in settings:
        assert setting.cli_flag.startswith("--")
        assert setting.env.isupper()


def test_standard_variables_keep_their_standard_names() -> None:
    envs = {s.env for s in sidecar_settings()}
    for name in ("VAULT_ADDR", "VAULT_TOKEN", "VAULT_NAMESPACE", "VAULT_CACERT", "VAULT_SKIP_VERIFY"):
        assert name in envs
    assert {"HF_ENDPOINT", "KUBECONFIG"} <= envs


def test_a_custom_setting_goes_through_the_same_rules() -> None:
    setting = Setting("timeout", "MY_TIMEOUT", "a timeout", default="2s", parse=parse_duration)
    assert resolve([setting], {}, {}).values["timeout"] == 2.0
    assert resolve([setting], {}, {"MY_TIMEOUT": "1m"}).values["timeout"] == 60.0
    assert resolve([setting], {"timeout": "500ms"}, {"MY_TIMEOUT": "1m"}).values["timeout"] == 0.5
    assert math.isclose(resolve([setting], {"timeout": "0.1"}, {}).values["timeout"], 0.1)

"""The ``vault`` source against a real OpenBao dev server: what fetch returns, when it reads
the data, how it fails, and that the token never shows up where it should not."""

from __future__ import annotations

import hashlib
import io
import logging
import pathlib
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest

from tokensidecar import logs
from tokensidecar.config import ConfigError, resolve
from tokensidecar.demo.openbao import DevServer
from tokensidecar.sidecar.settings import sidecar_settings
from tokensidecar.sources import SourceError, build_source
from tokensidecar.sources.settings import resolve_source
from tokensidecar.sources.vault import VaultSource


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.fixture
async def open_source(openbao: DevServer) -> AsyncIterator[Callable[..., VaultSource]]:
    """Build a VaultSource from settings (token auth unless given); closed after the test."""
    opened: list[VaultSource] = []

    def build(*, server: DevServer | None = None, **env: str) -> VaultSource:
        server = server or openbao
        settings = {
            "VAULT_ADDR": server.addr,
            "TOKENSIDECAR_VAULT_AUTH": "token",
            "VAULT_TOKEN": server.root_token,
            "TOKENSIDECAR_VERIFY": "none",
            **env,
        }
        source = build_source(resolve_source(resolve(sidecar_settings(), {}, environ=settings)))
        assert isinstance(source, VaultSource)
        opened.append(source)
        return source

    yield build
    for source in opened:
        await source.aclose()


async def test_vault_errors_become_source_errors_at_the_source_boundary(
    restartable_openbao: DevServer, open_source: Callable[..., VaultSource]
) -> None:
    """The source turns Vault's errors into its own, keeping the message and whether the
    upstream refused (a verdict) or could not answer (an outage)."""
    path = f"secret/{unique('hf')}/model-a"
    refused_source = open_source(
        server=restartable_openbao, TOKENSIDECAR_VAULT_PATH=path, VAULT_TOKEN="hvs.not-a-token-vault-knows"
    )
    down_source = open_source(server=restartable_openbao, TOKENSIDECAR_VAULT_PATH=path)
    with pytest.raises(SourceError, match="Vault refused the login") as refused:
        await refused_source.fetch()
    restartable_openbao.stop()
    with pytest.raises(SourceError, match="cannot connect") as down:
        await down_source.fetch()

    assert type(refused.value) is SourceError and not refused.value.retryable
    assert type(down.value) is SourceError and down.value.retryable


def policy_token(openbao: DevServer, rules: str) -> str:
    name = unique("policy")
    openbao.write_policy(name, rules)
    token, _ = openbao.create_token(policies=[name])
    return token


async def test_fetch_returns_token_version_and_expiry_from_custom_metadata(
    openbao: DevServer, open_source: Callable[..., VaultSource]
) -> None:
    path = f"secret/{unique('hf')}/model-a"
    openbao.put_kv(
        path,
        {"token": "hf_source_value_one", "other": "x"},
        custom_metadata={"expires_at": "2031-02-03T04:05:06Z"},
    )
    source = open_source(TOKENSIDECAR_VAULT_PATH=path)

    token = await source.fetch()

    assert token.value == "hf_source_value_one"
    assert (token.source, token.version) == ("vault", "1")
    assert token.expires_at == datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert not source.watchable


async def test_new_kv_version_is_seen_by_fetch(
    openbao: DevServer, open_source: Callable[..., VaultSource]
) -> None:
    path = f"secret/{unique('hf')}/model-a"
    openbao.put_kv(path, {"token": "hf_before_rotation"})
    source = open_source(TOKENSIDECAR_VAULT_PATH=path)
    assert (await source.fetch()).value == "hf_before_rotation"

    openbao.put_kv(path, {"token": "hf_after_rotation"}, custom_metadata={"expires_at": "1900000000"})
    token = await source.fetch()

    assert (token.value, token.version) == ("hf_after_rotation", "2")
    assert token.expires_at == datetime.fromtimestamp(1900000000, UTC)


async def test_secret_recreated_at_version_one_is_read_again(
    openbao: DevServer, open_source: Callable[..., VaultSource]
) -> None:
    path = f"secret/{unique('hf')}/model-a"
    mount, rest = path.split("/", 1)
    openbao.put_kv(path, {"token": "hf_before_recreate"})
    source = open_source(TOKENSIDECAR_VAULT_PATH=path)
    assert (await source.fetch()).version == "1"

    openbao.admin.secrets.kv.v2.delete_metadata_and_all_versions(path=rest, mount_point=mount)
    openbao.put_kv(path, {"token": "hf_after_recreate"})
    token = await source.fetch()

    assert (token.value, token.version) == ("hf_after_recreate", "1")


async def test_unchanged_version_is_served_from_metadata_without_reading_data(
    openbao: DevServer, open_source: Callable[..., VaultSource]
) -> None:
    path = f"secret/{unique('hf')}/model-a"
    mount, rest = path.split("/", 1)
    openbao.put_kv(path, {"token": "hf_cached_value"})
    name = unique("policy")
    openbao.write_policy(
        name,
        f'path "{mount}/data/{rest}" {{ capabilities = ["read"] }}\n'
        f'path "{mount}/metadata/{rest}" {{ capabilities = ["read"] }}',
    )
    token, _ = openbao.create_token(policies=[name])
    source = open_source(TOKENSIDECAR_VAULT_PATH=path, VAULT_TOKEN=token)
    first = await source.fetch()

    # Take away read on the data: polls that only need the metadata keep working,
    # which proves they do not read the secret itself.
    openbao.write_policy(name, f'path "{mount}/metadata/{rest}" {{ capabilities = ["read"] }}')
    openbao.admin.secrets.kv.v2.update_metadata(
        path=rest, mount_point=mount, custom_metadata={"expires_at": "2032-01-01T00:00:00Z"}
    )
    again = await source.fetch()
    assert again.value == first.value and again.version == "1"
    assert again.expires_at == datetime(2032, 1, 1, tzinfo=UTC)  # metadata written after the data is seen

    openbao.put_kv(path, {"token": "hf_next_value"})
    with pytest.raises(SourceError, match="permission denied"):
        await source.fetch()


async def test_policy_without_metadata_read_falls_back_to_reading_data(
    openbao: DevServer, open_source: Callable[..., VaultSource], caplog: pytest.LogCaptureFixture
) -> None:
    path = f"secret/{unique('hf')}/model-a"
    mount, rest = path.split("/", 1)
    openbao.put_kv(path, {"token": "hf_data_only_one"})
    token = policy_token(openbao, f'path "{mount}/data/{rest}" {{ capabilities = ["read"] }}')
    source = open_source(TOKENSIDECAR_VAULT_PATH=path, VAULT_TOKEN=token)
    await source.fetch()

    openbao.put_kv(path, {"token": "hf_data_only_two"})
    with caplog.at_level(logging.WARNING, logger="tokensidecar.sources.vault"):
        assert (await source.fetch()).value == "hf_data_only_two"
        openbao.put_kv(path, {"token": "hf_data_only_three"})
        assert (await source.fetch()).value == "hf_data_only_three"

    assert [r.message for r in caplog.records].count(
        "no read access to the secret's metadata; reading its data at every poll"
    ) == 1


def _fp(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


async def test_stale_expires_at_written_for_the_previous_token_does_not_refuse_the_new_one(
    openbao: DevServer, open_source: Callable[..., VaultSource], caplog: pytest.LogCaptureFixture
) -> None:
    path = f"secret/{unique('hf')}/model-a"
    old, new = "hf_stale_meta_old_token", "hf_stale_meta_new_token"
    # The rotation job wrote the data, then failed to write the metadata: what is left
    # describes the previous token, which has expired.
    openbao.put_kv(
        path, {"token": old}, custom_metadata={"expires_at": "2020-01-01T00:00:00Z", "fingerprint": _fp(old)}
    )
    openbao.put_kv(path, {"token": new})
    source = open_source(TOKENSIDECAR_VAULT_PATH=path)

    with caplog.at_level(logging.WARNING, logger="tokensidecar.sources.vault"):
        token = await source.fetch()
        again = await source.fetch()  # served from the metadata check: the same verdict

    assert (token.value, token.expires_at, token.is_expired()) == (new, None, False)
    assert again.expires_at is None
    warnings = [r.message for r in caplog.records if "written for another token" in r.message]
    assert len(warnings) == 1  # logged once, not at every poll
    assert new not in caplog.text and old not in caplog.text

    # The metadata catches up: now it describes this token and is trusted, also when it
    # arrives after the data (seen through the metadata check alone).
    mount, rest = path.split("/", 1)
    openbao.admin.secrets.kv.v2.update_metadata(
        path=rest,
        mount_point=mount,
        custom_metadata={"expires_at": "2031-05-06T07:08:09Z", "fingerprint": _fp(new)},
    )
    assert (await source.fetch()).expires_at == datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


async def test_expires_at_with_this_tokens_fingerprint_is_trusted_even_when_past(
    openbao: DevServer, open_source: Callable[..., VaultSource]
) -> None:
    path = f"secret/{unique('hf')}/model-a"
    value = "hf_really_expired_token"
    openbao.put_kv(
        path,
        {"token": value},
        custom_metadata={"expires_at": "2020-01-01T00:00:00Z", "fingerprint": _fp(value)},
    )

    token = await open_source(TOKENSIDECAR_VAULT_PATH=path).fetch()

    assert token.expires_at == datetime(2020, 1, 1, tzinfo=UTC) and token.is_expired()


@pytest.mark.parametrize(
    ("expires_at", "expected"),
    [
        ("2031-01-01T00:00:00Z", datetime(2031, 1, 1, tzinfo=UTC)),  # future, unattributed: trusted
        ("2020-01-01T00:00:00Z", None),  # past, unattributed: cannot refuse a token on its word
        ("unknown", None),  # what the rotation job writes when it does not know
    ],
)
async def test_expires_at_without_a_fingerprint(
    openbao: DevServer, open_source: Callable[..., VaultSource], expires_at: str, expected: datetime | None
) -> None:
    path = f"secret/{unique('hf')}/model-a"
    openbao.put_kv(path, {"token": "hf_unattributed_expiry"}, custom_metadata={"expires_at": expires_at})

    assert (await open_source(TOKENSIDECAR_VAULT_PATH=path).fetch()).expires_at == expected


async def test_kv_v1_source_reads_data_every_time(
    openbao: DevServer, open_source: Callable[..., VaultSource]
) -> None:
    mount = unique("kv1")
    openbao.enable_kv(mount, version=1)
    path = f"{mount}/hf/model-a"
    openbao.put_kv(path, {"hf": "hf_kv_one_source_1"}, kv_version=1)
    source = open_source(
        TOKENSIDECAR_VAULT_PATH=path, TOKENSIDECAR_VAULT_KV_VERSION="1", TOKENSIDECAR_KEY="hf"
    )

    first = await source.fetch()
    openbao.put_kv(path, {"hf": "hf_kv_one_source_2"}, kv_version=1)
    second = await source.fetch()

    assert (first.value, first.version, first.expires_at) == ("hf_kv_one_source_1", None, None)
    assert second.value == "hf_kv_one_source_2"


async def test_missing_key_names_key_and_path_but_not_the_value(
    openbao: DevServer, open_source: Callable[..., VaultSource]
) -> None:
    path = f"secret/{unique('hf')}/model-a"
    openbao.put_kv(path, {"hf_token": "hf_wrong_key_value"})
    source = open_source(TOKENSIDECAR_VAULT_PATH=path)

    with pytest.raises(SourceError) as missing:
        await source.fetch()

    message = str(missing.value)
    assert f"{path} has no key 'token'" in message and "keys: hf_token" in message
    assert "hf_wrong_key_value" not in message


async def test_unparseable_expires_at_is_ignored_with_a_warning(
    openbao: DevServer, open_source: Callable[..., VaultSource], caplog: pytest.LogCaptureFixture
) -> None:
    path = f"secret/{unique('hf')}/model-a"
    openbao.put_kv(path, {"token": "hf_bad_expiry_value"}, custom_metadata={"expires_at": "next tuesday"})
    source = open_source(TOKENSIDECAR_VAULT_PATH=path)

    with caplog.at_level(logging.WARNING, logger="tokensidecar.sources.vault"):
        token = await source.fetch()

    assert token.expires_at is None
    assert "custom_metadata.expires_at is not a time" in caplog.text


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TOKENSIDECAR_VAULT_PATH": "secret/x"}, "VAULT_ADDR is required when --source=vault"),
        ({"VAULT_ADDR": "http://v:8200"}, "TOKENSIDECAR_VAULT_PATH is required when --source=vault"),
        (
            {"VAULT_ADDR": "http://v:8200", "TOKENSIDECAR_VAULT_PATH": "secret"},
            "TOKENSIDECAR_VAULT_PATH: 'secret'",
        ),
        (
            {
                "VAULT_ADDR": "http://v:8200",
                "TOKENSIDECAR_VAULT_PATH": "secret/x",
                "TOKENSIDECAR_VAULT_KV_VERSION": "3",
            },
            "TOKENSIDECAR_VAULT_KV_VERSION: '3' is not one of 1, 2",
        ),
    ],
)
def test_bad_config_names_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_source(
            resolve_source(
                resolve(sidecar_settings(), {}, environ={"TOKENSIDECAR_VAULT_AUTH": "token", **env})
            )
        )


async def test_canary_token_never_leaks_from_the_vault_source(
    restartable_openbao: DevServer, open_source: Callable[..., VaultSource], tmp_path: pathlib.Path
) -> None:
    """A distinctive token goes through success and every failure path of the source; it
    must not appear in any log line (JSON, at debug), exception text or repr."""
    canary = f"hf_CANARY{secrets.token_hex(12)}"
    vault_canary = restartable_openbao.root_token
    server = restartable_openbao
    path = f"secret/{unique('hf')}/model-a"
    server.put_kv(path, {"token": canary}, custom_metadata={"expires_at": canary})
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    logs.configure(fmt="json", level="debug", stream=stream)
    texts: list[str] = []
    try:
        source = open_source(server=server, TOKENSIDECAR_VAULT_PATH=path)
        token = await source.fetch()  # success (with an expiry that is not a time)
        assert token.value == canary
        texts += [repr(token), str(token)]
        server.put_kv(path, {"not-token": canary})  # missing key
        with pytest.raises(SourceError) as missing:
            await source.fetch()
        server.put_kv(path, {"token": f"{canary} with spaces"})  # odd value: still only the source's job
        await source.fetch()
        server.stop()  # Vault down
        with pytest.raises(SourceError) as down:
            await source.fetch()
        server.start()  # empty again: the old client token is gone, the secret too
        with pytest.raises(SourceError) as gone:
            await source.fetch()
        denied_source = open_source(server=server, TOKENSIDECAR_VAULT_PATH=path, VAULT_TOKEN=canary)
        with pytest.raises(SourceError) as refused:  # the canary as a refused Vault token
            await denied_source.fetch()
        texts += [str(e.value) for e in (missing, down, gone, refused)]
        texts += [repr(e.value) for e in (missing, down, gone, refused)]
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    log_text = stream.getvalue()
    assert log_text, "the paths above log something"
    for text in [log_text, *texts]:
        assert canary not in text
        assert vault_canary not in text

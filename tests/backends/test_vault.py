"""VaultSession against a real OpenBao dev server: every auth method, renewal, re-login,
revocation, KV v1/v2 reads, metadata checks and check-and-set writes."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import secrets
import time
from collections.abc import AsyncIterator, Mapping

import pytest

from tests.fixtures.jwt import JwtIssuer
from tests.fixtures.openbao import (
    CountingProxy,
    TokenReviewServer,
    live_token_accessors,
    seal,
    unseal,
)
from tokensidecar.backends.errors import UpstreamRefused, UpstreamUnavailable
from tokensidecar.backends.settings import VaultSettings
from tokensidecar.backends.vault import (
    KvPath,
    VaultCasConflict,
    VaultError,
    VaultPermissionDenied,
    VaultRefused,
    VaultSession,
    VaultUnavailable,
)
from tokensidecar.config import Config, ConfigError, resolve
from tokensidecar.demo.openbao import DevServer
from tokensidecar.sidecar.settings import sidecar_settings
from tokensidecar.sources import SourceError


def vault_config(openbao: DevServer, *, addr: str | None = None, **env: str) -> Config:
    return resolve(sidecar_settings(), {}, environ={"VAULT_ADDR": addr or openbao.addr, **env})


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def write(tmp_path: pathlib.Path, name: str, content: str) -> str:
    path = tmp_path / name
    path.write_text(content + "\n")
    return str(path)


@pytest.fixture
async def sessions() -> AsyncIterator[list[VaultSession]]:
    """Sessions a test opens; closed at the end even when the test fails."""
    opened: list[VaultSession] = []
    yield opened
    for session in opened:
        await session.aclose()


def approle_session(
    openbao: DevServer,
    tmp_path: pathlib.Path,
    *,
    paths: tuple[str, ...],
    ttl: str = "1h",
    max_ttl: str = "24h",
    addr: str | None = None,
    **env: str,
) -> VaultSession:
    policy = openbao.read_policy_for(*paths)
    role_id, secret_id = openbao.create_approle(unique("role"), policies=[policy], ttl=ttl, max_ttl=max_ttl)
    config = vault_config(
        openbao,
        addr=addr,
        **env,
        TOKENSIDECAR_VAULT_AUTH="approle",
        TOKENSIDECAR_VAULT_ROLE_ID_FILE=write(tmp_path, "role-id", role_id),
        TOKENSIDECAR_VAULT_SECRET_ID_FILE=write(tmp_path, "secret-id", secret_id),
    )
    return VaultSession.from_settings(VaultSettings.resolve(config))


def seed(openbao: DevServer, data: Mapping[str, str], **kwargs: object) -> str:
    path = f"secret/{unique('hf')}/model"
    openbao.put_kv(path, data, **kwargs)  # type: ignore[arg-type]
    return path


# -- KV reads and writes -----------------------------------------------------------------


async def test_kv_v2_read_returns_data_version_and_custom_metadata(
    openbao: DevServer, tmp_path: pathlib.Path, sessions: list[VaultSession]
) -> None:
    path = seed(
        openbao, {"token": "hf_first_value_123"}, custom_metadata={"expires_at": "2031-01-01T00:00:00Z"}
    )
    openbao.put_kv(path, {"token": "hf_second_value_456"})
    session = approle_session(openbao, tmp_path, paths=(path,))
    sessions.append(session)

    secret = await session.read_kv(KvPath.parse(path))

    assert secret.data == {"token": "hf_second_value_456"}
    assert secret.version == 2
    assert secret.custom_metadata == {"expires_at": "2031-01-01T00:00:00Z"}
    assert "hf_second_value_456" not in repr(secret)
    older = await session.read_kv(KvPath.parse(path), version=1)
    assert (older.data["token"], older.version) == ("hf_first_value_123", 1)


async def test_kv_v1_read_has_no_version(
    openbao: DevServer, tmp_path: pathlib.Path, sessions: list[VaultSession]
) -> None:
    mount = unique("kv1")
    openbao.enable_kv(mount, version=1)
    path = f"{mount}/hf/model"
    openbao.put_kv(path, {"token": "hf_kv_one_value"}, kv_version=1)
    session = approle_session(openbao, tmp_path, paths=(path,))
    sessions.append(session)

    secret = await session.read_kv(KvPath.parse(path), kv_version=1)

    assert secret.data == {"token": "hf_kv_one_value"}
    assert secret.version is None
    assert secret.custom_metadata == {}


async def test_metadata_check_sees_new_version_and_custom_metadata(
    openbao: DevServer, tmp_path: pathlib.Path, sessions: list[VaultSession]
) -> None:
    path = seed(openbao, {"token": "hf_meta_value_1"})
    session = approle_session(openbao, tmp_path, paths=(path,))
    sessions.append(session)
    kv_path = KvPath.parse(path)

    assert (await session.read_kv_metadata(kv_path)).current_version == 1
    openbao.put_kv(path, {"token": "hf_meta_value_2"}, custom_metadata={"expires_at": "2030-05-01T00:00:00Z"})
    metadata = await session.read_kv_metadata(kv_path)

    assert metadata.current_version == 2
    assert metadata.custom_metadata == {"expires_at": "2030-05-01T00:00:00Z"}


async def test_check_and_set_write_wins_once_and_merges_custom_metadata(
    openbao: DevServer, sessions: list[VaultSession]
) -> None:
    path = KvPath.parse(seed(openbao, {"token": "hf_cas_value_1"}, custom_metadata={"owner": "ml-platform"}))
    token, _ = openbao.create_token(policies=[_write_policy(openbao, path)])
    session = VaultSession.from_settings(
        VaultSettings.resolve(vault_config(openbao, TOKENSIDECAR_VAULT_AUTH="token", VAULT_TOKEN=token))
    )
    sessions.append(session)

    version = await session.write_kv(
        path,
        {"token": "hf_cas_value_2", "previous": "hf_cas_value_1"},
        cas=1,
        custom_metadata={"expires_at": "2030-01-01T00:00:00Z"},
    )
    with pytest.raises(VaultCasConflict, match="check-and-set"):
        await session.write_kv(path, {"token": "hf_cas_loser"}, cas=1)

    assert version == 2
    secret = await session.read_kv(path)
    assert secret.data == {"token": "hf_cas_value_2", "previous": "hf_cas_value_1"}
    assert secret.custom_metadata == {"owner": "ml-platform", "expires_at": "2030-01-01T00:00:00Z"}
    assert await session.write_kv(KvPath(path.mount, path.path + "-new"), {"token": "hf_created"}, cas=0) == 1


def _write_policy(openbao: DevServer, path: KvPath) -> str:
    name = unique("writer")
    openbao.write_policy(
        name,
        f'path "{path.mount}/data/{path.path}*" {{ capabilities = ["create", "read", "update"] }}\n'
        f'path "{path.mount}/metadata/{path.path}*" {{ capabilities = ["read", "update", "patch"] }}',
    )
    return name


async def test_missing_secret_and_data_prefix_give_a_hint(
    openbao: DevServer, sessions: list[VaultSession]
) -> None:
    session = VaultSession.from_settings(
        VaultSettings.resolve(
            vault_config(openbao, TOKENSIDECAR_VAULT_AUTH="token", VAULT_TOKEN=openbao.root_token)
        )
    )
    sessions.append(session)

    with pytest.raises(VaultError, match="no secret there") as missing:
        await session.read_kv(KvPath.parse("secret/does/not/exist"))
    with pytest.raises(VaultError, match=r"without '/data/': secret/hf/x"):
        await session.read_kv(KvPath.parse("secret/data/hf/x"))
    assert missing.value.status == 404


# -- auth methods ----------------------------------------------------------------------------


async def test_approle_login_token_is_revoked_on_close(openbao: DevServer, tmp_path: pathlib.Path) -> None:
    path = seed(openbao, {"token": "hf_approle_value"})
    session = approle_session(openbao, tmp_path, paths=(path,))
    try:
        assert (await session.read_kv(KvPath.parse(path))).data["token"] == "hf_approle_value"
        accessor = session.token_accessor
        assert accessor and openbao.token_alive(accessor)
    finally:
        await session.aclose()

    assert not openbao.token_alive(accessor)
    with pytest.raises(VaultError, match="closed"):
        await session.read_kv(KvPath.parse(path))


async def test_jwt_login_reads_the_jwt_file_at_each_login(
    openbao: DevServer,
    openbao_jwt_auth: str,
    jwt_issuer: JwtIssuer,
    tmp_path: pathlib.Path,
    sessions: list[VaultSession],
) -> None:
    path = seed(openbao, {"token": "hf_jwt_auth_value"})
    role = unique("jwt-role")
    openbao.create_jwt_role(
        role, policies=[openbao.read_policy_for(path)], audience="tokensidecar", mount=openbao_jwt_auth
    )
    jwt_file = write(tmp_path, "jwt", jwt_issuer.sign({"sub": "model-a", "aud": "tokensidecar"}))
    session = VaultSession.from_settings(
        VaultSettings.resolve(
            vault_config(
                openbao,
                TOKENSIDECAR_VAULT_AUTH="jwt",
                TOKENSIDECAR_VAULT_ROLE=role,
                TOKENSIDECAR_VAULT_JWT_FILE=jwt_file,
            )
        )
    )
    sessions.append(session)

    assert (await session.read_kv(KvPath.parse(path))).data["token"] == "hf_jwt_auth_value"

    # kubelet replaces the projected token; the old one is revoked server-side: the
    # re-login must present the new file content, not a cached JWT.
    write(tmp_path, "jwt", jwt_issuer.sign({"sub": "model-a", "aud": "tokensidecar"}))
    first_accessor = session.token_accessor
    assert first_accessor is not None
    openbao.revoke_accessor(first_accessor)
    assert (await session.read_kv(KvPath.parse(path))).data["token"] == "hf_jwt_auth_value"
    assert session.logins == 2


async def test_jwt_with_wrong_audience_is_refused_clearly(
    openbao: DevServer,
    openbao_jwt_auth: str,
    jwt_issuer: JwtIssuer,
    tmp_path: pathlib.Path,
    sessions: list[VaultSession],
) -> None:
    role = unique("jwt-role")
    openbao.create_jwt_role(role, policies=["default"], audience="tokensidecar", mount=openbao_jwt_auth)
    jwt = jwt_issuer.sign({"sub": "model-a", "aud": "someone-else"})
    session = VaultSession.from_settings(
        VaultSettings.resolve(
            vault_config(
                openbao,
                TOKENSIDECAR_VAULT_AUTH="jwt",
                TOKENSIDECAR_VAULT_ROLE=role,
                TOKENSIDECAR_VAULT_JWT_FILE=write(tmp_path, "jwt", jwt),
            )
        )
    )
    sessions.append(session)

    with pytest.raises(VaultError, match="log in to Vault with jwt auth at auth/jwt") as refused:
        await session.ensure_login()
    assert jwt not in str(refused.value)


async def test_kubernetes_login_is_checked_through_token_review(  # noqa: PLR0917 - fixtures
    openbao: DevServer,
    openbao_kubernetes_auth: str,
    token_review: TokenReviewServer,
    jwt_issuer: JwtIssuer,
    tmp_path: pathlib.Path,
    sessions: list[VaultSession],
) -> None:
    path = seed(openbao, {"token": "hf_kubernetes_value"})
    role, namespace, account = unique("k8s-role"), unique("ns"), "predictor"
    openbao.create_kubernetes_role(
        role,
        policies=[openbao.read_policy_for(path)],
        service_accounts=[account],
        namespaces=[namespace],
        mount=openbao_kubernetes_auth,
    )
    jwt = jwt_issuer.service_account_token(namespace=namespace, name=account)
    token_review.admit(jwt, namespace=namespace, name=account)
    reviews_before = token_review.reviews
    session = VaultSession.from_settings(
        VaultSettings.resolve(
            vault_config(
                openbao,
                TOKENSIDECAR_VAULT_AUTH="kubernetes",
                TOKENSIDECAR_VAULT_ROLE=role,
                TOKENSIDECAR_VAULT_JWT_FILE=write(tmp_path, "sa-token", jwt),
            )
        )
    )
    sessions.append(session)

    assert (await session.read_kv(KvPath.parse(path))).data["token"] == "hf_kubernetes_value"
    assert token_review.reviews == reviews_before + 1

    # A service-account token the API server does not know is refused.
    stranger = jwt_issuer.service_account_token(namespace=namespace, name=account)
    write(tmp_path, "sa-token", stranger)
    refused = VaultSession.from_settings(
        VaultSettings.resolve(
            vault_config(
                openbao,
                TOKENSIDECAR_VAULT_AUTH="kubernetes",
                TOKENSIDECAR_VAULT_ROLE=role,
                TOKENSIDECAR_VAULT_JWT_FILE=str(tmp_path / "sa-token"),
            )
        )
    )
    sessions.append(refused)
    with pytest.raises(VaultError, match="kubernetes auth"):
        await refused.ensure_login()


async def test_tls_server_is_trusted_through_vault_cacert(tmp_path: pathlib.Path) -> None:
    with DevServer(tls=True) as tls_server:
        path = seed(tls_server, {"token": "hf_over_tls_value"})
        session = VaultSession.from_settings(
            VaultSettings.resolve(
                vault_config(
                    tls_server,
                    TOKENSIDECAR_VAULT_AUTH="token",
                    VAULT_TOKEN=tls_server.root_token,
                    VAULT_CACERT=tls_server.ca_cert or "",
                )
            )
        )
        untrusted = VaultSession.from_settings(
            VaultSettings.resolve(
                vault_config(tls_server, TOKENSIDECAR_VAULT_AUTH="token", VAULT_TOKEN=tls_server.root_token)
            )
        )
        try:
            assert (await session.read_kv(KvPath.parse(path))).data["token"] == "hf_over_tls_value"
            with pytest.raises(VaultError, match="cannot connect"):
                await untrusted.read_kv(KvPath.parse(path))
        finally:
            await session.aclose()
            await untrusted.aclose()


async def test_vault_namespace_is_sent_with_every_request(
    openbao: DevServer, sessions: list[VaultSession]
) -> None:
    namespace = unique("team")
    scoped = openbao.create_namespace(namespace)
    scoped.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    scoped.secrets.kv.v2.create_or_update_secret(
        path="hf/model", secret={"token": "hf_namespaced"}, mount_point="secret"
    )
    env = {"TOKENSIDECAR_VAULT_AUTH": "token", "VAULT_TOKEN": openbao.root_token}
    inside = VaultSession.from_settings(
        VaultSettings.resolve(vault_config(openbao, VAULT_NAMESPACE=namespace, **env))
    )
    outside = VaultSession.from_settings(VaultSettings.resolve(vault_config(openbao, **env)))
    sessions += [inside, outside]

    assert (await inside.read_kv(KvPath.parse("secret/hf/model"))).data["token"] == "hf_namespaced"
    with pytest.raises(VaultError, match="no secret there"):
        await outside.read_kv(KvPath.parse("secret/hf/model"))


# -- token lifecycle ----------------------------------------------------------------------


async def test_client_token_is_renewed_across_several_renewals(
    openbao: DevServer, tmp_path: pathlib.Path, sessions: list[VaultSession]
) -> None:
    path = seed(openbao, {"token": "hf_renewal_value"})
    session = approle_session(openbao, tmp_path, paths=(path,), ttl="2s", max_ttl="1h")
    sessions.append(session)
    await session.ensure_login()
    accessor = session.token_accessor
    assert accessor is not None

    await asyncio.sleep(5.5)  # 2.75 TTLs: without renewal the token would be long gone

    assert session.renewals >= 3
    assert session.logins == 1
    assert session.token_accessor == accessor and openbao.token_alive(accessor)
    assert (await session.read_kv(KvPath.parse(path))).data["token"] == "hf_renewal_value"
    assert session.logins == 1


async def test_token_reaching_max_ttl_is_replaced_by_a_fresh_login_and_revoked(
    openbao: DevServer, tmp_path: pathlib.Path, sessions: list[VaultSession]
) -> None:
    path = seed(openbao, {"token": "hf_max_ttl_value"})
    # Renewed at ~4 s, the token comes back cut to the 4 s left of its max_ttl: the session
    # logs in again at once, and the old token, which Vault would keep until 8 s, is revoked.
    session = approle_session(openbao, tmp_path, paths=(path,), ttl="6s", max_ttl="8s")
    sessions.append(session)
    await session.ensure_login()
    first = session.token_accessor
    assert first is not None

    # The old token is revoked right after the new login: wait for both, not just the login.
    deadline = time.monotonic() + 10
    while (session.logins < 2 or session.revocations < 1) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)

    assert session.logins == 2
    assert session.token_accessor != first
    assert not openbao.token_alive(first)
    assert session.revocations == 1
    assert (await session.read_kv(KvPath.parse(path))).data["token"] == "hf_max_ttl_value"


async def test_refused_renewal_logs_in_again_without_waiting_for_a_read(
    openbao: DevServer, tmp_path: pathlib.Path, sessions: list[VaultSession]
) -> None:
    path = seed(openbao, {"token": "hf_refused_renewal"})
    session = approle_session(openbao, tmp_path, paths=(path,), ttl="2s", max_ttl="1h")
    sessions.append(session)
    await session.ensure_login()
    revoked = session.token_accessor
    assert revoked is not None

    openbao.revoke_accessor(revoked)  # the next renewal (~1.3 s) is refused with 403
    deadline = time.monotonic() + 4
    while session.logins < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)

    assert session.logins == 2 and session.renewals == 0
    assert session.token_accessor != revoked and openbao.token_alive(session.token_accessor or "")


async def test_token_revoked_server_side_triggers_relogin_and_retry(
    openbao: DevServer, tmp_path: pathlib.Path, sessions: list[VaultSession]
) -> None:
    path = seed(openbao, {"token": "hf_relogin_value"})
    session = approle_session(openbao, tmp_path, paths=(path,))
    sessions.append(session)
    await session.read_kv(KvPath.parse(path))
    revoked = session.token_accessor
    assert revoked is not None

    openbao.revoke_accessor(revoked)
    secret = await session.read_kv(KvPath.parse(path))

    assert secret.data["token"] == "hf_relogin_value"
    assert session.logins == 2
    assert session.token_accessor != revoked


async def test_user_supplied_token_is_renewed_but_never_revoked(
    openbao: DevServer, tmp_path: pathlib.Path
) -> None:
    path = seed(openbao, {"token": "hf_user_token_value"})
    token, accessor = openbao.create_token(policies=[openbao.read_policy_for(path)], ttl="2s")
    session = VaultSession.from_settings(
        VaultSettings.resolve(
            vault_config(
                openbao,
                TOKENSIDECAR_VAULT_AUTH="token",
                TOKENSIDECAR_VAULT_TOKEN_FILE=write(tmp_path, "vault-token", token),
            )
        )
    )
    try:
        await session.read_kv(KvPath.parse(path))
        await asyncio.sleep(3.0)  # past the 2 s TTL: alive only because it was renewed
        assert session.renewals >= 1
        assert (await session.read_kv(KvPath.parse(path))).data["token"] == "hf_user_token_value"
    finally:
        await session.aclose()

    assert openbao.token_alive(accessor)
    openbao.revoke_accessor(accessor)


async def test_policy_denial_is_reported_without_logging_in_again(
    openbao: DevServer, tmp_path: pathlib.Path, sessions: list[VaultSession]
) -> None:
    allowed = seed(openbao, {"token": "hf_allowed_value"})
    forbidden = seed(openbao, {"token": "hf_forbidden_value"})
    session = approle_session(openbao, tmp_path, paths=(allowed,))
    sessions.append(session)
    await session.ensure_login()
    tokens_before = live_token_accessors(openbao)

    for _ in range(5):  # a refresher polling a path the policy forbids
        with pytest.raises(VaultPermissionDenied, match="permission denied") as denied:
            await session.read_kv(KvPath.parse(forbidden))
        assert denied.value.status == 403
        assert "hf_forbidden_value" not in str(denied.value)

    # The token looked itself up and was alive: a denial, not a dead token. No login,
    # no new token in Vault's store.
    assert session.logins == 1
    assert live_token_accessors(openbao) == tokens_before
    assert (await session.read_kv(KvPath.parse(allowed))).data["token"] == "hf_allowed_value"


async def test_policy_denial_without_the_default_policy_logs_in_once_per_login(
    openbao: DevServer, tmp_path: pathlib.Path, sessions: list[VaultSession]
) -> None:
    allowed = seed(openbao, {"token": "hf_allowed_no_default"})
    forbidden = seed(openbao, {"token": "hf_forbidden_no_default"})
    role = unique("role")
    openbao.enable_auth("approle")
    # Without the default policy a token cannot look itself up: only a fresh login tells
    # a dead token from a denial, and that verdict holds until the next login.
    openbao.admin.auth.approle.create_or_update_approle(
        role_name=role, token_policies=[openbao.read_policy_for(allowed)], token_no_default_policy=True
    )
    role_id = openbao.admin.auth.approle.read_role_id(role_name=role)["data"]["role_id"]
    secret_id = openbao.admin.auth.approle.generate_secret_id(role_name=role)["data"]["secret_id"]
    session = VaultSession.from_settings(
        VaultSettings.resolve(
            vault_config(
                openbao,
                TOKENSIDECAR_VAULT_AUTH="approle",
                TOKENSIDECAR_VAULT_ROLE_ID_FILE=write(tmp_path, "role-id", role_id),
                TOKENSIDECAR_VAULT_SECRET_ID_FILE=write(tmp_path, "secret-id", secret_id),
            )
        )
    )
    sessions.append(session)

    for _ in range(5):
        with pytest.raises(VaultPermissionDenied):
            await session.read_kv(KvPath.parse(forbidden))

    assert session.logins == 2
    assert (await session.read_kv(KvPath.parse(allowed))).data["token"] == "hf_allowed_no_default"


async def test_token_expired_during_an_outage_is_not_renewed_in_a_loop(
    restartable_openbao: DevServer,
    counting_proxy: CountingProxy,
    tmp_path: pathlib.Path,
    sessions: list[VaultSession],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = restartable_openbao
    path = seed(server, {"token": "hf_outage_expiry_value"})
    session = approle_session(
        server, tmp_path, paths=(path,), ttl="3s", addr=counting_proxy.url, TOKENSIDECAR_MAX_BACKOFF="1s"
    )
    sessions.append(session)
    caplog.set_level(logging.WARNING, logger="tokensidecar.backends.vault")
    await session.ensure_login()
    accessor = session.token_accessor

    seal(server)  # every request now gets 503 "Vault is sealed"
    # The renewal at ~2 s fails and is retried with backoff (capped at 1 s here) until
    # the TTL has passed; then the token is gone and the session stops trying: it says so,
    # and from then on (however late a busy machine gets there) nothing more is sent.
    deadline = time.monotonic() + 30
    while "the vault token expired before it could be renewed" not in caplog.text:
        assert time.monotonic() < deadline, "the renewal never gave up on the expired token"
        await asyncio.sleep(0.05)
    renewals = [entry for entry in counting_proxy.requests if entry[2] == "/v1/auth/token/renew-self"]
    assert renewals and all(status == 503 for *_, status in renewals)  # tried, while sealed
    quiet_from = time.monotonic()
    await asyncio.sleep(3.0)
    assert counting_proxy.since(quiet_from) == []

    # A request after the expiry logs in first (one attempt, refused while sealed) ...
    asked = time.monotonic()
    with pytest.raises(VaultError, match="503"):
        await session.read_kv(KvPath.parse(path))
    assert [(method, url) for _, method, url, _ in counting_proxy.since(asked)] == [
        ("POST", "/v1/auth/approle/login")
    ]
    # ... and once Vault is back it logs in and reads, without revoking the expired token.
    unseal(server)
    assert (await session.read_kv(KvPath.parse(path))).data["token"] == "hf_outage_expiry_value"
    assert session.logins == 2 and session.token_accessor != accessor
    assert session.revocations == 0


async def test_unreachable_vault_is_a_retryable_error(restartable_openbao: DevServer) -> None:
    session = VaultSession.from_settings(
        VaultSettings.resolve(
            vault_config(
                restartable_openbao,
                TOKENSIDECAR_VAULT_AUTH="token",
                VAULT_TOKEN=restartable_openbao.root_token,
            )
        )
    )
    restartable_openbao.stop()
    try:
        with pytest.raises(VaultError, match="cannot connect") as unreachable:
            await session.read_kv(KvPath.parse("secret/hf/model"))
        assert unreachable.value.retryable
        assert restartable_openbao.root_token not in str(unreachable.value)
    finally:
        await session.aclose()


async def test_vault_errors_say_unavailable_or_refused_and_are_not_source_errors(
    restartable_openbao: DevServer,
) -> None:
    """The session is Vault's client for the sidecar and the rotation job alike: its errors
    speak the upstream vocabulary (an outage to retry, or a verdict), never the sidecar's."""
    server = restartable_openbao
    refused_session = VaultSession.from_settings(
        VaultSettings.resolve(
            vault_config(server, TOKENSIDECAR_VAULT_AUTH="token", VAULT_TOKEN="hvs.not-a-token-vault-knows")
        )
    )
    down_session = VaultSession.from_settings(
        VaultSettings.resolve(
            vault_config(server, TOKENSIDECAR_VAULT_AUTH="token", VAULT_TOKEN=server.root_token)
        )
    )
    try:
        with pytest.raises(VaultError, match="Vault refused the login") as refused:
            await refused_session.read_kv(KvPath.parse("secret/hf/model"))
        server.stop()
        with pytest.raises(VaultError, match="cannot connect") as unreachable:
            await down_session.read_kv(KvPath.parse("secret/hf/model"))
    finally:
        await refused_session.aclose()
        await down_session.aclose()

    assert isinstance(refused.value, VaultRefused) and isinstance(refused.value, UpstreamRefused)
    assert not refused.value.retryable
    assert isinstance(unreachable.value, VaultUnavailable) and isinstance(
        unreachable.value, UpstreamUnavailable
    )
    assert unreachable.value.retryable
    assert not isinstance(refused.value, SourceError) and not isinstance(unreachable.value, SourceError)


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "VAULT_ADDR is required"),
        ({"VAULT_ADDR": "vault:8200"}, "VAULT_ADDR: 'vault:8200' is not an http"),
        ({"VAULT_ADDR": "http://v:8200"}, "TOKENSIDECAR_VAULT_ROLE is required when --vault-auth=kubernetes"),
        (
            {"VAULT_ADDR": "http://v:8200", "TOKENSIDECAR_VAULT_AUTH": "jwt"},
            "TOKENSIDECAR_VAULT_ROLE is required when --vault-auth=jwt",
        ),
        (
            {"VAULT_ADDR": "http://v:8200", "TOKENSIDECAR_VAULT_AUTH": "approle"},
            "TOKENSIDECAR_VAULT_ROLE_ID_FILE is required when --vault-auth=approle",
        ),
        (
            {"VAULT_ADDR": "http://v:8200", "TOKENSIDECAR_VAULT_AUTH": "token"},
            "VAULT_TOKEN or TOKENSIDECAR_VAULT_TOKEN_FILE is required when --vault-auth=token",
        ),
        (
            {
                "VAULT_ADDR": "https://v:8200",
                "VAULT_TOKEN": "s.x",
                "TOKENSIDECAR_VAULT_AUTH": "token",
                "VAULT_CACERT": "/nonexistent/ca.pem",
            },
            "VAULT_CACERT: /nonexistent/ca.pem is not a readable file",
        ),
    ],
)
def test_misconfiguration_names_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        VaultSession.from_settings(VaultSettings.resolve(resolve(sidecar_settings(), {}, environ=env)))


def test_auth_mount_defaults_to_the_method_name() -> None:
    env = {"VAULT_ADDR": "http://v:8200", "TOKENSIDECAR_VAULT_ROLE": "r"}
    assert (
        VaultSession.from_settings(
            VaultSettings.resolve(resolve(sidecar_settings(), {}, environ=env))
        ).login_method.mount
        == "kubernetes"
    )
    env["TOKENSIDECAR_VAULT_AUTH_MOUNT"] = "/k8s-prod/"
    assert (
        VaultSession.from_settings(
            VaultSettings.resolve(resolve(sidecar_settings(), {}, environ=env))
        ).login_method.mount
        == "k8s-prod"
    )


@pytest.mark.parametrize("text", ["secret", "secret/", "/", ""])
def test_kv_path_needs_a_mount_and_a_path(text: str) -> None:
    with pytest.raises(ValueError, match="<mount>/<path>"):
        KvPath.parse(text)


def test_kv_path_first_segment_is_the_mount() -> None:
    assert KvPath.parse("/secret/hf/model-a/") == KvPath(mount="secret", path="hf/model-a")
    assert str(KvPath.parse("kv/a")) == "kv/a"


async def test_refused_login_credentials_never_appear_in_errors_or_logs(
    openbao: DevServer,
    openbao_jwt_auth: str,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
    sessions: list[VaultSession],
) -> None:
    canary = f"CANARY{secrets.token_hex(12)}"
    role = unique("jwt-role")
    openbao.create_jwt_role(role, policies=["default"], audience="tokensidecar", mount=openbao_jwt_auth)
    openbao.enable_auth("approle")
    cases = {
        "approle": {
            "TOKENSIDECAR_VAULT_ROLE_ID_FILE": write(tmp_path, "role-id", canary + "-role"),
            "TOKENSIDECAR_VAULT_SECRET_ID_FILE": write(tmp_path, "secret-id", canary + "-secret"),
        },
        "jwt": {
            "TOKENSIDECAR_VAULT_ROLE": role,
            "TOKENSIDECAR_VAULT_JWT_FILE": write(tmp_path, "jwt", canary),
        },
        "token": {"VAULT_TOKEN": canary + "-vault"},
    }
    errors: list[str] = []
    with caplog.at_level(logging.DEBUG):
        for method, env in cases.items():
            session = VaultSession.from_settings(
                VaultSettings.resolve(vault_config(openbao, TOKENSIDECAR_VAULT_AUTH=method, **env))
            )
            sessions.append(session)
            with pytest.raises(VaultError) as refused:
                await session.read_kv(KvPath.parse("secret/hf/model"))
            errors += [str(refused.value), repr(refused.value)]

    assert any("refused the login" in error for error in errors)
    raw_records = " ".join(str(vars(record)) for record in caplog.records)  # before the log formatter
    for text in [*errors, caplog.text, raw_records]:
        assert canary not in text

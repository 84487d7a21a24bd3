"""Token exchange (RFC 8693) against the stand-in: the shared client and the oidc-exchange source.

The stand-in answers as the Hub documents: hub-docs ``trusted-publishers.md`` (JSON body,
``aud`` = ``https://huggingface.co``, repository vs user resources, 60-minute tokens, 400
``invalid_request`` / ``invalid_grant``) and ``oauth.md`` "Token Exchange for Organizations"
(form body, HTTP Basic client credentials, member e-mail subject, optional ``scope``, no
lifetime parameter, ``invalid_client`` / ``invalid_grant`` / ``invalid_scope``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.fixtures.hub import DiscoverableIssuer
from tests.fixtures.jwt import JwtIssuer
from tokensidecar.backends.hub import (
    ExchangeRefused,
    HubVerifier,
    InvalidSubjectToken,
    exchange_enterprise,
    exchange_id_token,
)
from tokensidecar.backends.hub_errors import HubUnavailable, TokenRejected
from tokensidecar.config import ConfigError, resolve
from tokensidecar.demo.hub import DEFAULT_REPO, HubStandIn, mint_subject_jwt
from tokensidecar.sidecar.settings import sidecar_settings
from tokensidecar.sources import SourceError, build_source
from tokensidecar.sources.oidc_exchange import OidcExchangeSource
from tokensidecar.sources.settings import resolve_source
from tokensidecar.token import Token

RESOURCE = DEFAULT_REPO  # a repository resource: an hf_jwt_ token that can write to it


def _source(hub: HubStandIn, subject_file: Path, *, resource: str = RESOURCE) -> OidcExchangeSource:
    config = resolve(
        sidecar_settings(),
        {},
        environ={
            "TOKENSIDECAR_SOURCE": "oidc-exchange",
            "HF_ENDPOINT": hub.url,
            "TOKENSIDECAR_OIDC_RESOURCE": resource,
            "TOKENSIDECAR_OIDC_TOKEN_FILE": str(subject_file),
        },
    )
    source = build_source(resolve_source(config))
    assert isinstance(source, OidcExchangeSource)
    return source


async def test_exchange_gives_a_short_lived_hub_token_that_the_hub_accepts(
    hub: HubStandIn, oidc_issuer: JwtIssuer
) -> None:
    exchanged = await exchange_id_token(endpoint=hub.url, subject_token=oidc_issuer.mint(), resource=RESOURCE)
    assert exchanged.value.startswith("hf_jwt_")
    assert exchanged.expires_in == hub.exchange_lifetime
    assert exchanged.token_type == "bearer"
    assert exchanged.value not in repr(exchanged)
    assert hub.is_valid(exchanged.value)


async def test_repo_resource_gives_a_token_that_writes_to_that_one_repo(
    hub: HubStandIn, oidc_issuer: JwtIssuer
) -> None:
    # trusted-publishers.md "Two flavors": repo publisher → write access to that one repo.
    exchanged = await exchange_id_token(endpoint=hub.url, subject_token=oidc_issuer.mint(), resource=RESOURCE)
    scoped = await HubVerifier(endpoint=hub.url, mode="scope", model_id=DEFAULT_REPO).verify(
        Token(value=exchanged.value, source="test")
    )
    assert scoped.scope is not None
    assert scoped.scope.kind == "trusted-publisher-repo" and scoped.scope.can_write is True
    assert scoped.scope.write_targets == (DEFAULT_REPO,)


async def test_user_resource_gives_a_read_only_token_that_cannot_read_private_repos(
    hub: HubStandIn, oidc_issuer: JwtIssuer
) -> None:
    # trusted-publishers.md: a username → "hf_oauth_…", only the gated-repos scope, no writes,
    # "cannot read your private repos".
    exchanged = await exchange_id_token(
        endpoint=hub.url, subject_token=oidc_issuer.mint(), resource=hub.username
    )
    assert exchanged.value.startswith("hf_oauth_")
    assert exchanged.scope == ("gated-repos",)
    assert await HubVerifier(endpoint=hub.url).verify(Token(value=exchanged.value, source="test"))
    with pytest.raises(TokenRejected, match="read access to acme/private-model: HTTP 404") as refused:
        await HubVerifier(endpoint=hub.url, mode="repo", model_id=DEFAULT_REPO).verify(
            Token(value=exchanged.value, source="test", granted_scope=exchanged.scope)
        )
    assert "cannot read private repositories: use the model repository" in str(refused.value)


async def test_the_hub_finds_a_public_issuers_keys_by_oidc_discovery(
    hub: HubStandIn, discoverable_issuer: DiscoverableIssuer
) -> None:
    # trusted-publishers.md "How it works": the Hub checks the signature against the issuer's
    # keys, found through {iss}/.well-known/openid-configuration → jwks_uri.
    subject = discoverable_issuer.mint(audience=["https://huggingface.co"])
    exchanged = await exchange_id_token(endpoint=hub.url, subject_token=subject, resource=RESOURCE)
    assert hub.is_valid(exchanged.value)
    assert discoverable_issuer.discovery_requests == 1


async def test_an_issuer_the_hub_cannot_reach_is_refused(
    hub: HubStandIn, oidc_issuer: JwtIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    # A cluster's in-cluster issuer: trusted on the Hub by URL, but not reachable from it.
    private = "https://kubernetes.default.svc.cluster.local"
    hub.trust_issuer_url(private)
    subject = mint_subject_jwt(
        private_key=ec.generate_private_key(ec.SECP256R1()), audience="https://huggingface.co", issuer=private
    )
    with pytest.raises(
        ExchangeRefused, match="could not fetch the issuer's OIDC discovery document"
    ) as refused:
        await exchange_id_token(endpoint=hub.url, subject_token=subject, resource=RESOURCE)
    assert refused.value.error == "invalid_grant"
    assert "does not look public" in caplog.text  # warned before sending


async def test_projected_token_with_an_array_audience_is_exchanged(
    hub: HubStandIn, oidc_issuer: JwtIssuer
) -> None:
    # kubelet-projected tokens carry aud as a JSON array.
    subject = oidc_issuer.mint(audience=["https://huggingface.co", "https://kubernetes.default.svc"])
    exchanged = await exchange_id_token(endpoint=hub.url, subject_token=subject, resource=RESOURCE)
    assert hub.is_valid(exchanged.value)


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        (
            {"audience": "https://elsewhere.example"},
            "claim aud of the subject token is https://elsewhere.example",
        ),
        ({"audience": ["https://kubernetes.default.svc"]}, "the Hub requires https://huggingface.co"),
        ({"expires_in": -5}, "claim exp: the subject token has expired"),
        ({"issuer": "http://issuer.example"}, "claim iss of the subject token is not an https:// URL"),
        (None, "not a JWT"),
    ],
)
async def test_subject_claims_the_hub_checks_are_checked_before_sending(
    hub: HubStandIn, oidc_issuer: JwtIssuer, claims: dict[str, object] | None, expected: str
) -> None:
    subject = oidc_issuer.mint(**claims) if claims is not None else "not-a-jwt-at-all"  # type: ignore[arg-type]
    with pytest.raises(InvalidSubjectToken, match=expected) as invalid:
        await exchange_id_token(endpoint=hub.url, subject_token=subject, resource=RESOURCE)
    assert subject not in str(invalid.value)
    assert hub.calls["oauth_token"] == 0


@pytest.mark.parametrize(
    ("problem", "error", "expected"),
    [
        ("untrusted_key", "invalid_grant", "not from a trusted issuer"),
        ("unknown_repo", "invalid_grant", "repository not found"),
        ("unknown_user", "invalid_grant", "user not found"),
        ("bad_resource", "invalid_request", "bad resource format"),
    ],
)
async def test_exchange_refusal_carries_the_hubs_error_text(
    hub: HubStandIn, oidc_issuer: JwtIssuer, problem: str, error: str, expected: str
) -> None:
    subject, resource = oidc_issuer.mint(), RESOURCE
    if problem == "untrusted_key":
        stranger = ec.generate_private_key(ec.SECP256R1())
        subject = mint_subject_jwt(
            private_key=stranger, audience="https://huggingface.co", issuer="https://x.example"
        )
    elif problem == "unknown_repo":
        resource = "acme/other-model"
    elif problem == "unknown_user":
        resource = "nobody-here"
    else:
        resource = "models/acme/private-model"  # not a documented resource form
    with pytest.raises(ExchangeRefused, match=expected) as refused:
        await exchange_id_token(endpoint=hub.url, subject_token=subject, resource=resource)
    assert refused.value.error == error
    assert refused.value.status == 400
    assert error in str(refused.value)
    assert subject not in str(refused.value)


async def test_exchange_during_hub_outage_is_unavailable(hub: HubStandIn, oidc_issuer: JwtIssuer) -> None:
    hub.fail_next(1, status=502, path_prefix="/oauth/token")
    with pytest.raises(HubUnavailable, match="HTTP 502"):
        await exchange_id_token(endpoint=hub.url, subject_token=oidc_issuer.mint(), resource=RESOURCE)


async def test_an_exchange_answer_with_an_unusable_lifetime_is_refused_not_a_crash(
    hub: HubStandIn, oidc_issuer: JwtIssuer, tmp_path: Path
) -> None:
    # expires_in of 10^20 s is no lifetime a schedule can use: a clear SourceError, as the
    # rotation job's exchange issuers report it, never a bare ValueError out of the source.
    subject_file = tmp_path / "subject"
    subject_file.write_text(oidc_issuer.mint(expires_in=600))
    hub.exchange_lifetime = 1e20
    with pytest.raises(SourceError, match=r"unusable lifetime: expires_in .* is out of range") as raised:
        await _source(hub, subject_file).fetch()
    assert not raised.value.retryable


async def test_enterprise_exchange_acts_for_a_member(hub: HubStandIn) -> None:
    hub.register_client(client_id="acme-app", client_secret="s3cret-client-value", members=("ml@acme.io",))
    exchanged = await exchange_enterprise(
        endpoint=hub.url, client_id="acme-app", client_secret="s3cret-client-value", subject="ml@acme.io"
    )
    assert exchanged.value.startswith("hf_oauth_")
    # oauth.md: 8 h by default, the app's setting; no lifetime parameter is sent.
    assert exchanged.expires_in == 8 * 3600
    assert "expires_in" not in hub.last_exchange
    assert exchanged.scope == ("openid", "profile", "email", "read-repos")
    verified = await HubVerifier(endpoint=hub.url).verify(Token(value=exchanged.value, source="test"))
    assert verified.verified

    with pytest.raises(ExchangeRefused, match="invalid_client") as bad_client:
        await exchange_enterprise(
            endpoint=hub.url, client_id="acme-app", client_secret="wrong-secret", subject="ml@acme.io"
        )
    assert bad_client.value.status == 401
    with pytest.raises(ExchangeRefused, match="User not found in the bound organization") as stranger:
        await exchange_enterprise(
            endpoint=hub.url, client_id="acme-app", client_secret="s3cret-client-value", subject="x@evil.io"
        )
    assert stranger.value.error == "invalid_grant"


async def test_enterprise_exchange_asks_for_a_narrower_scope(hub: HubStandIn) -> None:
    # oauth.md "Scope control": the scope parameter narrows the app's scopes; invalid_scope otherwise.
    hub.register_client(client_id="acme-app", client_secret="s3cret-client-value", members=("ml@acme.io",))
    exchanged = await exchange_enterprise(
        endpoint=hub.url,
        client_id="acme-app",
        client_secret="s3cret-client-value",
        subject="ml@acme.io",
        scope="read-repos",
    )
    assert exchanged.scope == ("read-repos",)
    assert hub.last_exchange["scope"] == "read-repos"
    with pytest.raises(ExchangeRefused, match="invalid_scope"):
        await exchange_enterprise(
            endpoint=hub.url,
            client_id="acme-app",
            client_secret="s3cret-client-value",
            subject="ml@acme.io",
            scope="write-repos",  # not among the app's scopes
        )


async def test_source_sets_expiry_from_expires_in(
    hub: HubStandIn, oidc_issuer: JwtIssuer, tmp_path: Path
) -> None:
    hub.exchange_lifetime = 6
    subject_file = tmp_path / "sa-token"
    subject_file.write_text(oidc_issuer.mint())
    before = datetime.now(UTC)
    token = await _source(hub, subject_file).fetch()
    assert token.source == "oidc-exchange"
    assert token.value.startswith("hf_jwt_")
    assert token.expires_at is not None
    lifetime = (token.expires_at - before).total_seconds()
    assert 5.5 <= lifetime <= 6.5


async def test_expiry_comes_from_expires_in_whatever_the_token_kind(
    hub: HubStandIn, oidc_issuer: JwtIssuer, tmp_path: Path
) -> None:
    # A user resource gives an hf_oauth_ token, which is not a JWT: its expiry is the
    # exchange's expires_in, like an hf_jwt_'s, and the granted scope rides along.
    hub.exchange_lifetime = 60
    subject_file = tmp_path / "sa-token"
    subject_file.write_text(oidc_issuer.mint())
    before = datetime.now(UTC)
    token = await _source(hub, subject_file, resource=hub.username).fetch()
    assert token.value.startswith("hf_oauth_") and token.granted_scope == ("gated-repos",)
    assert token.expires_at is not None and 59 <= (token.expires_at - before).total_seconds() <= 61


async def test_source_reads_the_subject_file_again_at_every_exchange(
    hub: HubStandIn, oidc_issuer: JwtIssuer, tmp_path: Path
) -> None:
    subject_file = tmp_path / "sa-token"
    subject_file.write_text(oidc_issuer.mint())
    source = _source(hub, subject_file)
    first = await source.fetch()

    # kubelet rotates the projected token; an expired one is named, and never sent.
    subject_file.write_text(oidc_issuer.mint(expires_in=-1))
    with pytest.raises(SourceError, match="claim exp: the subject token has expired") as refused:
        await source.fetch()
    assert refused.value.retryable is False

    subject_file.write_text(oidc_issuer.mint(expires_in=600))
    second = await source.fetch()
    assert second.value != first.value
    assert hub.calls["oauth_token"] == 2


async def test_source_reports_a_missing_or_empty_subject_file(hub: HubStandIn, tmp_path: Path) -> None:
    source = _source(hub, tmp_path / "absent")
    with pytest.raises(SourceError, match="does not exist"):
        await source.fetch()
    (tmp_path / "absent").write_text("  \n")
    with pytest.raises(SourceError, match="is empty"):
        await source.fetch()
    assert hub.calls["oauth_token"] == 0


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"TOKENSIDECAR_OIDC_TOKEN_FILE": "/x"},
            "TOKENSIDECAR_OIDC_RESOURCE is required when --source=oidc-exchange",
        ),
        (
            {"TOKENSIDECAR_OIDC_RESOURCE": "acme"},
            "TOKENSIDECAR_OIDC_TOKEN_FILE is required when --source=oidc-exchange",
        ),
        (
            {
                "TOKENSIDECAR_OIDC_RESOURCE": "acme",
                "TOKENSIDECAR_OIDC_TOKEN_FILE": "/x",
                "HF_ENDPOINT": "hub.local",
            },
            "HF_ENDPOINT",
        ),
    ],
)
def test_source_settings_are_checked(environ: dict[str, str], message: str) -> None:
    config = resolve(sidecar_settings(), {}, environ={"TOKENSIDECAR_SOURCE": "oidc-exchange", **environ})
    with pytest.raises(ConfigError, match=message):
        build_source(resolve_source(config))


async def test_canary_never_leaks_from_exchange_paths(
    hub: HubStandIn, oidc_issuer: JwtIssuer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client_secret = "CANARY-client-secret-" + hashlib.sha256(str(time.time()).encode()).hexdigest()[:8]
    hub.register_client(client_id="app", client_secret=client_secret, members=("a@acme.io",))
    subject_file = tmp_path / "sa-token"
    good_subject = oidc_issuer.mint()
    subject_file.write_text(good_subject)
    source = _source(hub, subject_file)
    secrets_seen = [good_subject, client_secret]
    texts: list[str] = []

    token = await source.fetch()
    secrets_seen.append(token.value)
    texts.append(repr(token))
    exchanged = await exchange_enterprise(
        endpoint=hub.url, client_id="app", client_secret=client_secret, subject="a@acme.io"
    )
    secrets_seen.append(exchanged.value)
    texts.append(repr(exchanged))

    bad_subject = oidc_issuer.mint(audience="https://elsewhere.example")
    secrets_seen.append(bad_subject)
    subject_file.write_text(bad_subject)
    with pytest.raises(SourceError) as refused:
        await source.fetch()
    texts.append(str(refused.value))
    with pytest.raises(ExchangeRefused) as bad_client:
        await exchange_enterprise(
            endpoint=hub.url, client_id="app", client_secret=client_secret + "x", subject="a"
        )
    texts.append(str(bad_client.value))
    hub.fail_next(1, status=500)
    subject_file.write_text(good_subject)
    with pytest.raises(SourceError) as outage:
        await source.fetch()
    texts.append(str(outage.value))

    texts.append(caplog.text)
    texts.extend(repr(vars(record)) for record in caplog.records)
    for secret in secrets_seen:
        for text in texts:
            assert secret not in text

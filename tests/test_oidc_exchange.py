"""Token exchange (RFC 8693) against the stand-in: the shared client and the oidc-exchange source."""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.fixtures.hub import OidcIssuer
from tokensidecar.config import ConfigError, resolve, sidecar_settings
from tokensidecar.demo.hub import HubStandIn, mint_subject_jwt
from tokensidecar.hub import ExchangeRefused, HubVerifier, exchange_enterprise, exchange_id_token
from tokensidecar.sources import SourceError, build_source
from tokensidecar.sources.oidc_exchange import OidcExchangeSource
from tokensidecar.token import Token
from tokensidecar.verify import HubUnavailable

RESOURCE = "acme"


def _source(hub: HubStandIn, subject_file: Path) -> OidcExchangeSource:
    config = resolve(
        sidecar_settings(),
        {},
        environ={
            "TOKENSIDECAR_SOURCE": "oidc-exchange",
            "HF_ENDPOINT": hub.url,
            "TOKENSIDECAR_OIDC_RESOURCE": RESOURCE,
            "TOKENSIDECAR_OIDC_TOKEN_FILE": str(subject_file),
        },
    )
    source = build_source(config)
    assert isinstance(source, OidcExchangeSource)
    return source


async def test_exchange_gives_a_short_lived_hub_token_that_the_hub_accepts(
    hub: HubStandIn, oidc_issuer: OidcIssuer
) -> None:
    exchanged = await exchange_id_token(
        endpoint=hub.url, subject_token=oidc_issuer.mint(audience=hub.url), resource=RESOURCE
    )
    assert exchanged.value.startswith("hf_jwt_")
    assert exchanged.expires_in == hub.exchange_lifetime
    assert exchanged.token_type == "bearer"
    assert exchanged.value not in repr(exchanged)
    assert hub.is_valid(exchanged.value)


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("wrong_audience", "audience must be"),
        ("expired", "expired"),
        ("untrusted_key", "not from a trusted issuer"),
        ("not_a_jwt", "not a JWT"),
    ],
)
async def test_exchange_refusal_carries_the_hubs_error_text(
    hub: HubStandIn, oidc_issuer: OidcIssuer, problem: str, expected: str
) -> None:
    if problem == "wrong_audience":
        subject = oidc_issuer.mint(audience="https://huggingface.co")
    elif problem == "expired":
        subject = oidc_issuer.mint(audience=hub.url, expires_in=-5)
    elif problem == "untrusted_key":
        stranger = ec.generate_private_key(ec.SECP256R1())
        subject = mint_subject_jwt(private_key=stranger, audience=hub.url)
    else:
        subject = "not-a-jwt-at-all"
    with pytest.raises(ExchangeRefused, match=expected) as refused:
        await exchange_id_token(endpoint=hub.url, subject_token=subject, resource=RESOURCE)
    assert refused.value.error == "invalid_grant"
    assert refused.value.status == 400
    assert "invalid_grant" in str(refused.value)
    assert subject not in str(refused.value)


async def test_exchange_during_hub_outage_is_unavailable(hub: HubStandIn, oidc_issuer: OidcIssuer) -> None:
    hub.fail_next(1, status=502, path_prefix="/oauth/token")
    with pytest.raises(HubUnavailable, match="HTTP 502"):
        await exchange_id_token(
            endpoint=hub.url, subject_token=oidc_issuer.mint(audience=hub.url), resource="x"
        )


async def test_enterprise_exchange_acts_for_a_member(hub: HubStandIn) -> None:
    hub.register_client(client_id="acme-app", client_secret="s3cret-client-value", members=("ml@acme.io",))
    exchanged = await exchange_enterprise(
        endpoint=hub.url,
        client_id="acme-app",
        client_secret="s3cret-client-value",
        subject="ml@acme.io",
        requested_lifetime=1800,
    )
    assert exchanged.value.startswith("hf_oauth_")
    assert exchanged.expires_in == 1800
    verified = await HubVerifier(endpoint=hub.url).verify(Token(value=exchanged.value, source="test"))
    assert verified.verified

    with pytest.raises(ExchangeRefused, match="invalid_client") as bad_client:
        await exchange_enterprise(
            endpoint=hub.url, client_id="acme-app", client_secret="wrong-secret", subject="ml@acme.io"
        )
    assert bad_client.value.status == 401
    with pytest.raises(ExchangeRefused, match="not a member") as stranger:
        await exchange_enterprise(
            endpoint=hub.url, client_id="acme-app", client_secret="s3cret-client-value", subject="x@evil.io"
        )
    assert stranger.value.error == "invalid_grant"


async def test_source_sets_expiry_from_expires_in(
    hub: HubStandIn, oidc_issuer: OidcIssuer, tmp_path: Path
) -> None:
    hub.exchange_lifetime = 6
    subject_file = tmp_path / "sa-token"
    subject_file.write_text(oidc_issuer.mint(audience=hub.url))
    before = datetime.now(UTC)
    token = await _source(hub, subject_file).fetch()
    assert token.source == "oidc-exchange"
    assert token.value.startswith("hf_jwt_")
    assert token.expires_at is not None
    lifetime = (token.expires_at - before).total_seconds()
    assert 5.5 <= lifetime <= 6.5


async def test_source_reads_the_subject_file_again_at_every_exchange(
    hub: HubStandIn, oidc_issuer: OidcIssuer, tmp_path: Path
) -> None:
    subject_file = tmp_path / "sa-token"
    subject_file.write_text(oidc_issuer.mint(audience=hub.url))
    source = _source(hub, subject_file)
    first = await source.fetch()

    # kubelet rotates the projected token; the old one expires soon after.
    subject_file.write_text(oidc_issuer.mint(audience=hub.url, expires_in=-1))
    with pytest.raises(SourceError, match="invalid_grant: subject_token has expired") as refused:
        await source.fetch()
    assert refused.value.retryable is False

    subject_file.write_text(oidc_issuer.mint(audience=hub.url, expires_in=600))
    second = await source.fetch()
    assert second.value != first.value
    assert hub.calls["oauth_token"] == 3


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
        build_source(config)


async def test_canary_never_leaks_from_exchange_paths(
    hub: HubStandIn, oidc_issuer: OidcIssuer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client_secret = "CANARY-client-secret-" + hashlib.sha256(str(time.time()).encode()).hexdigest()[:8]
    hub.register_client(client_id="app", client_secret=client_secret, members=("a@acme.io",))
    subject_file = tmp_path / "sa-token"
    good_subject = oidc_issuer.mint(audience=hub.url)
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

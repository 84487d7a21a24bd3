"""``--verify=scope``: a token that can write anywhere but its model is refused.

The rule is documented in docs/kserve-huggingface.md, "Least privilege".

Two layers. The pure rule (:mod:`tokensidecar.backends.hub_scope`) on whoami-v2 answers in the shapes
the Hub really sends, each shape cited where it is written down:

* classic ``read`` / ``write``: ``auth: {type: "access_token", accessToken: {displayName,
  role, createdAt}}`` — huggingface.js ``packages/hub/src/lib/who-am-i.ts`` (``AuthInfo``),
  huggingface_hub ``_login.py`` (reads ``auth.accessToken.role``), hub-docs
  ``security-tokens.md`` (what the roles mean);
* fine-grained: ``role: "fineGrained"``, ``fineGrained: {canReadGatedRepos, global: [...],
  scoped: [{entity: {_id, type, name}, permissions: [...]}]}`` — the shape of real answers
  as captured in public client code (permissions ``repo.content.read``, ``repo.write``…;
  entity types ``user``, ``org``, ``model``); hub-docs ``security-tokens.md`` describes
  fine-grained tokens but not the JSON;
* OAuth: ``auth: {type: "oauth", expiresAt}`` and no ``accessToken`` — huggingface_hub
  PR #2631 (``KeyError: 'accessToken'`` on OAuth tokens); their scopes come from the
  exchange (hub-docs ``oauth.md`` "Scope control");
* Trusted Publisher repo tokens (``hf_jwt_``): "write access to that one repo" — hub-docs
  ``trusted-publishers.md``; what whoami-v2 answers for them is undocumented.

And the verifier against the stand-in (which answers in those shapes), the sidecar as a
process (nothing refused is published; ``/status`` and ``token.json`` carry the summary).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.jwt import JwtIssuer
from tests.sidecar_process import hub_file_sidecar, wait_for
from tokensidecar.backends.hub import HubVerifier, exchange_enterprise, exchange_id_token
from tokensidecar.backends.hub_errors import HubUnavailable, TokenRejected
from tokensidecar.backends.hub_scope import judge, scope_from_whoami, verdict
from tokensidecar.demo.hub import DEFAULT_REPO, HubStandIn, serve_in_thread
from tokensidecar.redact import fingerprint
from tokensidecar.token import Token

MODEL = DEFAULT_REPO  # acme/private-model


def _classic(role: str) -> dict[str, Any]:
    # huggingface.js who-am-i.ts AuthInfo; a real answer also has the user fields around it.
    return {
        "type": "user",
        "name": "acme-bot",
        "auth": {
            "type": "access_token",
            "accessToken": {"displayName": "ci", "role": role, "createdAt": "2025-01-01T00:00:00.000Z"},
        },
    }


def _fine(*scoped: dict[str, Any], global_permissions: tuple[str, ...] = ()) -> dict[str, Any]:
    answer = _classic("fineGrained")
    answer["auth"]["accessToken"]["fineGrained"] = {
        "canReadGatedRepos": True,
        "global": list(global_permissions),
        "scoped": list(scoped),
    }
    return answer


def _entity(kind: str, name: str, *permissions: str) -> dict[str, Any]:
    return {"entity": {"_id": "0" * 24, "type": kind, "name": name}, "permissions": list(permissions)}


READ = ("repo.content.read", "repo.access.read")
WRITE = ("repo.content.read", "repo.write")


@pytest.mark.parametrize(
    ("answer", "prefix", "extra", "ok", "reason"),
    [
        (_classic("read"), "hf_", {}, True, "read-only"),
        (_classic("write"), "hf_", {}, False, "can write to acme-bot/*"),
        (_classic("admin"), "hf_", {}, False, "can write"),
        (_fine(_entity("model", MODEL, *READ)), "hf_", {}, True, "read-only"),
        (_fine(_entity("model", MODEL, *WRITE)), "hf_", {}, True, f"can write to {MODEL} only"),
        (_fine(_entity("org", "acme", *READ)), "hf_", {}, True, "read-only"),
        (_fine(_entity("org", "acme", *WRITE)), "hf_", {}, False, "can write to acme/*"),
        (
            _fine(_entity("model", "acme/other", *READ)),
            "hf_",
            {},
            False,
            f"does not have {MODEL} in its scope",
        ),
        (
            _fine(_entity("model", MODEL, *READ), _entity("dataset", "acme/data", *WRITE)),
            "hf_",
            {},
            False,
            "can write to datasets/acme/data",
        ),
        (
            _fine(_entity("model", MODEL, *READ), global_permissions=("discussion.write", "post.write")),
            "hf_",
            {},
            True,
            "read-only",
        ),
        (
            {"auth": {"type": "oauth", "expiresAt": "2030-01-01T00:00:00Z"}},
            "hf_oauth_",
            {},
            False,
            "cannot be told",
        ),
        (
            {"auth": {"type": "oauth"}},
            "hf_oauth_",
            {"oauth_scopes": ("openid", "read-repos")},
            True,
            "read-only",
        ),
        ({"auth": {"type": "oauth"}}, "hf_oauth_", {"oauth_scopes": ("write-repos",)}, False, "can write"),
        (None, "hf_jwt_", {"writes_model": True}, True, f"can write to {MODEL} only"),
        (None, "hf_jwt_", {"writes_model": False}, False, "can write to another repository"),
        ({"auth": {"type": "app_token"}}, "hf_", {}, False, "does not say what this token may do"),
        (_classic("futureRole"), "hf_", {}, False, "does not say"),
    ],
)
def test_scope_rule_on_the_hubs_whoami_shapes(
    answer: Any, prefix: str, extra: dict[str, Any], ok: bool, reason: str
) -> None:
    scope = scope_from_whoami(answer, model_id=MODEL, token_prefix=prefix, **extra)
    verdict = judge(scope, model_id=MODEL)
    assert verdict.ok is ok, verdict
    assert reason in verdict.reason, verdict.reason
    assert set(scope.summary()) >= {"kind", "role", "fine_grained", "scoped_entities", "can_write"}


def test_verdict_is_the_whole_rule_for_callers_that_have_the_answers() -> None:
    # What the gateway's credentials call with a whoami answer they already hold.
    assert verdict(_classic("read"), model_id=MODEL).ok
    refused = verdict(_classic("write"), model_id=MODEL)
    assert not refused.ok and refused.scope.role == "write"


def test_scope_summary_counts_fine_grained_entities() -> None:
    scope = scope_from_whoami(
        _fine(_entity("model", MODEL, *READ), _entity("user", "acme-bot", "repo.content.read")),
        model_id=MODEL,
    )
    assert scope.summary() == {
        "kind": "fine-grained",
        "role": "fineGrained",
        "fine_grained": True,
        "scoped_entities": 2,
        "can_write": False,
        "write_targets": [],
    }


# --- the verifier against the stand-in ------------------------------------------------------


def _scope_verifier(hub: HubStandIn) -> HubVerifier:
    return HubVerifier(endpoint=hub.url, mode="scope", model_id=MODEL)


async def test_scope_accepts_a_read_token_and_reports_it(hub: HubStandIn) -> None:
    verified = await _scope_verifier(hub).verify(Token(value=hub.issue_token(), source="test"))
    assert verified.scope is not None
    assert verified.scope.summary()["role"] == "read" and verified.scope.can_write is False
    assert hub.calls["auth_check"] == 1 and hub.calls["auth_check_write"] == 1


async def test_scope_refuses_a_classic_write_token(hub: HubStandIn) -> None:
    with pytest.raises(TokenRejected, match="--verify=scope refused the token: this classic token can write"):
        await _scope_verifier(hub).verify(Token(value=hub.issue_token(role="write"), source="test"))
    # repo alone accepts it: it can read the model.
    assert await HubVerifier(endpoint=hub.url, mode="repo", model_id=MODEL).verify(
        Token(value=hub.issue_token(role="write"), source="test")
    )


@pytest.mark.parametrize(
    ("scoped", "accepted"),
    [
        ([{"entity": {"type": "model", "name": MODEL}, "permissions": list(READ)}], True),
        ([{"entity": {"type": "model", "name": MODEL}, "permissions": list(WRITE)}], True),
        ([{"entity": {"type": "org", "name": "acme"}, "permissions": list(WRITE)}], False),
        ([{"entity": {"type": "model", "name": "acme/other"}, "permissions": list(READ)}], False),
    ],
)
async def test_scope_judges_fine_grained_tokens_by_their_scoped_entities(
    hub: HubStandIn, scoped: list[dict[str, Any]], accepted: bool
) -> None:
    # The Hub answers auth-check for a token whose scope covers the repo; the stand-in lets
    # this one read the model in every case, so the verdict is the scope rule's alone.
    token = Token(value=hub.issue_token(role="fineGrained", scoped=scoped), source="test")
    if accepted:
        verified = await _scope_verifier(hub).verify(token)
        assert verified.scope is not None and verified.scope.fine_grained
        assert verified.scope.scoped_entities == 1
    else:
        with pytest.raises(TokenRejected, match="--verify=scope refused the token"):
            await _scope_verifier(hub).verify(token)


async def test_scope_judges_oauth_tokens_by_the_scopes_the_exchange_granted(hub: HubStandIn) -> None:
    hub.register_client(
        client_id="app", client_secret="client-secret-value", members=("ml@acme.io",),
        scopes=("openid", "read-repos", "write-repos"),
    )  # fmt: skip
    for scope, accepted in (("read-repos", True), ("read-repos write-repos", False)):
        exchanged = await exchange_enterprise(
            endpoint=hub.url,
            client_id="app",
            client_secret="client-secret-value",
            subject="ml@acme.io",
            scope=scope,
        )
        token = Token(value=exchanged.value, source="enterprise-exchange", granted_scope=exchanged.scope)
        if accepted:
            verified = await _scope_verifier(hub).verify(token)
            assert verified.scope is not None and verified.scope.summary()["oauth_scopes"] == ["read-repos"]
        else:
            with pytest.raises(TokenRejected, match="this oauth token can write"):
                await _scope_verifier(hub).verify(token)
    # The same kind of token read from Vault: whoami-v2 does not say its scopes → refused, said so.
    with pytest.raises(TokenRejected, match="whoami-v2 does not list an OAuth token's scopes"):
        await _scope_verifier(hub).verify(Token(value=hub.issue_token(kind="hf_oauth_"), source="vault"))


async def test_scope_accepts_a_trusted_publisher_token_for_the_model_only(
    hub: HubStandIn, oidc_issuer: JwtIssuer
) -> None:
    exchanged = await exchange_id_token(endpoint=hub.url, subject_token=oidc_issuer.mint(), resource=MODEL)
    verified = await _scope_verifier(hub).verify(Token(value=exchanged.value, source="oidc-exchange"))
    assert verified.scope is not None
    assert verified.scope.summary() == {
        "kind": "trusted-publisher-repo",
        "role": "repo",
        "fine_grained": False,
        "scoped_entities": 1,
        "can_write": True,
        "write_targets": [MODEL],
    }
    # An hf_jwt_ repo token for another repository: it can write there, not here.
    other = hub.issue_token(kind="hf_jwt_", writable_repos=("acme/other",))
    with pytest.raises(TokenRejected, match="can write to another repository"):
        await _scope_verifier(hub).verify(Token(value=other, source="oidc-exchange"))


@pytest.mark.parametrize("jwt_whoami", ["accept", "refuse"])
async def test_trusted_publisher_tokens_are_judged_whatever_whoami_says_of_them(
    jwt_whoami: str, oidc_issuer: JwtIssuer
) -> None:
    # Undocumented: whether whoami-v2 accepts hf_jwt_ tokens. Either way, repo and scope
    # verification rely on auth-check; whoami-only verification cannot tell and says so as
    # "cannot verify" (the outage policy decides), never as a pass or a false rejection.
    with serve_in_thread(HubStandIn(jwt_whoami=jwt_whoami)) as hub:
        hub.trust_issuer(public_key=oidc_issuer.public_key, audience="https://huggingface.co")
        exchanged = await exchange_id_token(
            endpoint=hub.url, subject_token=oidc_issuer.mint(), resource=MODEL
        )
        token = Token(value=exchanged.value, source="oidc-exchange")
        assert (await _scope_verifier(hub).verify(token)).verified
        assert (await HubVerifier(endpoint=hub.url, mode="repo", model_id=MODEL).verify(token)).verified
        if jwt_whoami == "refuse":
            with pytest.raises(HubUnavailable, match="set --verify=repo with --model-id"):
                await HubVerifier(endpoint=hub.url, mode="whoami").verify(token)


async def test_scope_refuses_a_token_that_cannot_read_a_gated_model() -> None:
    with serve_in_thread(HubStandIn(gated=True)) as hub:
        waiting = hub.issue_token(gated_access=False)
        with pytest.raises(TokenRejected, match="gated model, access not granted"):
            await _scope_verifier(hub).verify(Token(value=waiting, source="test"))


# --- the sidecar ----------------------------------------------------------------------------


def test_sidecar_with_verify_scope_never_publishes_a_write_token_and_reports_the_scope(
    hub: HubStandIn, tmp_path: Path
) -> None:
    sidecar, source_file = hub_file_sidecar(
        hub_url=hub.url, directory=tmp_path, TOKENSIDECAR_VERIFY="scope", TOKENSIDECAR_MODEL_ID=MODEL
    )
    read, write = hub.issue_token(), hub.issue_token(role="write")
    source_file.write_text(read)
    with sidecar:
        sidecar.wait_for_token(read)
        wait_for(lambda: sidecar.status()["fingerprint"] == fingerprint(read))
        status = sidecar.status()
        assert status["scope"]["role"] == "read" and status["scope"]["can_write"] is False
        metadata = json.loads((tmp_path / "out" / "token.json").read_text())
        assert metadata["scope"] == status["scope"]

        staged = source_file.with_name("staged")
        staged.write_text(write)
        staged.replace(source_file)
        wait_for(lambda: sidecar.status()["consecutive_failures"] >= 1)
        assert sidecar.token() == read
        assert "--verify=scope refused the token" in sidecar.status()["last_error"]
        assert "can write to acme-bot/*" in sidecar.status()["last_error"]
    for secret in (read, write):
        assert secret not in sidecar.logs


# --- the rotation report ----------------------------------------------------------------------


def test_rotation_report_carries_the_scope_summary_never_the_token(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from tokensidecar.rotate.job import Outcome
    from tokensidecar.rotate.report import write_metrics_file

    scope = scope_from_whoami(_fine(_entity("model", MODEL, *READ)), model_id=MODEL)
    outcome = Outcome(result="rotated", issuer="vault", target="kubernetes-secret", scope=scope)
    assert "kind=fine-grained role=fineGrained can_write=False" in outcome.summary()
    path = tmp_path / "rotate.prom"
    write_metrics_file(str(path), outcome=outcome)
    samples = {
        sample.name: sample
        for family in text_string_to_metric_families(path.read_text())
        for sample in family.samples
    }
    info = samples["tokensidecar_rotate_token_scope_info"]
    assert info.value == 1
    assert info.labels["kind"] == "fine-grained" and info.labels["can_write"] == "false"
    assert info.labels["fine_grained"] == "true" and info.labels["role"] == "fineGrained"
    assert samples["tokensidecar_rotate_token_scoped_entities"].value == 1
    # A run that verified nothing reports no scope rather than a stale one.
    write_metrics_file(
        str(path), outcome=Outcome(result="failed", issuer="vault", target="kubernetes-secret")
    )
    assert "tokensidecar_rotate_token_scope_info" not in path.read_text()

"""The gateway's policy: decisions, validation, reload from a ConfigMap volume, admission."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import textwrap
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from tests.gateway.conftest import KubeletVolume
from tokensidecar.gateway.identity import Identity
from tokensidecar.gateway.policy import (
    Decision,
    Policy,
    PolicyError,
    PolicyFile,
    admission_decision,
    parse_storage_uri,
)
from tokensidecar.logs import JsonFormatter

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"

# The example of docs/gateway.md, word for word.
DOCUMENTED_POLICY = """
rules:
  - subjects:                   # who: globs; serviceAccount defaults to "*"
      - {namespace: team-a, serviceAccount: llama-*}
    repos: [acme/llama-*]       # globs over repo ids
    revisions: [main]           # optional: names or commit ids; "pinned" = commit ids only
  - subjects: [{namespace: team-b}]
    repos: [partner/*]
    credential: partner
"""


def who(namespace: str, service_account: str = "default") -> Identity:
    return Identity(
        namespace=namespace,
        service_account=service_account,
        username=f"system:serviceaccount:{namespace}:{service_account}",
        expires_at=None,
    )


def policy(text: str) -> Policy:
    return Policy.from_yaml(textwrap.dedent(text))


def test_contract_example_allows_what_it_says_and_nothing_else() -> None:
    rules = policy(DOCUMENTED_POLICY)
    allowed = rules.decide(who("team-a", "llama-server"), repo="acme/llama-3", revision="main")
    assert allowed == Decision(allowed=True, rule=0, credential="default", reason="allowed")
    partner = rules.decide(who("team-b", "anything"), repo="partner/model", revision="v2")
    assert partner == Decision(allowed=True, rule=1, credential="partner", reason="allowed")
    for identity, repo in [
        (who("team-a", "llama-server"), "acme/mistral"),  # repo outside the glob
        (who("team-a", "mistral-server"), "acme/llama-3"),  # service account outside the glob
        (who("team-c", "llama-server"), "acme/llama-3"),  # another namespace
        (who("team-a", "llama-server"), "partner/model"),  # another rule's repos
    ]:
        decision = rules.decide(identity, repo=repo, revision="main")
        assert decision == Decision(allowed=False, rule=None, credential=None, reason="no rule matches")
    assert rules.credentials() == frozenset({"default", "partner"})


def test_empty_policy_denies_everything() -> None:
    for text in ("", "rules: []", "rules:"):
        decision = Policy.from_yaml(text).decide(who("team-a"), repo="acme/x", revision="main")
        assert not decision.allowed


def test_globs_stay_inside_one_path_segment() -> None:
    rules = policy("""
        rules:
          - subjects: [{namespace: "team-*", serviceAccount: "llama-?"}]
            repos: ["acme/*"]
          - subjects: [{namespace: ops}]
            repos: ["*/*"]
    """)
    assert rules.decide(who("team-x", "llama-1"), repo="acme/anything", revision="main").allowed
    assert not rules.decide(who("team-x", "llama-10"), repo="acme/anything", revision="main").allowed
    assert not rules.decide(who("team-x", "llama-1"), repo="acme-evil/anything", revision="main").allowed
    assert not rules.decide(who("team-x", "llama-1"), repo="acme/a/b", revision="main").allowed
    assert not rules.decide(who("other", "llama-1"), repo="acme/anything", revision="main").allowed
    assert rules.decide(who("ops", "any"), repo="any-org/any-model", revision="main").rule == 1
    assert not rules.decide(who("ops", "any"), repo="gpt2", revision="main").allowed


def test_repo_ids_match_case_insensitively_kubernetes_names_exactly() -> None:
    rules = policy("""
        rules:
          - subjects: [{namespace: team-a, serviceAccount: llama}]
            repos: [Acme/Llama-*]
    """)
    assert rules.decide(who("team-a", "llama"), repo="acme/llama-3", revision="main").allowed
    assert rules.decide(who("team-a", "llama"), repo="ACME/LLAMA-3", revision="main").allowed
    assert not rules.decide(who("Team-A", "llama"), repo="acme/llama-3", revision="main").allowed


def test_revisions_names_commits_and_known_as() -> None:
    rules = policy(DOCUMENTED_POLICY)
    caller = who("team-a", "llama-server")
    assert not rules.decide(caller, repo="acme/llama-3", revision="v1.0").allowed
    denied = rules.decide(caller, repo="acme/llama-3", revision=COMMIT)
    assert denied == Decision(allowed=False, rule=None, credential=None, reason="revision not allowed")
    # The client resolved main to COMMIT through the gateway, then fetches at COMMIT.
    assert rules.decide(caller, repo="acme/llama-3", revision=COMMIT, known_as=frozenset({"main"})).allowed
    assert not rules.decide(caller, repo="acme/llama-3", revision=COMMIT, known_as=frozenset({"dev"})).allowed
    # known_as only speaks for a commit: a branch is never allowed by another name.
    assert not rules.decide(caller, repo="acme/llama-3", revision="dev", known_as=frozenset({"main"})).allowed


def test_pinned_allows_commit_ids_only() -> None:
    rules = policy(f"""
        rules:
          - subjects: [{{namespace: prod}}]
            repos: [acme/*]
            revisions: [pinned]
          - subjects: [{{namespace: staging}}]
            repos: [acme/*]
            revisions: [{OTHER_COMMIT.upper()}, v1.0]
    """)
    assert rules.decide(who("prod"), repo="acme/x", revision=COMMIT).allowed
    assert not rules.decide(who("prod"), repo="acme/x", revision="main").allowed
    assert not rules.decide(
        who("prod"), repo="acme/x", revision="0123456789abcdef"
    ).allowed  # short: not a commit
    assert rules.decide(who("staging"), repo="acme/x", revision=OTHER_COMMIT).allowed  # listed (any case)
    assert rules.decide(who("staging"), repo="acme/x", revision="v1.0").allowed
    assert not rules.decide(who("staging"), repo="acme/x", revision=COMMIT).allowed


def test_first_allowing_rule_names_the_credential() -> None:
    rules = policy("""
        rules:
          - subjects: [{namespace: team-a}]
            repos: [partner/*]
            revisions: [pinned]
            credential: partner-pinned
          - subjects: [{namespace: team-a}]
            repos: [partner/*]
            credential: partner
    """)
    assert rules.decide(who("team-a"), repo="partner/m", revision=COMMIT).credential == "partner-pinned"
    decision = rules.decide(who("team-a"), repo="partner/m", revision="main")
    assert (decision.rule, decision.credential) == (1, "partner")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: {}", "rules: must be a list of rules"),
        ("- a", "the policy must be a mapping with a rules list"),
        ("rule: []", "rule: unknown key"),
        ("rules: [42]", "rules[0]: must be a mapping with subjects and repos"),
        ("rules: [{repos: [a/b]}]", "rules[0].subjects: is required"),
        ("rules: [{subjects: [{namespace: a}]}]", "rules[0].repos: is required"),
        ("rules: [{subjects: [], repos: [a/b]}]", "rules[0].subjects: must be a non-empty list of subjects"),
        (
            "rules: [{subjects: [{namespace: a}], repos: [a/b]}, {subjects: [{namespace: a}], repos: a/b}]",
            "rules[1].repos: must be a list of strings",
        ),
        (
            "rules: [{subjects: [{namespace: a}], repos: [a/b, 3]}]",
            "rules[0].repos: must be a list of strings",
        ),
        ("rules: [{subjects: [{namespace: a}], repos: []}]", "rules[0].repos: must not be empty"),
        (
            "rules: [{subjects: [{namespace: a}], repos: ['  ']}]",
            "rules[0].repos[0]: must be a non-empty string",
        ),
        (
            "rules: [{subjects: [{serviceAccount: x}], repos: [a/b]}]",
            "rules[0].subjects[0].namespace: is required",
        ),
        (
            "rules: [{subjects: [{namespace: a, serviceaccount: x}], repos: [a/b]}]",
            "rules[0].subjects[0].serviceaccount: unknown key",
        ),
        ("rules: [{subjects: [{namespace: 7}], repos: [a/b]}]", "rules[0].subjects[0].namespace: must be"),
        ("rules: [{subjects: [a], repos: [a/b]}]", "rules[0].subjects[0]: must be a mapping"),
        (
            "rules: [{subjects: [{namespace: a}], repos: [a/b], revisions: main}]",
            "rules[0].revisions: must be a list of strings",
        ),
        (
            "rules: [{subjects: [{namespace: a}], repos: [a/b], credential: []}]",
            "rules[0].credential: must be",
        ),
        (
            "rules: [{subjects: [{namespace: a}], repos: [a/b], revision: [main]}]",
            "rules[0].revision: unknown key",
        ),
        ("rules: [{subjects: [{namespace: a}]\n  repos: [a/b]}]", "line 2, column 3"),
    ],
)
def test_invalid_policies_are_refused_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as raised:
        Policy.from_yaml(text)
    assert str(raised.value).startswith(message), str(raised.value)


def test_rules_may_only_name_credentials_the_gateway_holds() -> None:
    text = textwrap.dedent(DOCUMENTED_POLICY)
    Policy.from_yaml(text, credentials={"default", "partner"})
    with pytest.raises(PolicyError, match=r"rules\[1\].credential: no credential named 'partner'"):
        Policy.from_yaml(text, credentials={"default"})


# -- the file -----------------------------------------------------------------------------


def capture_logs() -> tuple[io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    return stream, handler


def test_configmap_update_is_reloaded_and_a_bad_one_keeps_the_old(policy_volume: KubeletVolume) -> None:
    registry = CollectorRegistry()
    policy_volume.write(DOCUMENTED_POLICY)
    watched = PolicyFile(policy_volume.path, credentials={"default", "partner"}, registry=registry)
    first = watched.current
    caller = who("team-c", "x")
    assert not first.decide(caller, repo="acme/x", revision="main").allowed
    assert watched.check() is False  # nothing changed

    policy_volume.write(DOCUMENTED_POLICY + "  - subjects: [{namespace: team-c}]\n    repos: [acme/*]\n")
    assert watched.check() is True
    assert watched.current.decide(caller, repo="acme/x", revision="main").allowed
    good = watched.current

    stream, handler = capture_logs()
    try:
        policy_volume.write("rules:\n  - subjects: [{namespace: team-c}]\n    repos: acme/*\n")
        assert watched.check() is False
    finally:
        logging.getLogger().removeHandler(handler)
    assert watched.current is good
    assert watched.load_error == "rules[0].repos: must be a list of strings"
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["error"] for line in lines if line["level"] == "error"] == [watched.load_error]

    policy_volume.write(
        DOCUMENTED_POLICY + "    revisions: [main]\n  - subjects: [{namespace: x}]\n"
        "    repos: [a/b]\n    credential: nobody\n"
    )
    assert watched.check() is False
    assert "no credential named 'nobody'" in (watched.load_error or "")
    assert watched.current is good

    policy_volume.write(DOCUMENTED_POLICY)  # fixed: back to the first version
    assert watched.check() is True
    assert watched.load_error is None
    assert watched.current.version == first.version
    exposition = generate_latest(registry).decode()
    assert 'tokensidecar_gateway_policy_reloads_total{result="success"} 2.0' in exposition
    assert 'tokensidecar_gateway_policy_reloads_total{result="failure"} 2.0' in exposition
    assert "tokensidecar_gateway_policy_last_load_ok 1.0" in exposition


def test_a_deleted_file_keeps_the_policy(policy_volume: KubeletVolume) -> None:
    policy_volume.write(DOCUMENTED_POLICY)
    watched = PolicyFile(policy_volume.path, registry=CollectorRegistry())
    version = watched.current.version
    (policy_volume.directory / "..data").unlink()
    assert watched.check() is False
    assert watched.current.version == version
    assert watched.load_error is not None and "cannot read" in watched.load_error


def test_invalid_file_at_start_is_an_error(policy_volume: KubeletVolume) -> None:
    policy_volume.write("rules: [{repos: [a/b]}]")
    with pytest.raises(PolicyError, match=r"rules\[0\].subjects: is required"):
        PolicyFile(policy_volume.path, registry=CollectorRegistry())
    with pytest.raises(PolicyError, match="cannot read"):
        PolicyFile(policy_volume.directory / "missing.yaml", registry=CollectorRegistry())


async def test_watch_picks_up_the_symlink_swap(policy_volume: KubeletVolume) -> None:
    policy_volume.write(DOCUMENTED_POLICY)
    watched = PolicyFile(policy_volume.path, registry=CollectorRegistry(), poll_seconds=0.02)
    task = asyncio.create_task(watched.watch())
    try:
        policy_volume.write("rules: []\n")
        deadline = time.monotonic() + 10
        while watched.current.rules and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert watched.current.rules == ()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# -- admission (issue 16) -----------------------------------------------------------------


def test_storage_uris_parse_as_kserve_parses_them() -> None:
    assert parse_storage_uri("hf://acme/llama-3") == ("acme/llama-3", "main")
    assert parse_storage_uri(f"hf://acme/llama-3:{COMMIT}") == ("acme/llama-3", COMMIT)
    assert parse_storage_uri("hf://acme/llama-3:v1.0") == ("acme/llama-3", "v1.0")
    assert parse_storage_uri("s3://bucket/model") is None
    for bad in ("hf://llama", "hf://acme/llama/extra", "hf:///llama", "hf://acme/", "hf://acme/:main"):
        with pytest.raises(ValueError, match="hf://"):
            parse_storage_uri(bad)


def test_admission_checks_the_pods_service_account_against_the_policy() -> None:
    rules = policy(
        DOCUMENTED_POLICY
        + "  - subjects: [{namespace: prod}]\n    repos: [acme/*]\n    revisions: [pinned]\n"
    )
    allowed = admission_decision(
        rules, namespace="team-a", service_account="llama-server", storage_uri="hf://acme/llama-3"
    )
    assert allowed is not None and allowed.allowed
    denied = admission_decision(
        rules, namespace="team-a", service_account=None, storage_uri="hf://acme/llama-3"
    )
    assert denied is not None and not denied.allowed  # runs as "default", outside llama-*
    assert admission_decision(rules, namespace="team-a", service_account="x", storage_uri="gs://b/m") is None
    # A pinned URI is a commit: a branch-only rule cannot vouch for it at admission.
    pinned = admission_decision(
        rules, namespace="team-a", service_account="llama-server", storage_uri=f"hf://acme/llama-3:{COMMIT}"
    )
    assert pinned is not None and pinned.reason == "revision not allowed"
    prod = admission_decision(
        rules, namespace="prod", service_account=None, storage_uri=f"hf://acme/llama-3:{COMMIT.upper()}"
    )
    assert prod is not None and prod.allowed
    unpinned = admission_decision(
        rules, namespace="prod", service_account=None, storage_uri="hf://acme/llama-3"
    )
    assert unpinned is not None and not unpinned.allowed


_NAMES = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)


@given(org=_NAMES, other=_NAMES, name=_NAMES, deeper=_NAMES)
def test_a_star_never_crosses_a_slash(org: str, other: str, name: str, deeper: str) -> None:
    rules = Policy.from_yaml(f"rules: [{{subjects: [{{namespace: a}}], repos: ['{org}/*']}}]")
    caller = who("a")
    assert rules.decide(caller, repo=f"{org}/{name}", revision="main").allowed
    assert not rules.decide(caller, repo=f"{org}/{name}/{deeper}", revision="main").allowed
    assert rules.decide(caller, repo=f"{other}/{name}", revision="main").allowed == (other == org)

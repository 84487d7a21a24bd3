"""Who may read which model: the gateway's policy file (``TOKENSIDECAR_GATEWAY_POLICY``).

A policy is a list of rules; each grants some subjects (namespace, service account) read
access to some repos, optionally only at some revisions, through a named upstream
credential. Nothing is allowed unless a rule allows it (default deny), and the first rule
that allows a request names its credential::

    rules:
      - subjects:                   # who: globs; serviceAccount defaults to "*"
          - {namespace: team-a, serviceAccount: llama-*}
        repos: [acme/llama-*]       # globs over repo ids
        revisions: [main]           # optional: names or commit ids; "pinned" = commit ids only
      - subjects: [{namespace: team-b}]
        repos: [partner/*]
        credential: partner

Glob rules: ``*`` is any run of characters except ``/`` and ``?`` one such character, so
``acme/*`` never reaches into another organisation and ``*/*`` is every repo. Repo ids
match case-insensitively (the Hub treats ``Acme/Model`` and ``acme/model`` as one repo);
namespaces and service accounts are Kubernetes names and match exactly. Revisions are
compared exactly (commit ids in lower case).

Parse, validate and decide are separate steps: :meth:`Policy.from_yaml` turns the text
into typed rules or raises :class:`PolicyError` naming the key (``rules[1].repos: must be
a list of strings``); :meth:`Policy.decide` is a pure function of the rules. Unknown keys
are errors too: a misspelt ``serviceaccount`` would otherwise silently widen a rule to
every service account.

:class:`PolicyFile` keeps the current policy of a file that a ConfigMap volume updates.
kubelet swaps the ``..data`` symlink rather than writing the file, so the file is watched
by what its path *resolves to* (device, inode, size, mtime of the target), polled: an
inotify watch on the path would go stale at the first swap (DESIGN.md). A new version that
does not parse, or that names a credential the gateway does not have, is refused: the
old policy stays in force, and the refusal is reported in :attr:`PolicyFile.load_error`
(``/readyz``'s reason), one log line and ``tokensidecar_gateway_policy_reloads_total``.

:func:`admission_decision` answers the webhook's question (issue 16, ``--gateway-policy``):
may this pod's service account read the model of its KServe ``hf://`` storage URI?

Interface shared with the data plane (tokensidecar/gateway/server.py): :class:`Decision`,
:class:`PolicyError`, :class:`Policy` (``from_yaml``, ``decide``, ``credentials``),
:class:`PolicyFile` (``current``, ``load_error``, ``watch``). Extend, don't change.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge

from tokensidecar.gateway.identity import SERVICE_ACCOUNT_PREFIX, Identity

__all__ = [
    "DEFAULT_CREDENTIAL",
    "PINNED",
    "Decision",
    "Policy",
    "PolicyError",
    "PolicyFile",
    "PolicyMetrics",
    "Rule",
    "Subject",
    "admission_decision",
    "is_commit",
    "parse_storage_uri",
]

log = logging.getLogger(__name__)

DEFAULT_CREDENTIAL = "default"
PINNED = "pinned"
HF_URI_PREFIX = "hf://"
# A ConfigMap update reaches the volume in 60-90 s; a one-second stat poll adds nothing
# anyone can notice and costs a few microseconds.
POLL_SECONDS = 1.0
# Decisions remembered per policy version: a download asks the same question (subject,
# repo, revision) hundreds of times, and a rule scan costs ~2 µs per rule.
DECISION_MEMO_SIZE = 4096

_COMMIT = re.compile(r"[0-9a-f]{40}")
_RULE_KEYS = frozenset({"subjects", "repos", "revisions", "credential"})
_SUBJECT_KEYS = frozenset({"namespace", "serviceAccount"})


def is_commit(revision: str) -> bool:
    """A full git commit id (40 lower-case hex digits), as the Hub names commits."""
    return _COMMIT.fullmatch(revision) is not None


class PolicyError(Exception):
    """The policy text is not valid; the message names the key (``rules[1].repos: ...``)."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: int | None  # index of the matching rule
    credential: str | None  # credential name when allowed ("default" when the rule names none)
    reason: str  # "no rule matches", "revision not allowed", ...


@dataclass(frozen=True)
class _Glob:
    text: str
    pattern: re.Pattern[str]

    @classmethod
    def compile(cls, text: str, *, ignore_case: bool = False) -> _Glob:
        parts = []
        for char in text:
            if char == "*":
                parts.append("[^/]*")
            elif char == "?":
                parts.append("[^/]")
            else:
                parts.append(re.escape(char))
        flags = re.IGNORECASE if ignore_case else 0
        return cls(text=text, pattern=re.compile("".join(parts), flags))

    def matches(self, value: str) -> bool:
        return self.pattern.fullmatch(value) is not None


@dataclass(frozen=True)
class Subject:
    namespace: _Glob
    service_account: _Glob

    def matches(self, identity: Identity) -> bool:
        return self.namespace.matches(identity.namespace) and self.service_account.matches(
            identity.service_account
        )


@dataclass(frozen=True)
class Rule:
    subjects: tuple[Subject, ...]
    repos: tuple[_Glob, ...]
    revisions: frozenset[str] | None  # None: any revision
    credential: str

    def covers(self, identity: Identity, repo: str) -> bool:
        return any(s.matches(identity) for s in self.subjects) and any(g.matches(repo) for g in self.repos)

    def allows_revision(self, revision: str, known_as: frozenset[str]) -> bool:
        if self.revisions is None:
            return True
        if revision in self.revisions:
            return True
        if not is_commit(revision):
            return False
        # A commit is allowed when "pinned" is listed, or when a listed branch or tag was
        # seen resolving to it (clients resolve main to a commit, then fetch at the commit).
        return PINNED in self.revisions or not self.revisions.isdisjoint(known_as)


# -- parsing and validation -----------------------------------------------------------------


def _string(value: Any, *, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(f"{where}: must be a non-empty string")
    return value.strip()


def _strings(value: Any, *, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PolicyError(f"{where}: must be a list of strings")
    if not value:
        raise PolicyError(f"{where}: must not be empty")
    for index, item in enumerate(value):
        _string(item, where=f"{where}[{index}]")
    return [item.strip() for item in value]


def _unknown_keys(mapping: Mapping[Any, Any], known: frozenset[str], *, where: str) -> None:
    for key in mapping:
        if key not in known:
            expected = ", ".join(sorted(known))
            prefix = f"{where}." if where else ""
            raise PolicyError(f"{prefix}{key}: unknown key (expected one of: {expected})")


def _subject(value: Any, *, where: str) -> Subject:
    if not isinstance(value, dict):
        raise PolicyError(f"{where}: must be a mapping with namespace and optionally serviceAccount")
    _unknown_keys(value, _SUBJECT_KEYS, where=where)
    if "namespace" not in value:
        # No implicit "every namespace": a rule for the whole cluster says namespace: "*".
        raise PolicyError(f'{where}.namespace: is required (use "*" for every namespace)')
    namespace = _string(value["namespace"], where=f"{where}.namespace")
    service_account = _string(value.get("serviceAccount", "*"), where=f"{where}.serviceAccount")
    return Subject(namespace=_Glob.compile(namespace), service_account=_Glob.compile(service_account))


def _rule(value: Any, *, where: str) -> Rule:
    if not isinstance(value, dict):
        raise PolicyError(f"{where}: must be a mapping with subjects and repos")
    _unknown_keys(value, _RULE_KEYS, where=where)
    for required in ("subjects", "repos"):
        if required not in value:
            raise PolicyError(f"{where}.{required}: is required")
    subjects_value = value["subjects"]
    if not isinstance(subjects_value, list) or not subjects_value:
        raise PolicyError(f"{where}.subjects: must be a non-empty list of subjects")
    subjects = tuple(
        _subject(item, where=f"{where}.subjects[{index}]") for index, item in enumerate(subjects_value)
    )
    repos = tuple(
        _Glob.compile(text, ignore_case=True) for text in _strings(value["repos"], where=f"{where}.repos")
    )
    revisions: frozenset[str] | None = None
    if "revisions" in value:
        listed = _strings(value["revisions"], where=f"{where}.revisions")
        # Commit ids are hex; the Hub prints them in lower case.
        revisions = frozenset(item.lower() if is_commit(item.lower()) else item for item in listed)
    credential = DEFAULT_CREDENTIAL
    if "credential" in value:
        credential = _string(value["credential"], where=f"{where}.credential")
    return Rule(subjects=subjects, repos=repos, revisions=revisions, credential=credential)


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    #: First 12 hex of the text's sha256: which version is in force (logs, metrics).
    version: str = ""
    _memo: dict[tuple[str, str, str, str, frozenset[str]], Decision] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def from_yaml(cls, text: str, *, credentials: Iterable[str] | None = None) -> Policy:
        """Parse and validate; raise :class:`PolicyError` naming the key.

        With ``credentials`` (the names the gateway holds), a rule naming another one is an
        error too, so a typo cannot make a rule's repos unreachable at download time.
        """
        try:
            document: Any = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or "not valid YAML"
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            raise PolicyError(f"{where}{problem}") from None
        if document is None:
            document = {"rules": []}
        if not isinstance(document, dict):
            raise PolicyError("the policy must be a mapping with a rules list")
        _unknown_keys(document, frozenset({"rules"}), where="")
        rules_value = document.get("rules")
        if rules_value is None:
            rules_value = []
        if not isinstance(rules_value, list):
            raise PolicyError("rules: must be a list of rules")
        rules = tuple(_rule(item, where=f"rules[{index}]") for index, item in enumerate(rules_value))
        if credentials is not None:
            known = frozenset(credentials)
            for index, rule in enumerate(rules):
                if rule.credential not in known:
                    names = ", ".join(sorted(known)) or "none"
                    raise PolicyError(
                        f"rules[{index}].credential: no credential named {rule.credential!r} "
                        f"(the gateway has: {names})"
                    )
        version = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        return cls(rules=rules, version=version)

    def decide(
        self, identity: Identity, *, repo: str, revision: str, known_as: frozenset[str] = frozenset()
    ) -> Decision:
        """May ``identity`` read ``repo`` at ``revision``? The first rule that allows wins.

        ``revision`` is as requested (branch, tag or 40-hex commit); ``known_as`` are the
        branch and tag names the gateway has seen resolve to it when it is a commit.
        """
        key = (identity.namespace, identity.service_account, repo, revision, known_as)
        remembered = self._memo.get(key)
        if remembered is not None:
            return remembered
        decision = self._decide(identity, repo=repo, revision=revision, known_as=known_as)
        if len(self._memo) >= DECISION_MEMO_SIZE:
            self._memo.clear()  # cheaper than LRU bookkeeping on every hit; refills in one scan each
        self._memo[key] = decision
        return decision

    def _decide(self, identity: Identity, *, repo: str, revision: str, known_as: frozenset[str]) -> Decision:
        covered_at_other_revisions = False
        for index, rule in enumerate(self.rules):
            if not rule.covers(identity, repo):
                continue
            if rule.allows_revision(revision, known_as):
                return Decision(allowed=True, rule=index, credential=rule.credential, reason="allowed")
            covered_at_other_revisions = True
        reason = "revision not allowed" if covered_at_other_revisions else "no rule matches"
        return Decision(allowed=False, rule=None, credential=None, reason=reason)

    def credentials(self) -> frozenset[str]:
        """The credential names the rules use."""
        return frozenset(rule.credential for rule in self.rules)


# -- admission (issue 16: the webhook's --gateway-policy) -----------------------------------


def parse_storage_uri(uri: str) -> tuple[str, str] | None:
    """``hf://org/model[:rev]`` → ``(repo, revision)``; None for any other scheme.

    Parsed as KServe's storage initializer parses it (kserve_storage ``_download_hf``:
    exactly ``owner/model``, an optional ``:revision``, ``main`` when absent — that is what
    ``snapshot_download`` uses for ``revision=None``). Raises ValueError for an ``hf://``
    URI the initializer itself would refuse.
    """
    if not uri.startswith(HF_URI_PREFIX):
        return None
    components = uri[len(HF_URI_PREFIX) :].split("/")
    if len(components) != 2 or not components[0] or not components[1]:
        raise ValueError(f"{uri!r} is not hf://owner/model[:revision]")
    model, _, revision = components[1].partition(":")
    if not model:
        raise ValueError(f"{uri!r} has an empty model name")
    return f"{components[0]}/{model}", revision or "main"


def admission_decision(
    policy: Policy, *, namespace: str, service_account: str | None, storage_uri: str
) -> Decision | None:
    """May a pod of ``namespace`` running as ``service_account`` read its ``hf://`` model?

    A pure function for the webhook. None when the URI is not ``hf://`` (the gateway does
    not serve it, so its policy has nothing to say); ``service_account`` None or empty is
    ``default``, as the API server fills it in. A URI pinned to a commit is judged as a
    commit: allowed by a rule without ``revisions``, one listing ``pinned`` or the commit
    itself — never by a branch name, since which commits a branch has pointed to is only
    known at download time. Raises ValueError for a malformed ``hf://`` URI.
    """
    parsed = parse_storage_uri(storage_uri)
    if parsed is None:
        return None
    repo, revision = parsed
    account = service_account or "default"
    identity = Identity(
        namespace=namespace,
        service_account=account,
        username=f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{account}",
        expires_at=None,
    )
    return policy.decide(
        identity, repo=repo, revision=revision.lower() if is_commit(revision.lower()) else revision
    )


# -- the file, reloaded ---------------------------------------------------------------------

_Signature = tuple[str, int, int, int, int] | None


class PolicyMetrics:
    """Loads of the policy file and what is in force."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.reloads = Counter(
            "tokensidecar_gateway_policy_reloads",
            "Policy file loads after a change, by result (success, failure: the old policy stays).",
            ["result"],
            registry=registry,
        )
        for result in ("success", "failure"):
            self.reloads.labels(result=result)
        self.rules = Gauge(
            "tokensidecar_gateway_policy_rules", "Rules of the policy in force.", registry=registry
        )
        self.last_load_ok = Gauge(
            "tokensidecar_gateway_policy_last_load_ok",
            "1 when the policy file's current version is in force, 0 when it was refused.",
            registry=registry,
        )


class PolicyFile:
    """The policy of a file, kept current; an invalid new version keeps the old one."""

    def __init__(
        self,
        path: Path,
        *,
        credentials: Iterable[str] | None = None,
        registry: CollectorRegistry | None = None,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        """Load now; raise :class:`PolicyError` when the file cannot be read or is invalid."""
        self.path = Path(path)
        self.poll_seconds = poll_seconds
        self._credentials = frozenset(credentials) if credentials is not None else None
        self.metrics = PolicyMetrics(registry)
        #: The last refused version's problem, or None when the file's version is in force.
        self.load_error: str | None = None
        self._signature = self._stat()
        self._current = self._load()
        self.metrics.rules.set(len(self._current.rules))
        self.metrics.last_load_ok.set(1)

    @property
    def current(self) -> Policy:
        return self._current

    def _stat(self) -> _Signature:
        try:
            resolved = os.path.realpath(self.path)
            st = os.stat(resolved)
        except OSError:
            return None
        return (resolved, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> Policy:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise PolicyError(f"cannot read {self.path}: {reason}") from None
        return Policy.from_yaml(text, credentials=self._credentials)

    def reload(self) -> bool:
        """Load the file again now; True when a new policy is in force."""
        try:
            policy = self._load()
        except PolicyError as exc:
            self.load_error = str(exc)
            self.metrics.last_load_ok.set(0)
            self.metrics.reloads.labels(result="failure").inc()
            log.error(
                "policy file refused; the previous policy stays in force",
                extra={"path": str(self.path), "error": self.load_error, "version": self._current.version},
            )
            return False
        self.load_error = None
        self.metrics.last_load_ok.set(1)
        if policy.version == self._current.version:
            return False  # touched, or swapped for the same content: nothing changed
        self._current = policy
        self.metrics.rules.set(len(policy.rules))
        self.metrics.reloads.labels(result="success").inc()
        log.info(
            "policy reloaded",
            extra={"path": str(self.path), "version": policy.version, "rules": len(policy.rules)},
        )
        return True

    def check(self) -> bool:
        """Reload if the file (what its path resolves to) changed; True when a new policy is in force."""
        signature = self._stat()
        if signature == self._signature:
            return False
        self._signature = signature
        return self.reload()

    async def watch(self) -> None:
        """Reload on change until cancelled."""
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # a bug must not end the watch: the old policy stays
                log.exception("policy reload failed unexpectedly")

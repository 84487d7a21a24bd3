"""What a Hugging Face token may do, read from the Hub's own answers: ``--verify=scope``.

Least privilege (docs/kserve-huggingface.md, "Least privilege"): a token that can write to
any repository other than the model it serves is refused, and a fine-grained token must have
that model in its scope.
This module is the pure half of that check — a function from what the Hub said (the
``whoami-v2`` answer, the ``auth-check`` answers, what an exchange granted) and a model id
to a :class:`TokenScope` (a summary safe to show in ``/status``, ``token.json`` and the
rotation report) and a verdict. It makes no request; :class:`tokensidecar.backends.hub.HubVerifier`
asks the Hub and calls :func:`judge`, and the gateway's credentials can call it on answers
they already have.

The shapes it reads, and where they come from (the Hub documents the roles, not the JSON):

* classic tokens — ``auth: {type: "access_token", accessToken: {displayName, role,
  createdAt}}`` with ``role`` ``read`` or ``write`` (huggingface.js
  ``packages/hub/src/lib/who-am-i.ts`` ``AuthInfo``; huggingface_hub ``_login.py`` reads
  ``auth.accessToken.role``; hub-docs ``security-tokens.md`` defines the roles);
  huggingface.js also lists ``admin`` and ``contributor`` (``AccessTokenRole``) — both can
  write, so both are refused;
* fine-grained tokens — ``role: "fineGrained"`` and ``accessToken.fineGrained:
  {canReadGatedRepos, global: [perm…], scoped: [{entity: {_id, type, name}, permissions:
  [perm…]}]}``, where an entity is a ``user`` or ``org`` (every repository of that
  namespace) or one repository (``model``, ``dataset``, ``space``) and permissions are
  strings such as ``repo.content.read``, ``repo.access.read``, ``repo.write`` (the shape
  real answers have, as captured in public client code; hub-docs ``security-tokens.md``
  describes fine-grained tokens but not the JSON);
* OAuth tokens (``hf_oauth_…``: Sign in with HF, the Enterprise exchange, a Trusted
  Publisher *user* resource) — ``auth: {type: "oauth", expiresAt}`` with **no**
  ``accessToken`` (huggingface_hub PR #2631: ``get_token_permission`` raised ``KeyError:
  'accessToken'`` on OAuth tokens); whoami-v2 does not say what they may do, so the scopes
  the exchange granted (hub-docs ``oauth.md`` "Scope control": the ``scope`` of the
  exchange answer) are the only source, and without them the verdict is "cannot tell";
* Trusted Publisher repo tokens (``hf_jwt_…``) — documented (hub-docs
  ``trusted-publishers.md``) as "write access to that one repo"; what whoami-v2 answers for
  them is not documented, so they are judged by what is documented plus the Hub's own
  ``auth-check/write`` on the model: writing to the model means that one repository *is*
  the model.

Anything not recognised is "cannot tell", which ``--verify=scope`` refuses with the reason:
a least-privilege check that passes what it cannot read would promise what it cannot keep.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "OAUTH_WRITE_SCOPES",
    "REPO_READ_PERMISSIONS",
    "ScopeVerdict",
    "TokenScope",
    "judge",
    "scope_from_whoami",
    "verdict",
]

#: Fine-grained permissions that only read a repository. Any other ``repo.*`` permission
#: (``repo.write`` and whatever the Hub adds) counts as write: an unknown one errs on the safe side.
REPO_READ_PERMISSIONS = frozenset({"repo.content.read", "repo.access.read"})
#: OAuth scopes that write to repositories (hub-docs ``oauth.md`` "Currently supported scopes").
OAUTH_WRITE_SCOPES = frozenset({"write-repos", "manage-repos"})
_CLASSIC_WRITE_ROLES = frozenset({"write", "admin", "contributor"})
_REPO_ENTITY_TYPES = frozenset({"model", "dataset", "space"})


@dataclass(frozen=True)
class TokenScope:
    """What the Hub says a token may do. Names and counts only, never the token.

    ``kind``: ``classic``, ``fine-grained``, ``oauth``, ``trusted-publisher-repo`` or
    ``unknown``. ``can_write``: ``True``/``False``, or ``None`` when the Hub's answers do not
    tell. ``write_targets``: repositories or namespaces (``acme/*``) it can write to, as far
    as known; ``covers_model``: whether the model is inside its scope.
    """

    kind: str
    role: str | None = None
    fine_grained: bool = False
    scoped_entities: int = 0
    can_write: bool | None = None
    write_targets: tuple[str, ...] = ()
    covers_model: bool | None = None
    can_read_gated: bool | None = None
    oauth_scopes: tuple[str, ...] = field(default=())

    def summary(self) -> dict[str, Any]:
        """The scope as ``/status``, ``token.json`` and the rotation report show it."""
        summary: dict[str, Any] = {
            "kind": self.kind,
            "role": self.role,
            "fine_grained": self.fine_grained,
            "scoped_entities": self.scoped_entities,
            "can_write": self.can_write,
            "write_targets": list(self.write_targets),
        }
        if self.oauth_scopes:
            summary["oauth_scopes"] = list(self.oauth_scopes)
        return summary

    def describe(self) -> str:
        """One short line for logs and the rotation job's progress."""
        write = {True: "can write", False: "read-only", None: "write access unknown"}[self.can_write]
        parts = [self.kind]
        if self.role and self.role != self.kind:
            parts.append(f"role {self.role}")
        if self.fine_grained:
            parts.append(f"{self.scoped_entities} scoped entities")
        parts.append(write + (f" ({', '.join(self.write_targets)})" if self.write_targets else ""))
        return ", ".join(parts)


@dataclass(frozen=True)
class ScopeVerdict:
    """``ok`` or not, and why (names a repository or a role, never the token)."""

    ok: bool
    reason: str
    scope: TokenScope


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, Iterable):
        return tuple(str(item) for item in value if isinstance(item, str))
    return ()


def _writes(permissions: Iterable[str]) -> bool:
    return any(p.startswith("repo.") and p not in REPO_READ_PERMISSIONS for p in permissions)


def _reads(permissions: Iterable[str]) -> bool:
    return any(p.startswith("repo.") for p in permissions)


def _entity_target(entity: Mapping[str, Any]) -> str | None:
    """``org/name`` for a repository entity, ``ns/*`` for a user or org, None if unreadable."""
    name, kind = entity.get("name"), entity.get("type")
    if not isinstance(name, str) or not name:
        return None
    if kind in _REPO_ENTITY_TYPES:
        return name if kind == "model" else f"{kind}s/{name}"
    if kind in ("user", "org"):
        return f"{name}/*"
    return None


def _covers(target: str, model_id: str) -> bool:
    if target.endswith("/*"):
        return model_id.split("/", 1)[0] == target[:-2]
    return target == model_id


def _fine_grained(access_token: Mapping[str, Any], model_id: str | None) -> TokenScope:
    fine = _dict(access_token.get("fineGrained"))
    raw_scoped = fine.get("scoped")
    scoped: list[Any] = raw_scoped if isinstance(raw_scoped, list) else []
    global_permissions = _strings(fine.get("global"))
    write_targets: list[str] = []
    covers_model = _reads(global_permissions)
    readable = True
    if _writes(global_permissions):
        write_targets.append("*")
    for raw_entry in scoped:
        entry = _dict(raw_entry)
        target = _entity_target(_dict(entry.get("entity")))
        permissions = _strings(entry.get("permissions"))
        if target is None:
            readable = readable and not _reads(permissions)
            continue
        if _writes(permissions):
            write_targets.append(target)
        if model_id and _reads(permissions) and _covers(target, model_id):
            covers_model = True
    gated = fine.get("canReadGatedRepos")
    return TokenScope(
        kind="fine-grained",
        role="fineGrained",
        fine_grained=True,
        scoped_entities=len(scoped),
        # An entity we cannot read that carries repo permissions: we cannot say what it covers.
        can_write=bool(write_targets) if readable else None,
        write_targets=tuple(write_targets),
        covers_model=covers_model if model_id else None,
        can_read_gated=gated if isinstance(gated, bool) else None,
    )


def scope_from_whoami(
    whoami: Any,
    *,
    model_id: str | None = None,
    token_prefix: str = "",
    oauth_scopes: Iterable[str] | None = None,
    writes_model: bool | None = None,
) -> TokenScope:
    """Read a ``whoami-v2`` answer (``None`` when the Hub gave none) into a :class:`TokenScope`.

    ``token_prefix`` is ``hf_jwt_`` / ``hf_oauth_`` / ``hf_`` (never the token): it names the
    kind only when the answer itself does not. ``oauth_scopes`` is what an exchange granted;
    ``writes_model`` what ``GET /api/models/{id}/auth-check/write`` said, if asked.
    """
    auth = _dict(_dict(whoami).get("auth"))
    access_token = auth.get("accessToken")
    if isinstance(access_token, Mapping):
        return _access_token_scope(access_token, whoami=whoami, model_id=model_id)
    if auth.get("type") == "oauth" or (token_prefix == "hf_oauth_" and not auth):
        return _oauth_scope(oauth_scopes)
    if token_prefix == "hf_jwt_":
        return _trusted_publisher_scope(model_id=model_id, writes_model=writes_model)
    return TokenScope(kind="unknown")


def _access_token_scope(access_token: Mapping[str, Any], *, whoami: Any, model_id: str | None) -> TokenScope:
    """A token whoami-v2 describes itself (``auth.accessToken``): fine-grained, or a
    classic role. A classic write token can write to everything its owner can."""
    role = access_token.get("role")
    if role == "fineGrained":
        return _fine_grained(access_token, model_id)
    if role == "read":
        return TokenScope(kind="classic", role="read", can_write=False, covers_model=None)
    if role in _CLASSIC_WRITE_ROLES:
        owner = str(_dict(whoami).get("name") or "its owner")
        return TokenScope(
            kind="classic",
            role=str(role),
            can_write=True,
            write_targets=(f"{owner}/*", "its orgs' repos"),
        )
    return TokenScope(kind="unknown", role=str(role) if role is not None else None)


def _oauth_scope(oauth_scopes: Iterable[str] | None) -> TokenScope:
    """An OAuth token: whoami-v2 does not say what it may do, so only the scopes an
    exchange granted can tell, and without them whether it writes is unknown."""
    if oauth_scopes is None:
        return TokenScope(kind="oauth", role="oauth", can_write=None)
    granted = tuple(sorted(set(_strings(oauth_scopes))))
    writes = bool(OAUTH_WRITE_SCOPES & set(granted))
    return TokenScope(
        kind="oauth",
        role="oauth",
        can_write=writes,
        write_targets=("its namespaces (OAuth scope)",) if writes else (),
        oauth_scopes=granted,
    )


def _trusted_publisher_scope(*, model_id: str | None, writes_model: bool | None) -> TokenScope:
    """A Trusted Publisher repo token: documented as write access to exactly one repository
    (hub-docs trusted-publishers.md); the Hub's ``auth-check/write`` on the model, when
    asked, says whether that repository is the model or another one."""
    if writes_model is None:
        return TokenScope(kind="trusted-publisher-repo", role="repo", scoped_entities=1, can_write=True)
    if writes_model:
        write_targets: tuple[str, ...] = (model_id,) if model_id else ()
    else:
        write_targets = ("another repository",)
    return TokenScope(
        kind="trusted-publisher-repo",
        role="repo",
        scoped_entities=1,
        can_write=True,
        write_targets=write_targets,
        covers_model=writes_model,
    )


def judge(scope: TokenScope, *, model_id: str) -> ScopeVerdict:
    """The ``--verify=scope`` rule (docs/kserve-huggingface.md) for a token that already passed ``repo``."""
    others = [t for t in scope.write_targets if t != model_id]
    if scope.kind == "unknown":
        return ScopeVerdict(False, "the Hub's whoami-v2 answer does not say what this token may do", scope)
    if scope.can_write is None:
        if scope.kind == "oauth":
            reason = (
                "whoami-v2 does not list an OAuth token's scopes and none were granted by an exchange "
                "here, so whether it can write elsewhere cannot be told"
            )
        else:
            reason = (
                "whether this token can write to other repositories cannot be told from the Hub's answers"
            )
        return ScopeVerdict(False, reason, scope)
    if scope.fine_grained and not scope.covers_model:
        return ScopeVerdict(False, f"this fine-grained token does not have {model_id} in its scope", scope)
    if scope.can_write and others:
        return ScopeVerdict(
            False, f"this {scope.kind} token can write to {', '.join(others)}, not only {model_id}", scope
        )
    if scope.can_write:
        return ScopeVerdict(True, f"can write to {model_id} only", scope)
    return ScopeVerdict(True, "read-only", scope)


def verdict(
    whoami: Any,
    *,
    model_id: str,
    token_prefix: str = "",
    oauth_scopes: Iterable[str] | None = None,
    writes_model: bool | None = None,
) -> ScopeVerdict:
    """:func:`scope_from_whoami` then :func:`judge`: the whole ``--verify=scope`` rule on
    answers a caller already has (the gateway's credentials reuse it this way)."""
    scope = scope_from_whoami(
        whoami,
        model_id=model_id,
        token_prefix=token_prefix,
        oauth_scopes=oauth_scopes,
        writes_model=writes_model,
    )
    return judge(scope, model_id=model_id)

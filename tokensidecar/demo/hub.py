"""A local Hugging Face Hub stand-in: just enough of the Hub for real clients to talk to.

The test suite and ``tokensidecar demo`` need a Hub that *enforces* tokens: a token that
was revoked or has expired must stop working the moment it does, so that a rotation is
proven by a download that succeeds with the new token and fails with the old one. The real
Hub cannot be used here (no internet, no way to mint or revoke tokens on demand), so this
serves the handful of routes that ``huggingface_hub`` (and through it KServe's storage
initializer) actually calls, with the headers they read. It answers the way the Hub
documents, not the way tokensidecar happens to call it; each auth route names its source:

* ``GET /api/whoami-v2`` — 401 unless the bearer token is currently valid. The answer has
  the shape real answers have for each token kind: classic ``auth: {type: "access_token",
  accessToken: {displayName, role: "read"|"write", createdAt}}`` and fine-grained
  ``role: "fineGrained"`` with ``accessToken.fineGrained: {canReadGatedRepos, global,
  scoped: [{entity: {_id, type, name}, permissions}]}`` (huggingface.js
  ``packages/hub/src/lib/who-am-i.ts``; huggingface_hub ``_login.py``; hub-docs
  ``security-tokens.md`` for the roles); ``accessToken.expiresAt`` only for a token that
  expires (the Hub's OpenAPI page documents it; hub-docs issue #2114 reports real answers
  without it, so clients must not rely on it — tokensidecar does not); OAuth tokens
  (``hf_oauth_…``) answer ``auth: {type: "oauth", expiresAt}`` with no ``accessToken``
  (huggingface_hub PR #2631; huggingface.js ``AuthInfo.expiresAt``).
  *Undocumented*: whether whoami-v2 accepts Trusted Publisher ``hf_jwt_…`` tokens at all.
  ``jwt_whoami`` chooses: ``"accept"`` (default) answers the user shape with an ``auth``
  block that has no ``accessToken``; ``"refuse"`` answers 401, so tests prove the client
  degrades safely either way.
* ``GET /api/models/{org}/{name}/auth-check[/write]`` — the Hub's own access check, what
  ``HfApi.auth_check`` calls (huggingface_hub ``hf_api.py``): 200, 401/404
  ``RepoNotFound`` for a repository the token cannot see, 403 ``GatedRepo`` for a gated
  repository whose access was not granted (hub-docs ``models-gated.md``); ``/write`` answers
  200 only to a token that can write to the repository (403 otherwise).
* Gated repositories (``gated=True``): the repository is public and its metadata answers 200
  to anyone; files and ``auth-check`` answer 403 ``GatedRepo`` to a token without access.
* ``POST /oauth/token`` — RFC 8693. Trusted Publishers (hub-docs ``trusted-publishers.md``):
  JSON body, no client authentication, ``subject_token`` an OIDC id_token whose ``aud`` must
  be ``https://huggingface.co`` (a string or, as kubelet-projected tokens carry it, an array
  containing it — *undocumented* whether the Hub accepts the array form), signature checked
  against the issuer's keys — found by OIDC discovery (``{iss}/.well-known/openid-configuration``
  → ``jwks_uri``) for an issuer trusted by URL (``trust_issuer_url``), so an issuer the Hub
  cannot reach fails with ``invalid_grant``; or a key handed over directly (``trust_issuer``)
  —, ``exp`` checked; ``resource`` ``namespace/name`` (or
  ``datasets/…``, ``spaces/…``) gives an ``hf_jwt_…`` token with write access to that one
  repository, a username gives an ``hf_oauth_…`` read-only token with only the
  ``gated-repos`` scope that cannot read private repositories; both expire in 60 minutes;
  errors are 400 ``invalid_request`` / ``invalid_grant``. Enterprise exchange (hub-docs
  ``oauth.md`` "Token Exchange for Organizations"): form body, the org OAuth app's client
  credentials as HTTP Basic, ``subject_token`` a member's e-mail with ``subject_token_type``
  ``urn:huggingface:token-type:user-email``, optional ``scope`` (default: the app's scopes;
  ``invalid_scope`` for an unknown one); the lifetime is the app's (8 h by default) and a
  requested ``expires_in`` is ignored, as the Hub documents no such parameter.
* ``POST /api/credentials/revoke`` — hub-docs ``security-tokens.md`` "Revoking a leaked
  token": JSON ``{"credentials": [<token>, …]}``, no authentication, always ``202
  Accepted`` whether or not a token existed, idempotent; the owner is notified once
  (counted in ``revocation_notices``). *Undocumented*: whether it revokes ``hf_jwt_`` /
  ``hf_oauth_`` tokens before they expire; ``revocable_kinds`` chooses (all, by default).

The repository and file routes follow what huggingface_hub's ``snapshot_download``,
``hf_hub_download`` and ``HfApi`` read:

* ``GET /api/models/{org}/{name}[/revision/{rev}]`` and ``/tree/{rev}`` — model info and
  the file listing ``snapshot_download`` asks for;
* ``HEAD``/``GET /{org}/{name}/resolve/{rev}/{file}`` with ``X-Repo-Commit``, ``ETag`` and
  ``Content-Length`` (and no ``X-Xet-*`` headers, so clients take the plain HTTP path);
  files named in ``lfs_files`` answer as the real Hub answers LFS/Xet files: ``302`` to a
  CDN on another origin with a signed URL, the metadata (``X-Repo-Commit``,
  ``X-Linked-Etag`` = sha256, ``X-Linked-Size``) on the redirect itself — huggingface_hub
  2.x reads it there and follows without ``Authorization`` (``utils/_http.py``,
  ``_httpx2_follow_hub_redirects_with_backoff``); the CDN, like an S3 signed URL, refuses a
  request that also carries ``Authorization`` (S3: "Only one auth mechanism allowed");
  with ``xet=True`` the redirect and the trees also carry the Xet hints (``X-Xet-Hash``,
  ``X-Xet-Cas-Url``…, ``Link: rel="xet-auth"``, ``xetHash``), for the gateway to strip;
* ``GET …/tree/{rev}[/{path}]`` with ``recursive``, ``expand`` and ``Link`` pagination
  (``cursor``), and ``POST …/paths-info/{rev}`` (form ``paths``, ``expand``), as hf_api.py
  sends them; commits and branches (:meth:`HubStandIn.push` moves a branch);
  a ``gated`` repository answers ``403 GatedRepo`` to a token without access;

It is deliberately small and in-memory. Tests steer it directly (issue and revoke tokens,
make the next requests fail or stall, cut or corrupt the next file bodies) and read its
counters (how many whoami calls each token caused) and its request log (``requests``,
``cdn_requests``: every request, in order, as the upstream saw it).
It is test and demo code, not a product feature.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import functools
import hashlib
import hmac
import json
import re
import secrets
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = [
    "DEFAULT_FILES",
    "DEFAULT_REPO",
    "HubStandIn",
    "IssuedToken",
    "mint_subject_jwt",
    "serve_in_thread",
]

DEFAULT_REPO = "acme/private-model"
# A few small files, shaped like a real model repository.
DEFAULT_FILES: Mapping[str, bytes] = {
    "config.json": b'{"architectures": ["TinyModel"], "hidden_size": 8}\n',
    "README.md": b"# acme/private-model\n\nA private model served only to valid tokens.\n",
    "weights/model.bin": bytes(range(256)) * 16,
}

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
USER_EMAIL_TYPE = "urn:huggingface:token-type:user-email"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
#: The audience the Hub requires of a Trusted Publisher subject token (hub-docs trusted-publishers.md).
HUB_AUDIENCE = "https://huggingface.co"
#: OAuth scopes the Hub supports (hub-docs oauth.md "Currently supported scopes"), for ``invalid_scope``.
OAUTH_SCOPES = frozenset(
    {
        "openid", "profile", "email", "read-billing", "read-repos", "write-repos", "manage-repos",
        "gated-repos", "inference-api", "write-discussions", "read-collections", "write-collections",
    }
)  # fmt: skip


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _git_blob_sha(content: bytes) -> str:
    # The Hub's ETag for a regular (non-LFS) file is its git blob id.
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


@functools.lru_cache(maxsize=256)
def _sha256(content: bytes) -> str:
    # Once per file: benchmarks serve GiB-sized files, and every HEAD, tree and CDN GET asks.
    # (bytes cache their own hash, so a repeated lookup of the same object is cheap.)
    return hashlib.sha256(content).hexdigest()


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def mint_subject_jwt(
    *,
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    audience: str | list[str],
    subject: str = "system:serviceaccount:models:predictor",
    issuer: str = "https://kubernetes.default.svc.cluster.local",
    expires_in: float = 3600,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """Sign a JWT the way kubelet signs a projected service-account token (RS256 / ES256)."""
    now = int(time.time())
    is_rsa = isinstance(private_key, rsa.RSAPrivateKey)
    header = {"alg": "RS256" if is_rsa else "ES256", "typ": "JWT", "kid": "stand-in"}
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": int(now + expires_in),
        **(extra_claims or {}),
    }
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    if isinstance(private_key, rsa.RSAPrivateKey):
        signature = private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    else:
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        der = private_key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing_input}.{_b64url(signature)}"


@dataclass
class IssuedToken:
    """A token the stand-in accepts until it is revoked or ``expires_at`` (Unix time) passes."""

    value: str = field(repr=False)
    kind: str
    username: str
    can_read_repo: bool = True
    expires_at: float | None = None
    revoked: bool = False
    #: Classic ``read``/``write``, ``fineGrained``, or None for OAuth and Trusted Publisher tokens.
    role: str | None = "read"
    #: The ``accessToken.fineGrained`` block of a fine-grained token, as whoami-v2 answers it.
    fine_grained: dict[str, Any] | None = None
    #: Repositories the token can write to (a Trusted Publisher repo token: exactly one).
    writable_repos: frozenset[str] = frozenset()
    #: Whether the owner was granted access to the gated repository (``gated=True``).
    gated_access: bool = True
    #: OAuth scopes (``hf_oauth_`` tokens).
    scopes: tuple[str, ...] = ()

    def is_valid(self, now: float) -> bool:
        return not self.revoked and (self.expires_at is None or now < self.expires_at)


@dataclass
class _Fault:
    remaining: int
    status: int | None
    delay: float
    path_prefix: str


@dataclass
class _BodyFault:
    kind: str  # "cut", "corrupt" or "stall"
    after: int = 0
    delay: float = 0.0


def _under(path: str, prefix: str, *, recursive: bool) -> bool:
    """Whether a tree listing of ``prefix`` shows ``path`` (children only unless recursive)."""
    if prefix:
        if not path.startswith(prefix + "/"):
            return False
        path = path[len(prefix) + 1 :]
    return recursive or "/" not in path


class _ExchangeRefused(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


class HubStandIn:
    """An in-memory Hub with one private repository, served by aiohttp on a local port."""

    def __init__(
        self,
        *,
        repo_id: str = DEFAULT_REPO,
        files: Mapping[str, bytes] = DEFAULT_FILES,
        username: str = "acme-bot",
        exchange_lifetime: float = 3600,
        enterprise_lifetime: float = 8 * 3600,
        lfs_files: Iterable[str] = (),
        xet: bool = False,
        gated: bool = False,
        tree_page_size: int = 1000,
        jwt_whoami: str = "accept",
        revocable_kinds: tuple[str, ...] = ("hf_", "hf_jwt_", "hf_oauth_"),
    ) -> None:
        self.repo_id = repo_id
        self.files = dict(files)
        self.username = username
        self.exchange_lifetime = exchange_lifetime
        self.enterprise_lifetime = enterprise_lifetime
        #: A gated repository is public: metadata for anyone, files only to granted tokens.
        self.gated = gated
        #: Undocumented Hub behaviour, chosen per test: "accept" or "refuse" hf_jwt_ at whoami-v2.
        self.jwt_whoami = jwt_whoami
        #: Undocumented Hub behaviour: which token kinds /api/credentials/revoke invalidates.
        self.revocable_kinds = revocable_kinds
        #: Owners notified of a revocation, by token fingerprint (the Hub e-mails them once).
        self.revocation_notices: collections.Counter[str] = collections.Counter()
        self.last_exchange: dict[str, str] = {}
        self.commit_sha = hashlib.sha1(
            b"".join(name.encode() + content for name, content in sorted(self.files.items())),
            usedforsecurity=False,
        ).hexdigest()
        self.lfs_files = frozenset(lfs_files)
        self.xet = xet
        self.gated = gated
        self.tree_page_size = tree_page_size
        self.refs: dict[str, str] = {"main": self.commit_sha}
        self.commits: dict[str, dict[str, bytes]] = {self.commit_sha: dict(self.files)}
        self.requests: list[tuple[str, str]] = []
        self.cdn_requests: list[tuple[str, str, bool]] = []
        self._body_faults: list[_BodyFault] = []
        self._cdn_runner: web.AppRunner | None = None
        self.cdn_url = ""
        self._cdn_key = secrets.token_bytes(16)
        self.calls: collections.Counter[str] = collections.Counter()
        self.whoami_by_token: collections.Counter[str] = collections.Counter()
        self.downloads_by_token: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._tokens: dict[str, IssuedToken] = {}
        self._faults: list[_Fault] = []
        self._trusted_keys: list[tuple[Any, str]] = []
        self._trusted_issuers: dict[str, tuple[str, ssl.SSLContext | None]] = {}
        self._clients: dict[str, str] = {}
        self._client_scopes: dict[str, tuple[str, ...]] = {}
        self._members: set[str] = set()
        self._jwt_secret = secrets.token_bytes(32)
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, *, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(middlewares=[self._fault_middleware])
        app.add_routes(
            [
                web.get("/api/whoami-v2", self._whoami),
                web.get("/api/models/{org}/{name}", self._model_info),
                web.get("/api/models/{org}/{name}/revision/{rev}", self._model_info),
                web.get("/api/models/{org}/{name}/tree/{rev}", self._tree),
                web.get("/api/models/{org}/{name}/tree/{rev}/{path:.*}", self._tree),
                web.get("/api/models/{org}/{name}/auth-check", self._auth_check),
                web.get("/api/models/{org}/{name}/auth-check/write", self._auth_check),
                web.post("/api/models/{org}/{name}/paths-info/{rev}", self._paths_info),
                web.head("/{org}/{name}/resolve/{rev}/{file:.+}", self._resolve),
                web.get("/{org}/{name}/resolve/{rev}/{file:.+}", self._resolve, allow_head=False),
                web.post("/oauth/token", self._oauth_token),
                web.post("/api/credentials/revoke", self._revoke),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
        self.url = f"http://{host}:{bound[1]}"
        await self._start_cdn(host)
        return self.url

    async def _start_cdn(self, host: str) -> None:
        # Another port is another origin: huggingface_hub and the gateway treat it as a CDN.
        cdn = web.Application()
        cdn.add_routes([web.get("/blobs/{sha256}", self._cdn_blob)])
        self._cdn_runner = web.AppRunner(cdn, access_log=None)
        await self._cdn_runner.setup()
        site = web.TCPSite(self._cdn_runner, host, 0)
        await site.start()
        bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
        self.cdn_url = f"http://{host}:{bound[1]}"

    async def stop(self) -> None:
        if self._cdn_runner is not None:
            await self._cdn_runner.cleanup()
            self._cdn_runner = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- steering from tests and the demo ---------------------------------------------------

    def issue_token(
        self,
        *,
        expires_in: float | None = None,
        kind: str = "hf_",
        can_read_repo: bool = True,
        username: str | None = None,
        role: str | None = None,
        scoped: list[dict[str, Any]] | None = None,
        global_permissions: tuple[str, ...] = (),
        writable_repos: tuple[str, ...] | None = None,
        gated_access: bool = True,
        scopes: tuple[str, ...] = (),
    ) -> str:
        """Mint a token the Hub accepts.

        ``kind`` is the prefix: ``hf_`` (a user access token; ``role`` ``read`` — the default —,
        ``write`` or ``fineGrained`` with ``scoped`` entries as whoami-v2 shows them),
        ``hf_jwt_`` (Trusted Publisher repo token) or ``hf_oauth_`` (OAuth, with ``scopes``).
        """
        expires_at = None if expires_in is None else time.time() + expires_in
        if kind == "hf_jwt_":
            value = "hf_jwt_" + self._sign_hub_jwt(expires_at=expires_at or time.time() + 3600)
        else:
            value = kind + secrets.token_urlsafe(24).replace("-", "x").replace("_", "y")
        owner = username or self.username
        if kind == "hf_":
            role = role or "read"
        fine_grained: dict[str, Any] | None = None
        if role == "fineGrained":
            fine_grained = {
                "canReadGatedRepos": gated_access,
                "global": list(global_permissions),
                "scoped": [
                    {
                        "entity": {
                            "_id": hashlib.sha1(
                                str(entry["entity"]).encode(), usedforsecurity=False
                            ).hexdigest()[:24],
                            **entry["entity"],
                        },
                        "permissions": list(entry["permissions"]),
                    }
                    for entry in (scoped or [])
                ],
            }
        if writable_repos is None:
            writable_repos = _writable_repos(role=role, owner=owner, org=self.repo_id.split("/", 1)[0],
                                             fine_grained=fine_grained, repo_id=self.repo_id)  # fmt: skip
        with self._lock:
            self._tokens[value] = IssuedToken(
                value=value,
                kind=kind,
                username=owner,
                can_read_repo=can_read_repo,
                expires_at=expires_at,
                role=role if kind == "hf_" else None,
                fine_grained=fine_grained,
                writable_repos=frozenset(writable_repos),
                gated_access=gated_access,
                scopes=scopes,
            )
        return value

    def revoke(self, token: str) -> bool:
        with self._lock:
            issued = self._tokens.get(token)
            if issued is None:
                return False
            issued.revoked = True
            return True

    def is_valid(self, token: str) -> bool:
        with self._lock:
            issued = self._tokens.get(token)
            return issued is not None and issued.is_valid(time.time())

    def trust_issuer(self, *, public_key: Any, audience: str) -> None:
        """Accept id_token subjects signed by ``public_key`` (PEM bytes or a key) for ``audience``."""
        key = serialization.load_pem_public_key(public_key) if isinstance(public_key, bytes) else public_key
        with self._lock:
            self._trusted_keys.append((key, audience))

    def trust_issuer_url(
        self, issuer: str, *, audience: str = HUB_AUDIENCE, ca_pem: bytes | None = None
    ) -> None:
        """Trust id_tokens whose ``iss`` is ``issuer``, with keys found the way the Hub finds
        them: ``{issuer}/.well-known/openid-configuration`` → ``jwks_uri``, fetched at each
        exchange (``ca_pem``: the issuer's throwaway CA in tests). An issuer the stand-in
        cannot reach — a cluster's private one — makes the exchange fail with
        ``invalid_grant``, as the Hub must (trusted-publishers.md "How it works", step 3)."""
        context = ssl.create_default_context(cadata=ca_pem.decode()) if ca_pem else None
        with self._lock:
            self._trusted_issuers[issuer.rstrip("/")] = (audience, context)

    def register_client(
        self,
        *,
        client_id: str,
        client_secret: str,
        members: tuple[str, ...] = (),
        scopes: tuple[str, ...] = ("openid", "profile", "email", "read-repos"),
    ) -> None:
        """An Enterprise organisation's OAuth app (with its configured ``scopes``), and the
        member e-mails it may act for."""
        with self._lock:
            self._clients[client_id] = client_secret
            self._client_scopes[client_id] = scopes
            self._members.update(members)

    def fail_next(self, count: int, *, status: int = 503, path_prefix: str = "/") -> None:
        """Answer the next ``count`` requests under ``path_prefix`` with ``status`` (5xx, 429, …)."""
        with self._lock:
            self._faults.append(_Fault(remaining=count, status=status, delay=0.0, path_prefix=path_prefix))

    def stall_next(self, count: int, *, delay: float, path_prefix: str = "/") -> None:
        """Delay the next ``count`` requests under ``path_prefix`` by ``delay`` seconds."""
        with self._lock:
            self._faults.append(_Fault(remaining=count, status=None, delay=delay, path_prefix=path_prefix))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # -- helpers ----------------------------------------------------------------------------

    def _sign_hub_jwt(self, *, expires_at: float) -> str:
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {"sub": self.username, "iat": int(time.time()), "exp": int(expires_at)}
        claims["jti"] = secrets.token_hex(8)
        payload = _b64url(json.dumps(claims).encode())
        signature = hmac.new(self._jwt_secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64url(signature)}"

    def _bearer(self, request: web.Request) -> IssuedToken | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value:
            return None
        with self._lock:
            issued = self._tokens.get(value.strip())
            return issued if issued is not None and issued.is_valid(time.time()) else None

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if path.startswith(fault.path_prefix) and fault.remaining > 0:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    @web.middleware
    async def _fault_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        with self._lock:
            self.requests.append((request.method, request.path))
        fault = self._take_fault(request.path)
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status is not None:
                return web.json_response(
                    {"error": f"stand-in fault: HTTP {fault.status}"},
                    status=fault.status,
                    headers={"Retry-After": "1"} if fault.status == 429 else None,
                )
        response: web.StreamResponse = await handler(request)
        return response

    def _repo_access(
        self, request: web.Request, *, content: bool = True
    ) -> tuple[IssuedToken | None, web.Response | None]:
        """The Hub's repository rules. Private: anonymous or bad token → 401, no access → 404.
        Gated (public): metadata (``content=False``) for anyone; content → 401 without a token,
        403 ``GatedRepo`` without granted access (hub-docs models-gated.md)."""
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        issued = self._bearer(request)
        if self.gated and repo_id == self.repo_id:
            if content and issued is not None and not issued.gated_access:
                message = (
                    f"Access to model {repo_id} is restricted. You must have access to it "
                    "and be authenticated to access it. Please log in."
                )
                return issued, web.json_response(
                    {"error": message},
                    status=403,
                    headers={"X-Error-Code": "GatedRepo", "X-Error-Message": message},
                )
            if content and issued is None:
                return issued, web.json_response(
                    {"error": "Access restricted"}, status=401, headers={"X-Error-Code": "GatedRepo"}
                )
        elif repo_id != self.repo_id or issued is None or not issued.can_read_repo:
            status = 401 if issued is None else 404
            return issued, web.json_response(
                {"error": "Repository Not Found"},
                status=status,
                headers={"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository Not Found"},
            )
        rev = request.match_info.get("rev", "main")
        if self._commit_of(rev) is None:
            return issued, web.json_response(
                {"error": f"Invalid rev id: {rev}"},
                status=404,
                headers={"X-Error-Code": "RevisionNotFound"},
            )
        return issued, None

    # -- routes -----------------------------------------------------------------------------

    async def _whoami(self, request: web.Request) -> web.Response:
        self.calls["whoami"] += 1
        header = request.headers.get("Authorization", "")
        raw = header.partition(" ")[2].strip()
        if raw:
            self.whoami_by_token[hashlib.sha256(raw.encode()).hexdigest()[:12]] += 1
        issued = self._bearer(request)
        if issued is None or (issued.kind == "hf_jwt_" and self.jwt_whoami == "refuse"):
            return web.json_response({"error": "Invalid credentials in Authorization header"}, status=401)
        return web.json_response({**self._whoami_entity(issued), "auth": self._whoami_auth(issued)})

    def _whoami_entity(self, issued: IssuedToken) -> dict[str, Any]:
        """The user part (huggingface.js ``WhoAmIUser``)."""
        org = self.repo_id.split("/", 1)[0]
        return {
            "type": "user",
            "id": hashlib.sha1(issued.username.encode(), usedforsecurity=False).hexdigest()[:24],
            "name": issued.username,
            "fullname": issued.username,
            "email": f"{issued.username}@example.com",
            "emailVerified": True,
            "canPay": False,
            "isPro": False,
            "periodEnd": None,
            "avatarUrl": "/avatars/stand-in.svg",
            "orgs": [{"type": "org", "name": org, "fullname": org, "roleInOrg": "read"}],
        }

    @staticmethod
    def _whoami_auth(issued: IssuedToken) -> dict[str, Any]:
        """The ``auth`` block, in the shape the Hub gives each kind (see the module docstring)."""
        if issued.kind == "hf_oauth_":
            auth: dict[str, Any] = {"type": "oauth"}
            if issued.expires_at is not None:
                auth["expiresAt"] = _iso(issued.expires_at)
            return auth
        if issued.kind == "hf_jwt_":
            # Undocumented: what whoami-v2 says of a Trusted Publisher token. Assumed here: no
            # accessToken block, so a client cannot learn its permissions from this answer.
            return {"type": "access_token"}
        access_token: dict[str, Any] = {
            "displayName": "tokensidecar-stand-in",
            "role": issued.role or "read",
            "createdAt": _iso(time.time()),
        }
        if issued.expires_at is not None:
            access_token["expiresAt"] = _iso(issued.expires_at)
        if issued.fine_grained is not None:
            access_token["fineGrained"] = issued.fine_grained
        return {"type": "access_token", "accessToken": access_token}

    async def _auth_check(self, request: web.Request) -> web.Response:
        """``GET /api/models/{id}/auth-check[/write]`` (what ``HfApi.auth_check`` calls)."""
        write = request.path.endswith("/write")
        self.calls["auth_check_write" if write else "auth_check"] += 1
        issued, refusal = self._repo_access(request)
        if refusal is not None:
            return refusal
        if write:
            repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
            if issued is None or repo_id not in issued.writable_repos:
                message = f"You don't have write access to {repo_id}"
                return web.json_response(
                    {"error": message},
                    status=403,
                    headers={"X-Error-Code": "Forbidden", "X-Error-Message": message},
                )
        return web.json_response({"ok": True})

    async def _model_info(self, request: web.Request) -> web.Response:
        self.calls["model_info"] += 1
        _, refusal = self._repo_access(request, content=False)
        if refusal is not None:
            return refusal
        org = self.repo_id.split("/", 1)[0]
        commit = self._commit_of(request.match_info.get("rev", "main"))
        assert commit is not None
        return web.json_response(
            {
                "_id": self.commit_sha[:24],
                "id": self.repo_id,
                "modelId": self.repo_id,
                "author": org,
                "sha": commit,
                "private": not self.gated,
                "gated": "manual" if self.gated else False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "lastModified": "2025-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": name} for name in sorted(self.commits[commit])],
            }
        )

    async def _tree(self, request: web.Request) -> web.Response:
        self.calls["tree"] += 1
        _, refusal = self._repo_access(request)
        if refusal is not None:
            return refusal
        commit = self._commit_of(request.match_info["rev"])
        assert commit is not None
        prefix = request.match_info.get("path", "").strip("/")
        recursive = request.query.get("recursive", "").lower() in ("1", "true")
        expand = request.query.get("expand", "").lower() in ("1", "true")
        entries = [
            entry
            for entry in self._entries(commit, expand=expand)
            if _under(entry["path"], prefix, recursive=recursive)
        ]
        if prefix and not entries and not any(p == prefix for p in self.commits[commit]):
            return web.json_response(
                {"error": f"{prefix} does not exist on {request.match_info['rev']}"},
                status=404,
                headers={"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"},
            )
        # Pagination as the Hub does it (GitHub-style Link header with an opaque cursor).
        offset = int(request.query.get("cursor", "0") or 0)
        page = entries[offset : offset + self.tree_page_size]
        headers = {}
        if offset + self.tree_page_size < len(entries):
            query = {k: v for k, v in request.query.items() if k != "cursor"}
            query["cursor"] = str(offset + self.tree_page_size)
            next_url = request.url.with_query(query)
            headers["Link"] = f'<{self.url}{next_url.path_qs}>; rel="next"'
        return web.json_response(page, headers=headers)

    async def _paths_info(self, request: web.Request) -> web.Response:
        self.calls["paths_info"] += 1
        _, refusal = self._repo_access(request)
        if refusal is not None:
            return refusal
        commit = self._commit_of(request.match_info["rev"])
        assert commit is not None
        form = await request.post()
        wanted = {str(p).strip("/") for p in form.getall("paths", [])}
        expand = str(form.get("expand", "")).lower() in ("1", "true")
        return web.json_response([e for e in self._entries(commit, expand=expand) if e["path"] in wanted])

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        self.calls["resolve"] += 1
        issued, refusal = self._repo_access(request)
        if refusal is not None:
            return refusal
        commit = self._commit_of(request.match_info["rev"])
        assert commit is not None
        name = request.match_info["file"]
        content = self.commits[commit].get(name)
        if content is None:
            return web.json_response(
                {"error": "Entry not found"},
                status=404,
                headers={"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"},
            )
        assert issued is not None
        if request.method == "GET":
            self.downloads_by_token[hashlib.sha256(issued.value.encode()).hexdigest()[:12]] += 1
        if name in self.lfs_files:
            return self._redirect_to_cdn(content, commit=commit)
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{_git_blob_sha(content)}"',
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }
        if request.method == "HEAD":
            return web.Response(status=200, headers={**headers, "Content-Length": str(len(content))})
        return await self._send_body(request, content, headers)

    def _redirect_to_cdn(self, content: bytes, *, commit: str) -> web.Response:
        # The real Hub's answer for an LFS or Xet-backed file: a 302 to a signed CDN URL,
        # with the file's metadata on the redirect itself.
        sha256 = _sha256(content)
        expires = str(int(time.time()) + 3600)
        signature = hmac.new(self._cdn_key, f"{sha256}:{expires}".encode(), hashlib.sha256).hexdigest()
        headers = {
            "Location": f"{self.cdn_url}/blobs/{sha256}?Expires={expires}&Signature={signature}",
            "X-Repo-Commit": commit,
            "ETag": f'"{sha256}"',
            "X-Linked-Etag": f'"{sha256}"',
            "X-Linked-Size": str(len(content)),
            "Accept-Ranges": "bytes",
        }
        if self.xet:
            xet_hash = _sha256(b"xet" + content[:64])
            headers.update(
                {
                    "X-Xet-Hash": xet_hash,
                    "X-Xet-Cas-Url": f"{self.cdn_url}/cas",
                    "X-Xet-Access-Token": "xet-" + secrets.token_hex(8),
                    "X-Xet-Token-Expiration": expires,
                    "X-Xet-Refresh-Route": f"/api/models/{self.repo_id}/xet-read-token/{commit}",
                    "Link": f'<{self.url}/api/models/{self.repo_id}/xet-read-token/{commit}>; rel="xet-auth"',
                }
            )
        return web.Response(status=302, headers=headers)

    async def _cdn_blob(self, request: web.Request) -> web.StreamResponse:
        authorization = "Authorization" in request.headers
        with self._lock:
            self.cdn_requests.append((request.method, request.path, authorization))
        if authorization:  # S3 signed URLs refuse a second credential
            return web.Response(status=400, text="Only one auth mechanism allowed")
        sha256 = request.match_info["sha256"]
        expires = request.query.get("Expires", "0")
        expected = hmac.new(self._cdn_key, f"{sha256}:{expires}".encode(), hashlib.sha256).hexdigest()
        if (
            not hmac.compare_digest(expected, request.query.get("Signature", ""))
            or int(expires) < time.time()
        ):
            return web.Response(status=403, text="Request has expired or the signature does not match")
        for files in list(self.commits.values()):
            for name, content in files.items():
                if name in self.lfs_files and _sha256(content) == sha256:
                    return await self._send_body(request, content, {"ETag": f'"{sha256}"'})
        return web.Response(status=404, text="NoSuchKey")

    async def _send_body(
        self, request: web.Request, content: bytes, headers: dict[str, str]
    ) -> web.StreamResponse:
        """A file body with Range support, through the body faults (cut, corrupt, stall)."""
        start, end, status = 0, len(content), 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = min(int(match.group(2)) + 1, len(content)) if match.group(2) else len(content)
            if start >= len(content):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(content)}"})
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{len(content)}"}
        response = web.StreamResponse(status=status, headers={**headers, "Accept-Ranges": "bytes"})
        response.content_length = end - start
        await response.prepare(request)
        body = memoryview(content)[start:end]
        fault = self._take_body_fault()
        if fault is not None and fault.kind == "corrupt":
            body = memoryview(bytes([body[0] ^ 0xFF]) + body[1:]) if body else body
        for offset in range(0, len(body), 64 * 1024):
            if fault is not None and offset >= fault.after:
                if fault.kind == "cut":
                    await asyncio.sleep(fault.delay)  # what was sent arrives before the cut
                    assert request.transport is not None
                    request.transport.close()
                    return response
                if fault.kind == "stall":
                    await asyncio.sleep(fault.delay)
                    fault = None
            await response.write(body[offset : offset + 64 * 1024])
        await response.write_eof()
        return response

    # -- protocol steering (commits, file bodies) -------------------------------------------

    def push(self, files: Mapping[str, bytes], *, branch: str = "main") -> str:
        """A new commit on ``branch`` with ``files`` (the whole tree); returns its sha."""
        with self._lock:
            parent = self.refs.get(branch, "")
            sha = hashlib.sha1(
                parent.encode() + b"".join(n.encode() + c for n, c in sorted(files.items())),
                usedforsecurity=False,
            ).hexdigest()
            self.commits[sha] = dict(files)
            self.refs[branch] = sha
            if branch == "main":
                self.files, self.commit_sha = dict(files), sha
        return sha

    def corrupt_next_body(self, count: int = 1) -> None:
        """Flip the first byte of the next ``count`` file bodies (resolve or CDN)."""
        with self._lock:
            self._body_faults.extend(_BodyFault("corrupt") for _ in range(count))

    def cut_next_body(self, count: int = 1, *, after: int = 0, delay: float = 0.2) -> None:
        """Close the connection of the next ``count`` file bodies after ``after`` bytes
        (``delay`` seconds after sending them, so that they reach the reader first)."""
        with self._lock:
            self._body_faults.extend(_BodyFault("cut", after=after, delay=delay) for _ in range(count))

    def stall_next_body(self, count: int = 1, *, after: int = 0, delay: float = 1.0) -> None:
        """Pause the next ``count`` file bodies for ``delay`` seconds after ``after`` bytes."""
        with self._lock:
            self._body_faults.extend(_BodyFault("stall", after=after, delay=delay) for _ in range(count))

    def _take_body_fault(self) -> _BodyFault | None:
        with self._lock:
            return self._body_faults.pop(0) if self._body_faults else None

    def _commit_of(self, revision: str) -> str | None:
        with self._lock:
            if revision in self.refs:
                return self.refs[revision]
            return revision if revision in self.commits else None

    def _entries(self, commit: str, *, expand: bool) -> list[dict[str, Any]]:
        """Tree entries of ``commit``: files (with ``lfs`` / ``xetHash``) and directories."""
        files = self.commits[commit]
        last_commit = {"id": commit, "title": "stand-in commit", "date": "2025-01-01T00:00:00.000Z"}
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for name, content in sorted(files.items()):
            parts = name.split("/")[:-1]
            folders.update("/".join(parts[:depth]) for depth in range(1, len(parts) + 1))
            entry: dict[str, Any] = {"type": "file", "oid": "", "size": len(content), "path": name}
            if name not in self.lfs_files:
                entry["oid"] = _git_blob_sha(content)
            else:
                sha256 = _sha256(content)
                pointer = (
                    f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(content)}\n"
                )
                entry["oid"] = _git_blob_sha(pointer.encode())
                entry["lfs"] = {"oid": sha256, "size": len(content), "pointerSize": len(pointer)}
                if self.xet:
                    entry["xetHash"] = _sha256(b"xet" + content[:64])
            if expand:
                entry["lastCommit"] = last_commit
                entry["securityFileStatus"] = {
                    "status": "safe",
                    "avScan": {"virusFound": False, "virusNames": None},
                    "pickleImportScan": {"highestSafetyLevel": "innocuous", "imports": []},
                }
            entries.append(entry)
        for folder in sorted(folders):
            oid = hashlib.sha1(f"{commit}:{folder}".encode(), usedforsecurity=False).hexdigest()
            entry = {"type": "directory", "oid": oid, "size": 0, "path": folder}
            if expand:
                entry["lastCommit"] = last_commit
            entries.append(entry)
        return entries

    async def _revoke(self, request: web.Request) -> web.Response:
        """hub-docs security-tokens.md: ``{"credentials": [...]}``, no auth, always 202, idempotent."""
        self.calls["revoke"] += 1
        body: Any = None
        if request.can_read_body:
            with contextlib.suppress(ValueError, json.JSONDecodeError):
                body = await request.json()
        credentials = body.get("credentials") if isinstance(body, dict) else None
        if not isinstance(credentials, list) or not all(isinstance(item, str) for item in credentials):
            # Undocumented: what the Hub says to another body. A 400 makes a wrong client fail loudly.
            return web.json_response({"error": 'expected {"credentials": [<token>, ...]}'}, status=400)
        for value in credentials:
            with self._lock:
                issued = self._tokens.get(value)
                if issued is None or issued.revoked or issued.kind not in self.revocable_kinds:
                    continue
                issued.revoked = True
            self.revocation_notices[hashlib.sha256(value.encode()).hexdigest()[:12]] += 1
        return web.json_response({}, status=202)

    async def _oauth_token(self, request: web.Request) -> web.Response:
        self.calls["oauth_token"] += 1
        if request.content_type == "application/json":
            try:
                raw_body = await request.json()
            except (ValueError, json.JSONDecodeError):
                raw_body = None
            body = {str(k): str(v) for k, v in raw_body.items()} if isinstance(raw_body, dict) else {}
        else:
            body = {k: str(v) for k, v in (await request.post()).items()}
        try:
            if body.get("grant_type") != TOKEN_EXCHANGE_GRANT:
                raise _ExchangeRefused(400, "unsupported_grant_type", "only token exchange is supported")
            subject_type = body.get("subject_token_type")
            if subject_type == ID_TOKEN_TYPE:
                discovered = await self._discovered_keys(body.get("subject_token", ""))
                answer = self._exchange_id_token(body, discovered=discovered)
            elif subject_type == USER_EMAIL_TYPE:
                answer = self._exchange_enterprise(request, body)
            else:
                raise _ExchangeRefused(
                    400, "invalid_request", f"unsupported subject_token_type {subject_type}"
                )
        except _ExchangeRefused as refused:
            return web.json_response(
                {"error": refused.error, "error_description": refused.description}, status=refused.status
            )
        return web.json_response(answer)

    async def _discovered_keys(self, subject: str) -> list[tuple[Any, str]]:
        """Keys of the subject's issuer, when it is trusted by URL (OIDC discovery, RFC 8414/7517)."""
        parts = subject.split(".")
        try:
            issuer = str(json.loads(_b64url_decode(parts[1])).get("iss", "")).rstrip("/")
        except (IndexError, binascii.Error, ValueError, UnicodeDecodeError, AttributeError):
            return []
        with self._lock:
            entry = self._trusted_issuers.get(issuer)
        if entry is None:
            return []
        audience, context = entry
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                url = f"{issuer}/.well-known/openid-configuration"
                async with session.get(url, ssl=context if context is not None else True) as answer:
                    answer.raise_for_status()
                    discovery = await answer.json(content_type=None)
                if discovery.get("issuer", "").rstrip("/") != issuer:
                    raise ValueError("discovery document names another issuer")
                async with session.get(
                    discovery["jwks_uri"], ssl=context if context is not None else True
                ) as answer:
                    answer.raise_for_status()
                    jwks = await answer.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError, AttributeError):
            raise _ExchangeRefused(
                400, "invalid_grant", "could not fetch the issuer's OIDC discovery document or keys"
            ) from None
        return [(key, audience) for key in map(_jwk_public_key, jwks.get("keys", [])) if key is not None]

    def _exchange_id_token(
        self, body: Mapping[str, str], *, discovered: Sequence[tuple[Any, str]] = ()
    ) -> dict[str, Any]:
        subject = body.get("subject_token", "")
        if not body.get("resource"):
            raise _ExchangeRefused(400, "invalid_request", "resource is required")
        parts = subject.split(".")
        if len(parts) != 3:
            raise _ExchangeRefused(400, "invalid_grant", "subject_token is not a JWT")
        try:
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
            signature = _b64url_decode(parts[2])
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise _ExchangeRefused(400, "invalid_grant", "subject_token is not a JWT") from None
        signed = f"{parts[0]}.{parts[1]}".encode()
        with self._lock:
            trusted = list(self._trusted_keys) + list(discovered)
        audiences = claims.get("aud")
        audiences = [audiences] if isinstance(audiences, str) else list(audiences or [])
        resource = body.get("resource", "")
        for key, audience in trusted:
            if not _signature_ok(key=key, alg=str(header.get("alg")), signed=signed, signature=signature):
                continue
            if audience not in audiences:
                raise _ExchangeRefused(400, "invalid_grant", f"audience must be {audience}")
            exp = claims.get("exp")
            if not isinstance(exp, int | float) or exp <= time.time():
                raise _ExchangeRefused(400, "invalid_grant", "subject_token has expired")
            value = self._token_for_resource(resource)
            self.last_exchange = {"resource": resource, "sub": str(claims.get("sub", ""))}
            return {
                "access_token": value,
                "issued_token_type": ACCESS_TOKEN_TYPE,
                "token_type": "bearer",
                "expires_in": int(self.exchange_lifetime),
            }
        raise _ExchangeRefused(400, "invalid_grant", "subject_token signature is not from a trusted issuer")

    def _token_for_resource(self, resource: str) -> str:
        """hub-docs trusted-publishers.md "Two flavors": a repository gives ``hf_jwt_`` with
        write access to that one repository; a username gives a read-only ``hf_oauth_`` token
        with only the ``gated-repos`` scope, which cannot read private repositories."""
        parts = resource.split("/")
        if resource.startswith(("models/", "/")) or not all(parts) or len(parts) > 3:
            raise _ExchangeRefused(400, "invalid_request", f"bad resource format: {resource!r}")
        if len(parts) == 1:
            if resource != self.username:
                raise _ExchangeRefused(400, "invalid_grant", "user not found")
            return self.issue_token(
                expires_in=self.exchange_lifetime,
                kind="hf_oauth_",
                can_read_repo=self.gated,  # private repositories: never; gated ones: as granted
                scopes=("gated-repos",),
                writable_repos=(),
            )
        repo_id = "/".join(parts[-2:])
        if len(parts) == 3 and parts[0] not in ("datasets", "spaces", "kernels", "buckets"):
            raise _ExchangeRefused(400, "invalid_request", f"bad resource format: {resource!r}")
        if len(parts) == 2 and repo_id != self.repo_id:
            raise _ExchangeRefused(400, "invalid_grant", "repository not found")
        return self.issue_token(
            expires_in=self.exchange_lifetime,
            kind="hf_jwt_",
            can_read_repo=len(parts) == 2,
            writable_repos=(repo_id,) if len(parts) == 2 else (),
        )

    def _exchange_enterprise(self, request: web.Request, body: Mapping[str, str]) -> dict[str, Any]:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        client_id, client_secret = "", ""
        if scheme.lower() == "basic":
            with contextlib.suppress(binascii.Error, ValueError, UnicodeDecodeError):
                client_id, _, client_secret = base64.b64decode(encoded).decode().partition(":")
        with self._lock:
            expected = self._clients.get(client_id)
            app_scopes = self._client_scopes.get(client_id, ())
            is_member = body.get("subject_token", "") in self._members
        if expected is None or not hmac.compare_digest(expected, client_secret):
            raise _ExchangeRefused(401, "invalid_client", "client authentication failed")
        if not is_member:
            raise _ExchangeRefused(400, "invalid_grant", "User not found in the bound organization")
        # oauth.md "Scope control": the app's scopes by default; a requested scope narrows them.
        scopes = tuple(body.get("scope", "").split()) or app_scopes
        if any(scope not in OAUTH_SCOPES or scope not in app_scopes for scope in scopes):
            raise _ExchangeRefused(400, "invalid_scope", "Requested scope is not valid")
        # The lifetime is the app's (oauth.md "Security considerations"): a requested
        # expires_in is not a documented parameter and is ignored, as the Hub ignores it.
        lifetime = self.enterprise_lifetime
        self.last_exchange = {key: value for key, value in body.items() if key != "subject_token"}
        writes = bool({"write-repos", "manage-repos"} & set(scopes))
        value = self.issue_token(
            expires_in=lifetime,
            kind="hf_oauth_",
            scopes=scopes,
            can_read_repo="read-repos" in scopes or writes,
            writable_repos=(self.repo_id,) if writes else (),
        )
        return {
            "access_token": value,
            "token_type": "bearer",
            "expires_in": int(lifetime),
            "scope": " ".join(scopes),
            "issued_token_type": ACCESS_TOKEN_TYPE,
        }


def _writable_repos(
    *, role: str | None, owner: str, org: str, fine_grained: Mapping[str, Any] | None, repo_id: str
) -> tuple[str, ...]:
    """What a user access token can write to here: the stand-in's repository when its role or
    its fine-grained scope allows ``repo.write`` on it (its namespace or the repository)."""
    if role == "write":
        return (repo_id,)
    if role != "fineGrained" or fine_grained is None:
        return ()
    if "repo.write" in fine_grained.get("global", []):
        return (repo_id,)
    for entry in fine_grained.get("scoped", []):
        entity = entry["entity"]
        covers = entity.get("name") == repo_id or (
            entity.get("type") in ("user", "org")
            and entity.get("name") in (owner, org)
            and repo_id.startswith(f"{entity.get('name')}/")
        )
        if covers and "repo.write" in entry["permissions"]:
            return (repo_id,)
    return ()


def _jwk_public_key(jwk: Any) -> Any:
    """An RSA or P-256 public key from a JWK (RFC 7517/7518), or None."""
    if not isinstance(jwk, dict):
        return None
    try:
        if jwk.get("kty") == "RSA":
            n, e = (int.from_bytes(_b64url_decode(jwk[name]), "big") for name in ("n", "e"))
            return rsa.RSAPublicNumbers(e, n).public_key()
        if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
            x, y = (int.from_bytes(_b64url_decode(jwk[name]), "big") for name in ("x", "y"))
            return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except (KeyError, ValueError, binascii.Error):
        return None
    return None


def _signature_ok(*, key: Any, alg: str, signed: bytes, signature: bytes) -> bool:
    try:
        if alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
            return True
        if alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey) and len(signature) == 64:
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
            return True
    except InvalidSignature:
        return False
    return False


@contextlib.contextmanager
def serve_in_thread(hub: HubStandIn, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[HubStandIn]:
    """Run ``hub`` on its own event loop in a background thread (for sync callers and tests).

    The steering methods (``issue_token``, ``revoke``, ``fail_next``, …) are thread-safe, so
    the caller keeps using ``hub`` directly while the thread serves it.
    """
    loop = asyncio.new_event_loop()
    started = threading.Event()
    thread = threading.Thread(target=loop.run_forever, name="hub-stand-in", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(hub.start(host=host, port=port), loop).result(timeout=10)
        started.set()
        yield hub
    finally:
        if started.is_set():
            asyncio.run_coroutine_threadsafe(hub.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()

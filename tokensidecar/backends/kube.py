"""Kubernetes client setup in one place: which cluster, which namespace, how errors read.

Every room that talks to the API server (the ``kubernetes-secret`` source, the webhook's
caBundle patch, the rotation job's Secret writes) builds its client here, so in-cluster
config, ``KUBECONFIG`` and the pod's namespace are found the same way everywhere.

Two choices worth knowing:

* A client is built from an explicit ``Configuration`` and never from the library's
  process-wide default (``load_kube_config()`` mutates a global), so two clients in one
  process cannot step on each other and tests can point one at a fake API server.
* In-cluster, the service-account token is re-read from its file by the client before it
  expires (``try_refresh_token``): kubelet rotates projected tokens about every hour, and a
  sidecar that cached the first one would start getting 401s after it expired.
* The official client is synchronous (urllib3), so a watch stream is read in a thread
  (:func:`watch_lines`) that hands lines to the event loop; closing the stream shuts its
  socket down, which unblocks the thread at once, so a cancelled watch stops promptly
  instead of after the next event or the server's timeout.

This module imports the ``kubernetes`` package, which is heavy (its models are ~30 MB
resident): only code paths that talk to Kubernetes import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokensidecar.redact import redact

if TYPE_CHECKING:
    from kubernetes.client import AdmissionregistrationV1Api, ApiClient, Configuration, CoreV1Api

__all__ = [
    "NAMESPACE_FILE",
    "REQUEST_TIMEOUT",
    "KubeconfigUnusable",
    "admissionregistration_v1",
    "api_client",
    "client_configuration",
    "core_v1",
    "describe_error",
    "pod_namespace",
    "watch_lines",
]

NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

# (connect, read) seconds for ordinary requests (not watches, which set their own). An
# API server answers a GET or PATCH of one object in milliseconds; a connect that takes
# 5 s means it is unreachable, and a reply that has not started after 10 s will not come
# (the same read timeout as the Vault client's). Shutdown does not wait for either: the
# sidecar abandons calls still running at SIGTERM (tokensidecar/sidecar/main.py).
REQUEST_TIMEOUT = (5.0, 10.0)


class KubeconfigUnusable(Exception):
    """Neither ``KUBECONFIG`` nor the in-cluster service account leads to an API server.

    The message says what is wrong with it; the settings resolver
    (:class:`tokensidecar.backends.settings.KubernetesSettings`) reports it as a
    configuration error naming ``KUBECONFIG``.
    """


def client_configuration(*, kubeconfig: str | None) -> Configuration:
    """The client ``Configuration`` for ``kubeconfig`` (a path, or a ``:``-separated list
    like ``KUBECONFIG``), or for the pod's in-cluster service account when it is None.

    Raises :class:`KubeconfigUnusable` when neither works.
    """
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    if kubeconfig:
        missing = [path for path in kubeconfig.split(os.pathsep) if path and not Path(path).is_file()]
        if missing:
            raise KubeconfigUnusable(f"{missing[0]} does not exist or is not a file")
        try:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
        except (ConfigException, OSError, ValueError, TypeError, KeyError) as exc:
            raise KubeconfigUnusable(f"cannot use {kubeconfig}: {redact(str(exc))}") from None
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except ConfigException as exc:
            raise KubeconfigUnusable(
                f"not set, and not running in a cluster ({redact(str(exc))}); "
                "set KUBECONFIG to run outside Kubernetes",
            ) from None
    return configuration


def api_client(*, kubeconfig: str | None = None, configuration: Configuration | None = None) -> ApiClient:
    """An ``ApiClient`` for a resolved ``configuration``, else for ``kubeconfig`` as
    :func:`client_configuration` finds it (raises :class:`KubeconfigUnusable`)."""
    from kubernetes import client

    if configuration is None:
        configuration = client_configuration(kubeconfig=kubeconfig)
    return client.ApiClient(configuration)


def core_v1(api: ApiClient) -> CoreV1Api:
    from kubernetes import client

    return client.CoreV1Api(api)


def admissionregistration_v1(api: ApiClient) -> AdmissionregistrationV1Api:
    from kubernetes import client

    return client.AdmissionregistrationV1Api(api)


def pod_namespace(*, kubeconfig: str | None = None, namespace_file: Path = NAMESPACE_FILE) -> str | None:
    """The namespace this pod runs in, or None when it cannot be known.

    In order: ``POD_NAMESPACE`` (the downward API, set by the webhook), the service
    account's namespace file (every pod with a mounted token has it), then the current
    context's namespace of ``kubeconfig`` (what ``kubectl`` would use, outside a cluster).
    """
    from_env = os.environ.get("POD_NAMESPACE", "").strip()
    if from_env:
        return from_env
    try:
        from_file = namespace_file.read_text().strip()
    except OSError:
        from_file = ""
    if from_file:
        return from_file
    if kubeconfig:
        return _kubeconfig_namespace(kubeconfig)
    return None


def _kubeconfig_namespace(kubeconfig: str) -> str | None:
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    try:
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError, ValueError, TypeError, KeyError):
        return None
    namespace = ((active or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else None


def describe_error(exc: BaseException, *, action: str) -> str:
    """One redacted line for a failed API call: ``get secret ns/x: 403 Forbidden (...)``.

    ``ApiException.__str__`` includes response headers and body; the ``Status`` message
    is the useful part, so only that is kept. Connection errors keep their own text,
    which names the URL and the cause, never a credential.
    """
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        message = _status_message(exc.body)
        detail = f" ({message})" if message else ""
        return redact(f"{action}: {exc.status} {exc.reason}{detail}")
    text = str(exc).strip().replace("\n", " ") or type(exc).__name__
    return redact(f"{action}: {type(exc).__name__}: {text}")


def _status_message(body: Any) -> str:
    import json

    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not body:
        return ""
    try:
        status = json.loads(body)
    except ValueError:
        return ""
    message = status.get("message") if isinstance(status, dict) else None
    return str(message)[:300] if message else ""


async def watch_lines(request: Callable[[], Any], *, thread_name: str) -> AsyncGenerator[bytes, None]:
    """The lines of one watch response, as they arrive, until the server ends the stream.

    ``request`` makes the watch call (``watch=True, _preload_content=False``); it runs in a
    daemon thread, which reads the chunked response and hands each line to the event loop
    with ``loop.call_soon_threadsafe``. An error of the request or the read is raised here.
    Closing this generator shuts the response's socket down (urllib3 >= 2.3), which
    unblocks the thread's read at once.
    """
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stopping = threading.Event()
    responses: list[Any] = []

    def deliver(kind: str, item: Any) -> None:
        if not stopping.is_set():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                loop.call_soon_threadsafe(lines.put_nowait, (kind, item))

    def read() -> None:
        try:
            responses.append(request())
            if stopping.is_set():
                responses[0].close()
                return
            for line in _iter_lines(responses[0]):
                deliver("line", line)
            deliver("end", None)
        except BaseException as exc:
            deliver("error", exc)
        finally:
            for response in responses:
                with contextlib.suppress(Exception):
                    response.release_conn()

    threading.Thread(target=read, name=thread_name, daemon=True).start()
    try:
        while True:
            kind, item = await lines.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stopping.set()
        for response in responses:
            with contextlib.suppress(Exception):
                response.shutdown()


def _iter_lines(response: Any) -> Iterator[bytes]:
    """Split a chunked watch response into lines as chunks arrive (events can span chunks)."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield line
    if pending.strip():
        yield pending

"""The ``kubernetes-secret`` source: one named Secret, watched through the API (no polling).

A kubelet-mounted Secret volume takes 60-90 s to show a change; a watch sees it in
milliseconds. The watch is built in layers, each with one job (the shape of kopf's
``kopf/_cogs/clients/watching.py``):

* :meth:`KubernetesSecretSource.watch` never stops on its own: it lists the Secret
  (field selector on its name), yields that state, then watches from the list's
  resourceVersion; on ``410 Gone`` it lists again and yields the re-listed state when it
  changed, so an update made while the watch was broken is still delivered; on a dropped
  connection it resumes from the last resourceVersion after a short jittered backoff,
  and gives up (raises, so the refresher counts a failure and backs off) only after
  several reconnects in a row fail.
* :meth:`KubernetesSecretSource._stream` is one HTTP watch stream, as raw JSON events.

The official client is synchronous (urllib3), so each stream is read in a thread that
hands lines to the event loop with ``loop.call_soon_threadsafe``. Closing the stream
shuts its socket down, which unblocks the thread at once; cancelling the refresher
therefore stops the watch promptly instead of after the next event or server timeout.
Events are parsed as plain JSON rather than client models: it is faster (the propagation
goal is well under 50 ms) and it keeps the base64 data in one place.

The ``tokensidecar.io/expires-at`` annotation is trusted only when
``tokensidecar.io/fingerprint`` (what the rotation job writes beside it) names the token
in the data, or, with no fingerprint, when it is in the future: annotations can be edited
apart from the data, and an expiry left over from an older token must not refuse a new
one (the full rule is in :mod:`tokensidecar.sources.expiry`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import random
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from tokensidecar import kube
from tokensidecar.backoff import Backoff
from tokensidecar.config import Config, ConfigError
from tokensidecar.redact import remember
from tokensidecar.sources import Source, SourceError
from tokensidecar.sources.expiry import StoredExpiry
from tokensidecar.token import Token

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

__all__ = ["EXPIRES_AT_ANNOTATION", "FINGERPRINT_ANNOTATION", "VERSION_ANNOTATION", "KubernetesSecretSource"]

log = logging.getLogger(__name__)

VERSION_ANNOTATION = "tokensidecar.io/version"
EXPIRES_AT_ANNOTATION = "tokensidecar.io/expires-at"
#: The fingerprint of the token the expiry annotation describes.
FINGERPRINT_ANNOTATION = "tokensidecar.io/fingerprint"

# The API server ends a watch after timeoutSeconds; client-go picks 5-10 min at random so
# that a fleet of watchers does not reconnect in lock-step. The read timeout is longer:
# with bookmarks on, a silent stream past it means a dead connection, not a quiet Secret.
WATCH_TIMEOUT_RANGE = (300, 600)
WATCH_READ_GRACE = 60.0
# Reconnects in a row (after drops or failed requests) before the watch reports failure
# to the refresher. Backoff between them: 0.2 s doubling, full jitter, at most 5 s.
MAX_QUIET_RECONNECTS = 5
RECONNECT_BACKOFF = (0.2, 5.0)


class _Gone(Exception):
    """410 Gone: the resourceVersion we resume from has been compacted away; list again."""


class KubernetesSecretSource(Source):
    kind = "kubernetes-secret"
    watchable = True

    def __init__(
        self,
        *,
        api: ApiClient,
        name: str,
        namespace: str,
        key: str = "token",
        reconnect_backoff: tuple[float, float] = RECONNECT_BACKOFF,
    ) -> None:
        self.api = api
        self.reconnect_backoff = reconnect_backoff
        self.name = name
        self.namespace = namespace
        self.key = key
        self._core = kube.core_v1(api)
        self._stored_expiry = StoredExpiry(
            where=self.ref, field=f"annotation {EXPIRES_AT_ANNOTATION}", log=log
        )

    @classmethod
    def from_config(cls, config: Config) -> KubernetesSecretSource:
        name = config.require("secret_name", when="--source=kubernetes-secret")
        namespace = config.secret_namespace or kube.pod_namespace(kubeconfig=config.kubeconfig)
        if not namespace:
            raise ConfigError(
                "TOKENSIDECAR_SECRET_NAMESPACE",
                "not set, and the pod's namespace is unknown (no POD_NAMESPACE, no service-account "
                "namespace file, no namespace in the kubeconfig context)",
            )
        return cls(
            api=kube.api_client(kubeconfig=config.kubeconfig), name=name, namespace=namespace, key=config.key
        )

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    # -- reading one Secret ---------------------------------------------------------------

    def token_from(self, secret: dict[str, Any]) -> Token:
        """The token in ``secret`` (a Secret as JSON), or :class:`SourceError` naming the key."""
        data = secret.get("data") or {}
        encoded = data.get(self.key)
        if encoded is None:
            raise SourceError(f"secret {self.ref} has no key {self.key!r}")
        remember(encoded)
        try:
            value = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise SourceError(f"key {self.key!r} of secret {self.ref} is not base64-encoded UTF-8") from None
        remember(value)
        meta = secret.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        return Token(
            value=value,
            source=self.kind,
            version=annotations.get(VERSION_ANNOTATION) or meta.get("resourceVersion"),
            expires_at=self._stored_expiry.for_token(
                value,
                expires_at=annotations.get(EXPIRES_AT_ANNOTATION),
                written_for=annotations.get(FINGERPRINT_ANNOTATION),
            ),
        )

    def _read(self) -> dict[str, Any]:
        response: Any = self._core.read_namespaced_secret(
            self.name, self.namespace, _preload_content=False, _request_timeout=kube.REQUEST_TIMEOUT
        )
        secret: dict[str, Any] = json.loads(response.data)
        return secret

    async def fetch(self) -> Token:
        from kubernetes.client.exceptions import ApiException

        try:
            secret = await asyncio.to_thread(self._read)
        except ApiException as exc:
            if exc.status == 404:
                raise SourceError(f"secret {self.ref} not found") from None
            raise SourceError(kube.describe_error(exc, action=f"get secret {self.ref}")) from None
        except Exception as exc:  # urllib3 connection errors, timeouts, bad JSON
            raise SourceError(kube.describe_error(exc, action=f"get secret {self.ref}")) from None
        return self.token_from(secret)

    # -- watching -------------------------------------------------------------------------

    def _list(self) -> tuple[dict[str, Any] | None, str]:
        """The Secret (or None) and the list's resourceVersion to watch from."""
        response: Any = self._core.list_namespaced_secret(
            self.namespace,
            field_selector=f"metadata.name={self.name}",
            _preload_content=False,
            _request_timeout=kube.REQUEST_TIMEOUT,
        )
        listing = json.loads(response.data)
        items = listing.get("items") or []
        return (items[0] if items else None), str(listing["metadata"]["resourceVersion"])

    async def watch(self) -> AsyncIterator[Token | SourceError]:
        from kubernetes.client.exceptions import ApiException

        backoff = Backoff(base=self.reconnect_backoff[0], cap=self.reconnect_backoff[1])
        # 410 Gone is answered by listing again; when the API server keeps answering 410
        # (a storm), the relists back off too, as client-go's reflector does, instead of
        # spinning list+watch as fast as the server replies. A real event resets it.
        relist_backoff = Backoff(base=self.reconnect_backoff[0], cap=self.reconnect_backoff[1])
        resource_version: str | None = None
        last_yielded: str | None = None  # resourceVersion of the state last yielded ("" = absent)
        while True:
            try:
                if resource_version is None:
                    secret, listed_at = await asyncio.to_thread(self._list)
                    resource_version = listed_at
                    state = (secret or {}).get("metadata", {}).get("resourceVersion", "")
                    if state != last_yielded:
                        last_yielded = state
                        yield self._outcome(secret, event_type="LISTED")
                async with contextlib.aclosing(self._stream(resource_version)) as events:
                    async for event in events:
                        backoff.reset()
                        event_type = event.get("type")
                        obj = event.get("object") or {}
                        if event_type == "ERROR":
                            if obj.get("code") == 410:
                                raise _Gone(obj.get("message", ""))
                            raise SourceError(
                                f"watch of secret {self.ref} failed: {obj.get('code')} {obj.get('reason')} "
                                f"({obj.get('message', '')})"
                            )
                        relist_backoff.reset()
                        resource_version = obj.get("metadata", {}).get("resourceVersion") or resource_version
                        if event_type in ("ADDED", "MODIFIED", "DELETED"):
                            last_yielded = "" if event_type == "DELETED" else resource_version
                            yield self._outcome(obj, event_type=event_type)
                # The server closed the stream (timeoutSeconds): resume where we are.
            except _Gone as exc:
                # 410 Gone: the resourceVersion is too old (etcd compacted it). List again;
                # whatever changed meanwhile comes out of the listing.
                log.info("watch expired, listing again", extra={"secret": self.ref, "reason": str(exc)})
                resource_version = None
                await asyncio.sleep(relist_backoff.next_delay())
            except ApiException as exc:
                if exc.status == 410:
                    resource_version = None
                    await asyncio.sleep(relist_backoff.next_delay())
                    continue
                if exc.status in (401, 403, 404):  # RBAC, namespace gone: retrying here will not help
                    raise SourceError(kube.describe_error(exc, action=f"watch secret {self.ref}")) from None
                await self._pause(backoff, exc)
            except SourceError:
                raise
            except Exception as exc:  # dropped connection, read timeout, connection refused
                await self._pause(backoff, exc)

    async def _pause(self, backoff: Backoff, exc: Exception) -> None:
        message = kube.describe_error(exc, action=f"watch secret {self.ref}")
        if backoff.failures >= MAX_QUIET_RECONNECTS:
            raise SourceError(message) from None
        delay = backoff.next_delay()
        log.warning(
            "watch interrupted, reconnecting",
            extra={"secret": self.ref, "error": message, "retry_in": round(delay, 3)},
        )
        await asyncio.sleep(delay)

    def _outcome(self, secret: dict[str, Any] | None, *, event_type: str) -> Token | SourceError:
        if event_type == "DELETED":
            return SourceError(f"secret {self.ref} was deleted")
        if secret is None:
            return SourceError(f"secret {self.ref} not found")
        try:
            return self.token_from(secret)
        except SourceError as exc:
            return exc

    async def _stream(self, resource_version: str) -> AsyncGenerator[dict[str, Any], None]:
        """One watch request: JSON events until the server ends the stream or it breaks."""
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stopping = threading.Event()
        responses: list[Any] = []
        timeout_seconds = random.randint(*WATCH_TIMEOUT_RANGE)  # noqa: S311 - spreading, not crypto

        def deliver(kind: str, item: Any) -> None:
            if not stopping.is_set():
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                    loop.call_soon_threadsafe(lines.put_nowait, (kind, item))

        def read_stream() -> None:
            try:
                response: Any = self._core.list_namespaced_secret(
                    self.namespace,
                    field_selector=f"metadata.name={self.name}",
                    resource_version=resource_version,
                    watch=True,
                    allow_watch_bookmarks=True,
                    timeout_seconds=timeout_seconds,
                    _preload_content=False,
                    _request_timeout=(kube.REQUEST_TIMEOUT[0], timeout_seconds + WATCH_READ_GRACE),
                )
                responses.append(response)
                if stopping.is_set():
                    response.close()
                    return
                for line in _iter_lines(response):
                    deliver("line", line)
                deliver("end", None)
            except BaseException as exc:
                deliver("error", exc)
            finally:
                for response in responses:
                    with contextlib.suppress(Exception):
                        response.release_conn()

        reader = threading.Thread(target=read_stream, name=f"watch-secret-{self.ref}", daemon=True)
        reader.start()
        try:
            while True:
                kind, item = await lines.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                try:
                    event = json.loads(item)
                except ValueError:
                    raise SourceError(f"watch of secret {self.ref} sent a line that is not JSON") from None
                if isinstance(event, dict):
                    yield event
        finally:
            stopping.set()
            for response in responses:
                # Unblocks the reader thread's socket read at once (urllib3 >= 2.3).
                with contextlib.suppress(Exception):
                    response.shutdown()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.api.close)

    def __repr__(self) -> str:
        return f"KubernetesSecretSource(secret={self.ref!r}, key={self.key!r})"


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

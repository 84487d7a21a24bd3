"""The ``kubernetes-secret`` source: one named Secret, watched through the API (no polling).

A kubelet-mounted Secret volume takes 60-90 s to show a change; a watch sees it in
milliseconds. The watch is two layers, the shape of kopf's
``kopf/_cogs/clients/watching.py`` (``infinite_watch`` over ``continuous_watch``):

* :meth:`KubernetesSecretSource.watch` reconnects forever: after a dropped connection it
  resumes from the last resourceVersion after a short jittered backoff, and gives up
  (raises, so the refresher counts a failure and backs off) only after several
  reconnects in a row fail; after ``410 Gone`` it lists again, with a backoff of its own.
* :meth:`KubernetesSecretSource._list_then_watch` lists the Secret (field selector on its
  name), yields that state, then watches from the list's resourceVersion, stream after
  stream; it returns on ``410 Gone``, and the re-listed state is yielded when it changed,
  so an update made while the watch was broken is still delivered.

Below them, :meth:`KubernetesSecretSource._watch_stream` turns one watch stream into
tokens; the stream itself is read in a thread by :func:`tokensidecar.backends.kube.watch_lines`
(the official client is synchronous), and cancelling the refresher stops it promptly.
Events are parsed as plain JSON rather than client models: it is faster (the propagation
goal is well under 50 ms) and it keeps the base64 data in one place.

The Secret's layout (the data key, the ``tokensidecar.io/version`` and
``tokensidecar.io/expires-at`` annotations) is :mod:`tokensidecar.backends.secret`, the
one the rotation job writes. The expiry annotation is trusted only when
``tokensidecar.io/fingerprint`` names the token in the data, or, with no fingerprint,
when it is in the future: annotations can be edited apart from the data, and an expiry
left over from an older token must not refuse a new one (the full rule is in
:mod:`tokensidecar.sources.expiry`).
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokensidecar.backends import kube
from tokensidecar.backends import secret as layout
from tokensidecar.backoff import Backoff
from tokensidecar.sources import Source, SourceError
from tokensidecar.sources.expiry import StoredExpiry
from tokensidecar.token import Token

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from tokensidecar.sources.settings import KubernetesSecretSourceSettings

__all__ = ["KubernetesSecretSource"]

log = logging.getLogger(__name__)

# The API server ends a watch after timeoutSeconds; client-go picks 5-10 min at random so
# that a fleet of watchers does not reconnect in lock-step. The read timeout is longer:
# with bookmarks on, a silent stream past it means a dead connection, not a quiet Secret.
WATCH_TIMEOUT_RANGE = (300, 600)
WATCH_READ_GRACE = 60.0
# Reconnects in a row (after drops or failed requests) before the watch reports failure
# to the refresher. Backoff between them: 0.2 s doubling, full jitter, at most 5 s.
MAX_QUIET_RECONNECTS = 5
RECONNECT_BACKOFF = (0.2, 5.0)
# Answers to a watch request that reconnecting will not change: RBAC (401, 403) or the
# namespace gone (404). The watch raises at once and the refresher takes over.
_FINAL_STATUSES = (401, 403, 404)


class _Gone(Exception):
    """410 Gone: the resourceVersion we resume from has been compacted away; list again."""


@dataclass
class _WatchState:
    """Where a watch stands, kept across reconnects and relists by :meth:`KubernetesSecretSource.watch`."""

    #: Backoff between reconnects after drops or failed requests; reset by any event.
    reconnects: Backoff
    #: Backoff between relists after 410 Gone; reset by any event that is not an ERROR.
    relists: Backoff
    #: resourceVersion to resume watching from; None: list first.
    resource_version: str | None = None
    #: resourceVersion of the state last yielded ("" = absent, None = nothing yet).
    last_yielded: str | None = None


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
        self._stored_expiry = StoredExpiry(where=self.ref, field=f"annotation {layout.EXPIRES_AT}", log=log)

    @classmethod
    def from_settings(cls, settings: KubernetesSecretSourceSettings) -> KubernetesSecretSource:
        return cls(
            api=kube.api_client(configuration=settings.kubernetes.configuration),
            name=settings.name,
            namespace=settings.namespace,
            key=settings.key,
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
        try:
            value = layout.decode(encoded)
        except (binascii.Error, ValueError):
            raise SourceError(f"key {self.key!r} of secret {self.ref} is not base64-encoded UTF-8") from None
        meta = secret.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        return Token(
            value=value,
            source=self.kind,
            version=annotations.get(layout.VERSION) or meta.get("resourceVersion"),
            expires_at=self._stored_expiry.for_token(
                value,
                expires_at=annotations.get(layout.EXPIRES_AT),
                written_for=annotations.get(layout.FINGERPRINT),
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
        """Reconnect forever: keep a list-then-watch going through what networks and API servers do.

        * ``410 Gone`` (the resourceVersion was compacted away): :meth:`_list_then_watch`
          returns, and runs again, listing first, after the relist backoff. When the API
          server keeps answering 410 (a storm), relists slow down, as client-go's reflector
          does, instead of spinning list+watch as fast as the server replies; a real event
          resets that backoff.
        * A dropped connection, a read timeout, a refused connection, a 5xx: resume from the
          last resourceVersion after a short jittered backoff (:meth:`_reconnect_after`).
        * 401, 403, 404 (RBAC, the namespace gone), and an ERROR event other than 410: raise
          at once; retrying here will not help.
        """
        state = _WatchState(
            reconnects=Backoff(base=self.reconnect_backoff[0], cap=self.reconnect_backoff[1]),
            relists=Backoff(base=self.reconnect_backoff[0], cap=self.reconnect_backoff[1]),
        )
        while True:
            try:
                async with contextlib.aclosing(self._list_then_watch(state)) as outcomes:
                    async for outcome in outcomes:
                        yield outcome
            except SourceError:
                raise
            except Exception as exc:  # dropped connection, read timeout, refused, an API error
                await self._reconnect_after(exc, backoff=state.reconnects)
            else:  # it returned: 410 Gone
                await asyncio.sleep(state.relists.next_delay())

    async def _reconnect_after(self, exc: Exception, *, backoff: Backoff) -> None:
        """Wait before resuming the watch after ``exc``; raise :class:`SourceError` when the
        API server's answer will not change (:data:`_FINAL_STATUSES`) or after
        :data:`MAX_QUIET_RECONNECTS` reconnects in a row, so the refresher takes over."""
        from kubernetes.client.exceptions import ApiException

        message = kube.describe_error(exc, action=f"watch secret {self.ref}")
        if isinstance(exc, ApiException) and exc.status in _FINAL_STATUSES:
            raise SourceError(message) from None
        if backoff.failures >= MAX_QUIET_RECONNECTS:
            raise SourceError(message) from None
        delay = backoff.next_delay()
        log.warning(
            "watch interrupted, reconnecting",
            extra={"secret": self.ref, "error": message, "retry_in": round(delay, 3)},
        )
        await asyncio.sleep(delay)

    async def _list_then_watch(self, state: _WatchState) -> AsyncGenerator[Token | SourceError, None]:
        """List the Secret, then watch it from the list's resourceVersion; return on ``410 Gone``.

        It lists only when there is no resourceVersion to resume from (the first time, and
        after a 410), and yields the listed state only when it differs from the one last
        yielded: an update made while the watch was broken is delivered, a relist that
        finds nothing new repeats nothing. Then it watches, one stream after another: the
        API server ends each stream after ``timeoutSeconds``, and the next one resumes
        where it stopped.

        ``410 Gone`` means the resourceVersion is too old (etcd compacted it). A real API
        server sends it as an ERROR event carrying a 410 Status inside a 200 stream; it can
        also answer the watch request itself with HTTP 410. Either way the resourceVersion
        is forgotten and this returns, so the caller lists again. Anything else is raised.
        (https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes)
        """
        from kubernetes.client.exceptions import ApiException

        try:
            if state.resource_version is None:
                listed = await self._relist(state)
                if listed is not None:
                    yield listed
            while True:
                async with contextlib.aclosing(self._watch_stream(state)) as outcomes:
                    async for outcome in outcomes:
                        yield outcome
        except _Gone as exc:
            log.info("watch expired, listing again", extra={"secret": self.ref, "reason": str(exc)})
        except ApiException as exc:
            if exc.status != 410:
                raise
        state.resource_version = None

    async def _relist(self, state: _WatchState) -> Token | SourceError | None:
        """List the Secret and move ``state`` to the list's resourceVersion; return the
        listed outcome, or None when it is the state last yielded."""
        secret, state.resource_version = await asyncio.to_thread(self._list)
        seen = (secret or {}).get("metadata", {}).get("resourceVersion", "")
        if seen == state.last_yielded:
            return None
        state.last_yielded = seen
        return self._outcome(secret, event_type="LISTED")

    async def _watch_stream(self, state: _WatchState) -> AsyncGenerator[Token | SourceError, None]:
        """One watch stream from ``state.resource_version``: the outcome of each ADDED,
        MODIFIED and DELETED event. Every event moves the resourceVersion on (bookmarks
        too), so the next stream resumes where this one stopped."""
        since = state.resource_version
        assert since is not None, "list before watching"
        async with contextlib.aclosing(self._events(since)) as events:
            async for event in events:
                state.reconnects.reset()
                event_type = event.get("type")
                obj = event.get("object") or {}
                if event_type == "ERROR":
                    raise self._watch_error(obj)
                state.relists.reset()
                state.resource_version = (
                    obj.get("metadata", {}).get("resourceVersion") or state.resource_version
                )
                if event_type in ("ADDED", "MODIFIED", "DELETED"):
                    state.last_yielded = "" if event_type == "DELETED" else state.resource_version
                    yield self._outcome(obj, event_type=event_type)

    def _watch_error(self, status: dict[str, Any]) -> Exception:
        """What an ERROR event (its object a ``Status``) means: 410 lists again, the rest ends it."""
        if status.get("code") == 410:
            return _Gone(status.get("message", ""))
        return SourceError(
            f"watch of secret {self.ref} failed: {status.get('code')} {status.get('reason')} "
            f"({status.get('message', '')})"
        )

    def _outcome(self, secret: dict[str, Any] | None, *, event_type: str) -> Token | SourceError:
        if event_type == "DELETED":
            return SourceError(f"secret {self.ref} was deleted")
        if secret is None:
            return SourceError(f"secret {self.ref} not found")
        try:
            return self.token_from(secret)
        except SourceError as exc:
            return exc

    async def _events(self, resource_version: str) -> AsyncGenerator[dict[str, Any], None]:
        """One watch request from ``resource_version``: its JSON events until the server
        ends the stream (after ``timeoutSeconds``) or it breaks."""
        timeout_seconds = random.randint(*WATCH_TIMEOUT_RANGE)  # noqa: S311 - spreading, not crypto

        def request() -> Any:
            return self._core.list_namespaced_secret(
                self.namespace,
                field_selector=f"metadata.name={self.name}",
                resource_version=resource_version,
                watch=True,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_seconds,
                _preload_content=False,
                _request_timeout=(kube.REQUEST_TIMEOUT[0], timeout_seconds + WATCH_READ_GRACE),
            )

        lines = kube.watch_lines(request, thread_name=f"watch-secret-{self.ref}")
        async with contextlib.aclosing(lines):
            async for line in lines:
                try:
                    event = json.loads(line)
                except ValueError:
                    raise SourceError(f"watch of secret {self.ref} sent a line that is not JSON") from None
                if isinstance(event, dict):
                    yield event

    async def aclose(self) -> None:
        await asyncio.to_thread(self.api.close)

    def __repr__(self) -> str:
        return f"KubernetesSecretSource(secret={self.ref!r}, key={self.key!r})"

"""The upstream Hub (or a Hub-compatible mirror), as the gateway talks to it.

One ``aiohttp.ClientSession`` for everything upstream. aiohttp rather than huggingface_hub's
httpx2 session (which ``tokensidecar.backends.hub`` uses for one-shot verification calls in a worker
thread): the gateway streams multi-gigabyte bodies into its cache while serving them, on the
same event loop as its aiohttp server, and a synchronous client would need a thread hop per
chunk and a thread per download. The upstream credential is added per request and never set
on the session, so nothing else can send it by accident.

What the Hub does that shapes this module:

* ``resolve`` for an LFS or Xet-backed file answers ``302`` to a CDN host with a signed URL,
  and the file's metadata (``X-Repo-Commit``, ``X-Linked-Etag``, ``X-Linked-Size``) sits on
  that redirect itself. huggingface_hub 2.x reads the metadata from the redirect and follows
  it without ``Authorization`` (``utils/_http.py``, ``_httpx2_follow_hub_redirects_with_backoff``:
  "the authorization header must not be forwarded off the Hub"). Here too: redirects are
  followed by hand, and the credential goes only to the upstream's own host.
* Xet: a client switches to the Xet protocol when it sees ``X-Xet-*`` headers, ``Link:
  rel="xet-auth"`` or ``xetHash`` in trees. The gateway fetches those files over plain HTTP
  itself (the CDN redirect serves their bytes), so every such hint is removed here: answers
  keep an allowlist of headers, and JSON listings lose ``xetHash``.
* Errors are the Hub's own (status, ``X-Error-Code``, ``X-Error-Message``, body) and are
  passed on as they are; connection errors, timeouts, 5xx and 429 are an outage, which the
  metadata cache may answer from stale data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import aiohttp

from tokensidecar import __version__
from tokensidecar.backends import errors
from tokensidecar.gateway.metrics import GatewayMetrics
from tokensidecar.redact import safe_error

__all__ = ["Answer", "FileMeta", "Upstream", "UpstreamUnavailable", "strip_xet"]

log = logging.getLogger(__name__)

# Metadata answers in well under a second; a Hub that has not started a body in 30 s is down.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
MAX_REDIRECTS = 5
# Headers of an answer that may reach a client. Everything else (X-Xet-*, cookies, the
# upstream's caching and tracing headers) stays here.
PASSED_HEADERS = (
    "Content-Type",
    "X-Error-Code",
    "X-Error-Message",
    "Retry-After",
    "X-Repo-Commit",
    "ETag",
    "X-Linked-Etag",
    "X-Linked-Size",
)
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class UpstreamUnavailable(errors.UpstreamUnavailable):
    """No answer from the upstream (connection error, timeout), 5xx / 429, or a 401 to the
    gateway's own credential: the shared "unavailable" (:mod:`tokensidecar.backends.errors`),
    carrying the answer.

    ``answer`` is the upstream's own reply when there was one (a 503 with ``Retry-After``),
    which the client gets when no cached data can stand in for it.
    """

    def __init__(self, message: str, *, answer: Answer | None = None) -> None:
        super().__init__(message)
        self.answer = answer


@dataclass(frozen=True)
class Answer:
    """A metadata answer of the upstream: status, allowed headers, body, next page."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    next_page: str | None = None  # path?query of the Link rel="next" on the upstream's host

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "headers": dict(self.headers),
            "body": self.body.decode("utf-8"),
            "next_page": self.next_page,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Answer:
        return cls(
            status=int(document["status"]),
            headers=dict(document["headers"]),
            body=str(document["body"]).encode("utf-8"),
            next_page=document.get("next_page"),
        )


@dataclass(frozen=True)
class FileMeta:
    """What a ``HEAD /resolve`` tells about one file at one commit."""

    commit: str
    etag: str  # unquoted: the sha256 of an LFS/Xet file, the git blob id of a small one
    size: int

    @property
    def digest(self) -> str:
        """How the content is checked: ``sha256``, ``git-blob`` (sha1 of the blob), or ``size``."""
        if _HEX64.fullmatch(self.etag):
            return "sha256"
        if _HEX40.fullmatch(self.etag):
            return "git-blob"
        return "size"  # a mirror with another ETag scheme: only the length can be checked


def strip_xet(body: bytes) -> bytes:
    """Remove ``xetHash`` from a tree or paths-info listing, so clients stay on plain HTTP."""
    try:
        document = json.loads(body)
    except ValueError:
        return body
    if not isinstance(document, list) or not any(isinstance(e, dict) and "xetHash" in e for e in document):
        return body
    for entry in document:
        if isinstance(entry, dict):
            entry.pop("xetHash", None)
    return json.dumps(document, separators=(",", ":")).encode()


def _raise_for_outage(answer: Answer, *, route: str) -> None:
    """Raise :class:`UpstreamUnavailable` for an answer that is an outage, not the Hub's word.

    5xx and 429 are the upstream's own trouble. And the Hub answers 401 only to a missing or
    invalid token (a valid one without access gets 404 RepoNotFound): every request here
    carries the gateway's own credential (:meth:`Upstream._request` sends none without it),
    so a 401 is the gateway's failure (revoked, expired), not the caller's: an outage for
    the caller (503, stale-if-error applies) rather than a "log in" it can do nothing about.
    """
    if answer.status >= 500 or answer.status == 429:
        raise UpstreamUnavailable(f"upstream {route}: HTTP {answer.status}", answer=answer)
    if answer.status == 401:
        raise UpstreamUnavailable(
            f"upstream {route}: the gateway's upstream credential was refused (HTTP 401)", answer=answer
        )


def _normalize_etag(value: str) -> str:
    # huggingface_hub's _normalize_etag: drop the weak marker and the quotes.
    return value.removeprefix("W/").strip('"')


class Upstream:
    """The one client to ``base_url``; ``token`` is passed per call, never stored."""

    def __init__(self, *, base_url: str, metrics: GatewayMetrics) -> None:
        self.base_url = base_url.rstrip("/")
        self._origin = urlsplit(self.base_url)._replace(path="", query="", fragment="").geturl()
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT),
                headers={"User-Agent": f"tokensidecar-gateway/{__version__}"},
                auto_decompress=False,
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, url: str, token: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity", **(extra or {})}
        # The credential goes to the upstream's own host only, never to a CDN it redirects to.
        if token and urlsplit(url)._replace(path="", query="", fragment="").geturl() == self._origin:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _count(self, route: str, code: int | str) -> None:
        self._metrics.upstream_requests.labels(route=route, code=str(code)).inc()

    @contextlib.asynccontextmanager
    async def _request(
        self,
        method: str,
        path: str,
        *,
        route: str,
        token: str | None,
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        follow: str = "same-host",
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request with redirects followed by hand: ``follow`` is ``same-host`` (metadata
        stays on the redirect to another host) or ``all`` (file bodies: on to the CDN)."""
        if token is None:  # the credential has no good value (yet): asking would be anonymous
            self._count(route, "no_credential")
            raise UpstreamUnavailable("the upstream credential holds no valid token")
        url = self.base_url + path
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = await self._client().request(
                    method, url, headers=self._headers(url, token, headers), data=data, allow_redirects=False
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._count(route, "error")
                raise UpstreamUnavailable(f"upstream {route} failed: {safe_error(exc)}") from None
            self._count(route, response.status)
            location = response.headers.get("Location")
            if response.status in (301, 302, 303, 307, 308) and location:
                target = urljoin(url, location)
                same_host = urlsplit(target).netloc == urlsplit(url).netloc
                if follow == "all" or same_host:
                    response.release()
                    url = target
                    continue
            try:
                yield response
            finally:
                response.release()
            return
        raise UpstreamUnavailable(f"upstream {route}: more than {MAX_REDIRECTS} redirects")

    async def api(self, method: str, path: str, *, route: str, token: str | None, data: Any = None) -> Answer:
        """A metadata call; 5xx, 429 and no answer raise :class:`UpstreamUnavailable`."""
        async with self._request(method, path, route=route, token=token, data=data) as response:
            try:
                body = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise UpstreamUnavailable(f"upstream {route} failed: {safe_error(exc)}") from None
            answer = Answer(
                status=response.status,
                headers={k: response.headers[k] for k in PASSED_HEADERS if k in response.headers},
                body=strip_xet(body) if response.status == 200 else body,
                next_page=self._next_page(response.headers.get("Link", "")),
            )
        _raise_for_outage(answer, route=route)
        return answer

    def _next_page(self, link: str) -> str | None:
        # Only rel="next" survives (never rel="xet-auth"), and only on the upstream's host.
        match = _NEXT_LINK.search(link)
        if match is None:
            return None
        target = urljoin(self.base_url + "/", str(match.group(1)))
        if not target.startswith(self.base_url + "/"):
            return None
        return target[len(self.base_url) :]

    async def file_meta(self, *, repo: str, revision: str, path: str, token: str | None) -> FileMeta | Answer:
        """``HEAD /resolve``: the metadata, or the Hub's error answer (404 EntryNotFound, …)."""
        route = f"/{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"
        async with self._request("HEAD", route, route="resolve", token=token) as response:
            status, headers = response.status, response.headers
        kept = {k: headers[k] for k in PASSED_HEADERS if k in headers}
        _raise_for_outage(Answer(status=status, headers=kept), route="resolve")  # with its Retry-After
        if status >= 400:
            return Answer(status=status, headers=kept)
        etag = headers.get("X-Linked-Etag") or headers.get("ETag") or ""
        size = headers.get("X-Linked-Size") or (
            None if 300 <= status < 400 else headers.get("Content-Length")
        )
        commit = headers.get("X-Repo-Commit", "")
        if not etag or size is None or not commit:
            raise UpstreamUnavailable("upstream resolve: the answer lacks X-Repo-Commit, ETag or a size")
        return FileMeta(commit=commit, etag=_normalize_etag(etag), size=int(size))

    @contextlib.asynccontextmanager
    async def file_body(
        self, *, repo: str, commit: str, path: str, token: str | None, start: int = 0
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """``GET /resolve`` at a commit, following the CDN redirect (without the credential).

        Yields a 200 (``start`` 0) or 206 response whose body starts at ``start``.
        """
        route = f"/{repo}/resolve/{commit}/{quote(path)}"
        extra = {"Range": f"bytes={start}-"} if start else None
        async with self._request(
            "GET", route, route="resolve_body", token=token, headers=extra, follow="all"
        ) as response:
            expected = 206 if start else 200
            if response.status != expected:
                raise UpstreamUnavailable(f"upstream file body: HTTP {response.status}")
            yield response

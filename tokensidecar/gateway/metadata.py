"""The metadata cache: what a repository looks like at a commit, and which commit a branch is.

Two kinds of facts, with two lifetimes (docs/gateway.md):

* what is true *at a commit* — model info, tree pages, paths-info, a file's size and hash —
  never changes, so it is kept for good (on disk, under ``meta/``, named by the sha256 of its
  key: a branch name or a path never becomes a file name);
* which commit a branch or tag names changes, so a resolution is trusted for the revision
  TTL, and during an upstream outage for the stale-if-error window.

Every upstream fetch goes through :meth:`Metadata._once`: concurrent requests for the same
missing fact share one upstream call (N cold ``snapshot_download``\\ s cost ``2 + 2F``
upstream requests, not ``N·(2 + 2F)``). Only successful answers are cached; the Hub's own
errors (404 RepoNotFound, 403 GatedRepo, …) pass through untouched and are asked again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from tokensidecar.gateway.upstream import Answer, FileMeta, Upstream, UpstreamUnavailable

__all__ = ["Metadata", "is_commit"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_COMMIT = re.compile(r"[0-9a-f]{40}")
# Recently used facts stay in memory too: a cache hit then costs no file read at all.
MEMORY_ENTRIES = 4096


def is_commit(revision: str) -> bool:
    return _COMMIT.fullmatch(revision) is not None


@dataclass(frozen=True)
class _Resolution:
    commit: str
    resolved_at: float


class Metadata:
    def __init__(
        self,
        *,
        directory: Path,
        upstream: Upstream,
        revision_ttl: float,
        stale_if_error: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dir = directory / "meta"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._upstream = upstream
        self._ttl = revision_ttl
        self._stale = stale_if_error
        self._clock = clock
        self._memory: OrderedDict[str, Any] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._names: dict[tuple[str, str], set[str]] = {}

    # -- storage ----------------------------------------------------------------------------

    def _file(self, key: str) -> Path:
        return self._dir / hashlib.sha256(key.encode()).hexdigest()

    def _load(self, key: str) -> Any:
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        try:
            document = json.loads(self._file(key).read_bytes())
        except (OSError, ValueError):
            return None
        self._remember(key, document)
        return document

    def _remember(self, key: str, document: Any) -> None:
        self._memory[key] = document
        self._memory.move_to_end(key)
        while len(self._memory) > MEMORY_ENTRIES:
            self._memory.popitem(last=False)

    def _store(self, key: str, document: Any) -> None:
        self._remember(key, document)
        target = self._file(key)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            temporary.write_bytes(json.dumps(document).encode())
            os.replace(temporary, target)  # whole or absent, even after kill -9
        except OSError as exc:  # a full disk costs the cache, not the answer
            log.warning("cannot store metadata", extra={"error": str(exc)})
            with contextlib.suppress(OSError):
                temporary.unlink()

    async def _once(self, key: str, fetch: Callable[[], Awaitable[T]]) -> T:
        """Single flight: the first caller fetches, the others await its result."""
        future = self._inflight.get(key)
        if future is not None:
            return await asyncio.shield(future)
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await fetch()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[key]

    # -- revisions --------------------------------------------------------------------------

    def _record(self, repo: str, revision: str, commit: str) -> None:
        self._names.setdefault((repo, commit), set()).add(revision)
        if revision != commit:
            self._store(f"rev\0{repo}\0{revision}", {"commit": commit, "resolved_at": self._clock()})

    def _resolution(self, repo: str, revision: str) -> _Resolution | None:
        if is_commit(revision):
            return _Resolution(revision, float("inf"))
        document = self._load(f"rev\0{repo}\0{revision}")
        if not isinstance(document, dict):
            return None
        return _Resolution(str(document["commit"]), float(document["resolved_at"]))

    def known_as(self, repo: str, commit: str) -> frozenset[str]:
        """Branch and tag names seen resolving to ``commit`` (for the policy's ``revisions``)."""
        return frozenset(self._names.get((repo, commit), ()))

    def cached_commit(self, repo: str, revision: str, *, outage: bool = False) -> str | None:
        """The commit ``revision`` names, if trusted now (within the TTL, or stale-if-error)."""
        found = self._resolution(repo, revision)
        if found is None:
            return None
        age = self._clock() - found.resolved_at
        return found.commit if age <= (self._stale if outage else self._ttl) else None

    async def commit_for(self, repo: str, revision: str, *, token: str | None) -> str | Answer:
        """The commit of ``revision``, asking upstream (model info) when not trusted now."""
        commit = self.cached_commit(repo, revision)
        if commit is not None:
            return commit
        answer = await self.info(repo=repo, revision=revision, query={}, token=token)
        if answer.status != 200:
            return answer
        commit = self.cached_commit(repo, revision, outage=True)
        return commit if commit is not None else Answer(status=502, body=b'{"error":"no sha upstream"}')

    # -- facts at a commit --------------------------------------------------------------------

    async def _at_commit(
        self,
        *,
        repo: str,
        revision: str,
        kind: str,
        token: str | None,
        fetch: Callable[[str], Awaitable[Answer]],
    ) -> Answer:
        """A listing at ``revision``: resolved to a commit, then cached for good under it."""
        try:
            resolved = await self.commit_for(repo, revision, token=token)
        except UpstreamUnavailable:
            resolved_stale = self.cached_commit(repo, revision, outage=True)
            if resolved_stale is None:
                raise
            resolved = resolved_stale
        if isinstance(resolved, Answer):
            return resolved
        key = f"{kind}\0{repo}\0{resolved}"
        cached = self._load(key)
        if cached is not None:
            return Answer.from_json(cached)

        async def fetch_and_keep() -> Answer:
            answer = await fetch(resolved)
            if answer.status == 200:
                self._store(key, answer.to_json())
            return answer

        return await self._once(key, fetch_and_keep)

    async def info(self, *, repo: str, revision: str, query: Mapping[str, str], token: str | None) -> Answer:
        """``GET /api/models/{repo}/revision/{rev}``; ``revision`` ``""`` is ``main``.

        The default branch is asked for by name (``/revision/main``), upstream too: one cache
        entry for both spellings, the name the policy checks, and mirrors that serve only the
        revision form (olah offline) work. Hub repositories' default branch is ``main``.
        """
        name = revision or "main"
        qs = urlencode(sorted(query.items()))
        commit = self.cached_commit(repo, name)
        if commit is not None:
            cached = self._load(f"info\0{repo}\0{commit}\0{qs}")
            if cached is not None:
                return Answer.from_json(cached)
        target = commit or name
        path = f"/api/models/{repo}/revision/{quote(target, safe='')}" + (f"?{qs}" if qs else "")

        async def fetch() -> Answer:
            answer = await self._upstream.api("GET", path, route="model_info", token=token)
            sha = _sha_of(answer)
            if sha is not None:
                self._record(repo, name, sha)
                self._store(f"info\0{repo}\0{sha}\0{qs}", answer.to_json())
            return answer

        try:
            return await self._once(f"info-fetch\0{repo}\0{target}\0{qs}", fetch)
        except UpstreamUnavailable:
            stale = self.cached_commit(repo, name, outage=True)
            cached = self._load(f"info\0{repo}\0{stale}\0{qs}") if stale else None
            if cached is None:
                raise
            log.warning(
                "upstream unavailable: serving a stale revision", extra={"repo": repo, "revision": name}
            )
            return Answer.from_json(cached)

    async def tree(
        self, *, repo: str, revision: str, path: str, query: Mapping[str, str], token: str | None
    ) -> Answer:
        qs = urlencode(sorted(query.items()))

        async def fetch(commit: str) -> Answer:
            target = f"/api/models/{repo}/tree/{commit}" + (f"/{quote(path)}" if path else "")
            return await self._upstream.api(
                "GET", target + (f"?{qs}" if qs else ""), route="tree", token=token
            )

        return await self._at_commit(
            repo=repo, revision=revision, kind=f"tree\0{path}\0{qs}", token=token, fetch=fetch
        )

    async def paths_info(
        self, *, repo: str, revision: str, form: list[tuple[str, str]], token: str | None
    ) -> Answer:
        body = sorted(form)

        async def fetch(commit: str) -> Answer:
            target = f"/api/models/{repo}/paths-info/{commit}"
            return await self._upstream.api("POST", target, route="paths_info", token=token, data=body)

        kind = "paths-info\0" + urlencode(body)
        return await self._at_commit(repo=repo, revision=revision, kind=kind, token=token, fetch=fetch)

    async def file(self, *, repo: str, revision: str, path: str, token: str | None) -> FileMeta | Answer:
        """A file's commit, hash and size (``HEAD /resolve``), cached for good per commit."""
        commit = self.cached_commit(repo, revision)
        if commit is not None:
            cached = self._load(f"file\0{repo}\0{commit}\0{path}")
            if cached is not None:
                return FileMeta(**cached)
        target = commit or revision

        async def fetch() -> FileMeta | Answer:
            meta = await self._upstream.file_meta(repo=repo, revision=target, path=path, token=token)
            if isinstance(meta, FileMeta):
                self._record(repo, revision, meta.commit)
                self._store(f"file\0{repo}\0{meta.commit}\0{path}", vars(meta))
            return meta

        try:
            return await self._once(f"file-fetch\0{repo}\0{target}\0{path}", fetch)
        except UpstreamUnavailable:
            stale = self.cached_commit(repo, revision, outage=True)
            cached = self._load(f"file\0{repo}\0{stale}\0{path}") if stale else None
            if cached is None:
                raise
            return FileMeta(**cached)


def _sha_of(answer: Answer) -> str | None:
    if answer.status != 200:
        return None
    try:
        sha = json.loads(answer.body).get("sha")
    except (ValueError, AttributeError):
        return None
    return sha if isinstance(sha, str) and is_commit(sha) else None

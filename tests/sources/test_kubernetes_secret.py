"""The kubernetes-secret source against the fake API server, over real HTTP with the official client."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import kubernetes
import pytest

from tests.fixtures.kube import SECRETS, KubeApi, secret_body
from tokensidecar.backends import kube
from tokensidecar.config import ConfigError, resolve
from tokensidecar.logs import JsonFormatter
from tokensidecar.sidecar.settings import sidecar_settings
from tokensidecar.sources import SourceError
from tokensidecar.sources.kubernetes_secret import KubernetesSecretSource
from tokensidecar.sources.settings import KubernetesSecretSourceSettings
from tokensidecar.token import Token

NAME = "hf-token"


@pytest.fixture
async def source(kube_api: KubeApi) -> AsyncIterator[KubernetesSecretSource]:
    secret_source = KubernetesSecretSource(
        api=kube.api_client(kubeconfig=str(kube_api.kubeconfig_path)),
        name=NAME,
        namespace="default",
        reconnect_backoff=(0.01, 0.05),
    )
    yield secret_source
    await secret_source.aclose()


class Watcher:
    """Runs ``source.watch()`` in the background and hands its outcomes to the test."""

    def __init__(self, source: KubernetesSecretSource) -> None:
        self.outcomes: asyncio.Queue[Token | SourceError | BaseException] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(source))

    async def _run(self, source: KubernetesSecretSource) -> None:
        try:
            async for outcome in source.watch():
                await self.outcomes.put(outcome)
        except Exception as exc:
            await self.outcomes.put(exc)

    async def next(self, timeout: float = 5.0) -> Token | SourceError | BaseException:
        return await asyncio.wait_for(self.outcomes.get(), timeout=timeout)

    async def next_token(self, timeout: float = 5.0) -> Token:
        """The next token, past a leading "not found" (the watch may list before the test writes)."""
        outcome = await self.next(timeout)
        while isinstance(outcome, SourceError) and str(outcome).endswith("not found"):
            outcome = await self.next(timeout)
        assert isinstance(outcome, Token), outcome
        return outcome

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
async def watcher(source: KubernetesSecretSource) -> AsyncIterator[Watcher]:
    running = Watcher(source)
    yield running
    await running.stop()


def list_requests(kube_api: KubeApi) -> list[dict[str, str]]:
    return kube_api.call(
        lambda: [
            params
            for method, path, params in kube_api.store.requests
            if method == "GET" and path.endswith("/secrets") and params.get("watch") != "true"
        ]
    )


def watch_requests(kube_api: KubeApi) -> list[dict[str, str]]:
    return kube_api.call(
        lambda: [params for _, _, params in kube_api.store.requests if params.get("watch") == "true"]
    )


# -- fetch ---------------------------------------------------------------------------------


async def test_fetch_reads_token_version_and_expiry_annotation(
    kube_api: KubeApi, source: KubernetesSecretSource
) -> None:
    kube_api.put_secret(
        NAME,
        {"token": "hf_first_token_aaaa"},
        annotations={"tokensidecar.io/version": "v7", "tokensidecar.io/expires-at": "2031-01-02T03:04:05Z"},
    )
    token = await source.fetch()
    assert token.value == "hf_first_token_aaaa"
    assert token.source == "kubernetes-secret"
    assert token.version == "v7"
    assert token.expires_at is not None and token.expires_at.isoformat() == "2031-01-02T03:04:05+00:00"


def _fp(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


@pytest.mark.parametrize(
    ("expires_at", "written_for", "expected"),
    [
        # kubectl edit put a new token under annotations the rotation job wrote for the old one
        ("2020-01-01T00:00:00Z", _fp("hf_annotated_old_token"), None),
        ("2031-01-01T00:00:00Z", _fp("hf_annotated_old_token"), None),
        # written for this very token: trusted, even when it says the token has expired
        ("2020-01-01T00:00:00Z", _fp("hf_annotated_new_token"), "2020-01-01T00:00:00+00:00"),
        # no fingerprint: a future expiry is trusted, a past one cannot refuse the token
        ("2031-01-01T00:00:00Z", None, "2031-01-01T00:00:00+00:00"),
        ("2020-01-01T00:00:00Z", None, None),
    ],
)
async def test_expiry_annotation_is_trusted_only_for_the_token_it_describes(
    kube_api: KubeApi,
    source: KubernetesSecretSource,
    expires_at: str,
    written_for: str | None,
    expected: str | None,
) -> None:
    annotations = {"tokensidecar.io/expires-at": expires_at}
    if written_for:
        annotations["tokensidecar.io/fingerprint"] = written_for
    kube_api.put_secret(NAME, {"token": "hf_annotated_new_token"}, annotations=annotations)

    token = await source.fetch()

    assert (token.expires_at.isoformat() if token.expires_at else None) == expected


async def test_fetch_without_version_annotation_uses_resource_version(
    kube_api: KubeApi, source: KubernetesSecretSource
) -> None:
    stored = kube_api.put_secret(NAME, {"token": "hf_first_token_aaaa"})
    token = await source.fetch()
    assert token.version == stored["metadata"]["resourceVersion"]
    assert token.expires_at is None


async def test_fetch_reports_missing_secret_and_missing_key(
    kube_api: KubeApi, source: KubernetesSecretSource
) -> None:
    with pytest.raises(SourceError, match="secret default/hf-token not found"):
        await source.fetch()
    kube_api.put_secret(NAME, {"other": "hf_not_the_key_xyz"})
    with pytest.raises(SourceError, match="has no key 'token'") as missing:
        await source.fetch()
    assert "hf_not_the_key_xyz" not in str(missing.value)


async def test_fetch_reports_api_outage_in_one_line(
    kube_api: KubeApi, source: KubernetesSecretSource
) -> None:
    kube_api.put_secret(NAME, {"token": "hf_first_token_aaaa"})
    kube_api.fail_next(1, status=503)
    with pytest.raises(SourceError, match=r"get secret default/hf-token: 503"):
        await source.fetch()
    assert (await source.fetch()).value == "hf_first_token_aaaa"


# -- watch ---------------------------------------------------------------------------------


async def test_watch_delivers_create_update_delete_and_recreate(kube_api: KubeApi, watcher: Watcher) -> None:
    absent = await watcher.next()
    assert isinstance(absent, SourceError) and "not found" in str(absent)

    kube_api.put_secret(NAME, {"token": "hf_created_aaaaaa"})
    assert (await watcher.next_token()).value == "hf_created_aaaaaa"

    kube_api.put_secret(NAME, {"token": "hf_updated_bbbbbb"})
    assert (await watcher.next_token()).value == "hf_updated_bbbbbb"

    kube_api.delete(SECRETS, NAME)
    deleted = await watcher.next()
    assert isinstance(deleted, SourceError)
    assert str(deleted) == "secret default/hf-token was deleted"

    kube_api.put_secret(NAME, {"token": "hf_recreated_cccc"})
    assert (await watcher.next_token()).value == "hf_recreated_cccc"


async def test_watch_reports_missing_key_then_recovers(kube_api: KubeApi, watcher: Watcher) -> None:
    kube_api.put_secret(NAME, {"token": "hf_created_aaaaaa"})
    assert isinstance(await watcher.next(), SourceError | Token)
    kube_api.put_secret(NAME, {"wrong": "hf_wrong_key_dddd"})
    missing = await watcher.next()
    while isinstance(missing, Token):  # the initial state may arrive as listed and as ADDED
        missing = await watcher.next()
    assert isinstance(missing, SourceError) and "has no key 'token'" in str(missing)
    kube_api.put_secret(NAME, {"token": "hf_right_key_eeee"})
    assert (await watcher.next_token()).value == "hf_right_key_eeee"


async def test_watch_uses_official_client_writes(
    kube_api: KubeApi, kube_client: Any, watcher: Watcher
) -> None:
    core = kubernetes.client.CoreV1Api(kube_client)
    assert isinstance(await watcher.next(), SourceError)
    await asyncio.to_thread(
        core.create_namespaced_secret,
        "default",
        secret_body(name=NAME, string_data={"token": "hf_via_api_1111"}),
    )
    assert (await watcher.next_token()).value == "hf_via_api_1111"
    await asyncio.to_thread(
        core.patch_namespaced_secret,
        NAME,
        "default",
        {
            "stringData": {"token": "hf_via_patch_2222"},
            "metadata": {"annotations": {"tokensidecar.io/version": "9"}},
        },
    )
    patched = await watcher.next_token()
    assert (patched.value, patched.version) == ("hf_via_patch_2222", "9")


async def test_gone_mid_watch_relists_and_delivers_update_made_while_broken(
    kube_api: KubeApi, watcher: Watcher
) -> None:
    kube_api.put_secret(NAME, {"token": "hf_before_outage_1"})
    assert (await watcher.next_token()).value == "hf_before_outage_1"
    await asyncio.to_thread(kube_api.wait_for_watches, 1)  # never block the loop the watch runs on

    kube_api.latency = 0.3  # the reconnect arrives after the update and the compaction
    kube_api.drop_watches()
    await asyncio.to_thread(lambda: wait_until(lambda: kube_api.open_watches == 0))
    kube_api.put_secret(NAME, {"token": "hf_during_outage_2"})  # no watch is open to see this
    kube_api.compact()  # the resourceVersion the watcher resumes from is gone: 410
    kube_api.latency = 0.0

    assert (await watcher.next_token()).value == "hf_during_outage_2"
    assert len(list_requests(kube_api)) == 2  # the first list, and the re-list after 410 Gone


async def test_gone_as_http_410_relists(kube_api: KubeApi, watcher: Watcher) -> None:
    kube_api.put_secret(NAME, {"token": "hf_before_outage_1"})
    assert (await watcher.next_token()).value == "hf_before_outage_1"
    kube_api.inject_gone(1, as_http=True)
    kube_api.drop_watches()
    await asyncio.to_thread(lambda: wait_until(lambda: len(list_requests(kube_api)) == 2))
    await asyncio.to_thread(kube_api.wait_for_watches, 1)  # never block the loop the watch runs on
    kube_api.put_secret(NAME, {"token": "hf_after_relist_2"})
    assert (await watcher.next_token()).value == "hf_after_relist_2"


async def test_gone_event_without_change_does_not_repeat_the_token(
    kube_api: KubeApi, watcher: Watcher
) -> None:
    kube_api.put_secret(NAME, {"token": "hf_unchanged_token"})
    assert (await watcher.next_token()).value == "hf_unchanged_token"
    kube_api.inject_gone(1)
    kube_api.drop_watches()
    await asyncio.to_thread(lambda: wait_until(lambda: len(list_requests(kube_api)) == 2))
    await asyncio.to_thread(kube_api.wait_for_watches, 1)  # never block the loop the watch runs on
    with pytest.raises(TimeoutError):
        await watcher.next(timeout=0.3)


async def test_dropped_connection_resumes_from_last_resource_version(
    kube_api: KubeApi, watcher: Watcher
) -> None:
    stored = kube_api.put_secret(NAME, {"token": "hf_before_drop_111"})
    assert (await watcher.next_token()).value == "hf_before_drop_111"
    await asyncio.to_thread(kube_api.wait_for_watches, 1)  # never block the loop the watch runs on
    kube_api.drop_watches()
    await asyncio.to_thread(lambda: wait_until(lambda: len(watch_requests(kube_api)) == 2))
    await asyncio.to_thread(kube_api.wait_for_watches, 1)  # never block the loop the watch runs on
    kube_api.put_secret(NAME, {"token": "hf_after_drop_2222"})
    assert (await watcher.next_token()).value == "hf_after_drop_2222"
    assert watch_requests(kube_api)[-1]["resourceVersion"] == stored["metadata"]["resourceVersion"]
    assert len(list_requests(kube_api)) == 1  # resumed, not re-listed


async def test_watch_survives_server_timeout_and_bookmarks(
    kube_api: KubeApi, source: KubernetesSecretSource
) -> None:
    kube_api.call(lambda: setattr(kube_api.store, "bookmark_interval", 0.05))
    kube_api.put_secret(NAME, {"token": "hf_bookmarked_1111"})
    watcher = Watcher(source)
    try:
        assert (await watcher.next_token()).value == "hf_bookmarked_1111"
        await asyncio.sleep(0.3)  # several BOOKMARK events: they are not tokens
        assert watcher.outcomes.empty()
        kube_api.put_secret(NAME, {"token": "hf_bookmarked_2222"})
        assert (await watcher.next_token()).value == "hf_bookmarked_2222"
    finally:
        await watcher.stop()


async def test_persistent_api_outage_ends_the_watch_with_a_source_error(
    kube_api: KubeApi, watcher: Watcher
) -> None:
    kube_api.put_secret(NAME, {"token": "hf_before_outage_1"})
    assert (await watcher.next_token()).value == "hf_before_outage_1"
    await asyncio.to_thread(kube_api.wait_for_watches, 1)  # never block the loop the watch runs on
    kube_api.fail_next(50, status=503)
    kube_api.drop_watches()
    failure = await watcher.next()
    assert isinstance(failure, SourceError)
    assert "watch secret default/hf-token: 503" in str(failure)


async def test_forbidden_watch_is_not_retried_quietly(kube_api: KubeApi, watcher: Watcher) -> None:
    kube_api.put_secret(NAME, {"token": "hf_before_rbac_111"})
    assert (await watcher.next_token()).value == "hf_before_rbac_111"
    await asyncio.to_thread(kube_api.wait_for_watches, 1)  # never block the loop the watch runs on
    kube_api.fail_next(1, status=403, path_contains="/secrets")
    kube_api.drop_watches()
    failure = await watcher.next()
    assert isinstance(failure, SourceError) and "403" in str(failure)


async def test_cancelling_the_watch_closes_its_stream_promptly(
    kube_api: KubeApi, source: KubernetesSecretSource
) -> None:
    kube_api.put_secret(NAME, {"token": "hf_cancel_me_1111"})
    watcher = Watcher(source)
    assert isinstance(await watcher.next(), Token)
    await asyncio.to_thread(kube_api.wait_for_watches, 1)  # never block the loop the watch runs on
    await watcher.stop()
    # The client closes the stream: left alone, the API server would end it only after
    # timeoutSeconds (WATCH_TIMEOUT_RANGE, 5 to 10 minutes), so seconds tell the two apart
    # on any machine.
    await asyncio.to_thread(lambda: wait_until(lambda: kube_api.open_watches == 0, timeout=10.0))
    await asyncio.to_thread(
        lambda: wait_until(
            lambda: not any(t.name.startswith("watch-secret") for t in threading.enumerate()), timeout=10.0
        )
    )


async def test_updates_reach_the_watch_down_the_open_stream(kube_api: KubeApi, watcher: Watcher) -> None:
    kube_api.put_secret(NAME, {"token": "hf_latency_00000"})
    await watcher.next_token()
    await asyncio.to_thread(kube_api.wait_for_watches, 1)  # never block the loop the watch runs on
    requests_before = await asyncio.to_thread(kube_api.call, lambda: len(kube_api.store.requests))
    for round_number in range(1, 21):
        await asyncio.to_thread(kube_api.put_secret, NAME, {"token": f"hf_latency_{round_number:05d}"})
        token = await watcher.next_token()
        assert token.value == f"hf_latency_{round_number:05d}"
    # Every update came as an event on the watch already open: no GET, no re-list, no new
    # watch. How fast: bench/propagation.py (kubernetes-secret) measures it.
    assert await asyncio.to_thread(kube_api.call, lambda: kube_api.store.requests[requests_before:]) == []


# -- configuration -------------------------------------------------------------------------


def test_from_config_requires_the_secret_name(kube_api: KubeApi) -> None:
    config = resolve(sidecar_settings(), {}, {"TOKENSIDECAR_SOURCE": "kubernetes-secret"})
    with pytest.raises(ConfigError, match="TOKENSIDECAR_SECRET_NAME is required"):
        KubernetesSecretSource.from_settings(KubernetesSecretSourceSettings.resolve(config))


def test_from_config_takes_namespace_from_setting_or_kubeconfig_context(
    kube_api: KubeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    environ = {
        "TOKENSIDECAR_SOURCE": "kubernetes-secret",
        "TOKENSIDECAR_SECRET_NAME": NAME,
        "KUBECONFIG": str(kube_api.kubeconfig_path),
        "TOKENSIDECAR_KEY": "hf",
    }
    from_context = KubernetesSecretSource.from_settings(
        KubernetesSecretSourceSettings.resolve(resolve(sidecar_settings(), {}, environ))
    )
    assert (from_context.namespace, from_context.key) == ("default", "hf")
    explicit = KubernetesSecretSource.from_settings(
        KubernetesSecretSourceSettings.resolve(
            resolve(sidecar_settings(), {}, {**environ, "TOKENSIDECAR_SECRET_NAMESPACE": "models"})
        )
    )
    assert explicit.ref == "models/hf-token"
    monkeypatch.setenv("POD_NAMESPACE", "from-downward-api")
    assert KubernetesSecretSource.from_settings(
        KubernetesSecretSourceSettings.resolve(resolve(sidecar_settings(), {}, environ))
    ).namespace == ("from-downward-api")


def test_from_config_outside_a_cluster_without_kubeconfig_names_kubeconfig(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    environ = {
        "TOKENSIDECAR_SOURCE": "kubernetes-secret",
        "TOKENSIDECAR_SECRET_NAME": NAME,
        "TOKENSIDECAR_SECRET_NAMESPACE": "default",
    }
    with pytest.raises(ConfigError, match="KUBECONFIG"):
        KubernetesSecretSource.from_settings(
            KubernetesSecretSourceSettings.resolve(resolve(sidecar_settings(), {}, environ))
        )


# -- no leaks --------------------------------------------------------------------------------

CANARY = "hf_CANARYk8sSecretLeak0123456789"


async def test_canary_token_never_appears_in_errors_logs_or_reprs(
    kube_api: KubeApi, source: KubernetesSecretSource, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    kube_api.put_secret(
        NAME, {"token": CANARY}, annotations={"tokensidecar.io/expires-at": f"not-a-time-{CANARY}"}
    )
    token = await source.fetch()  # success path (and a malformed annotation that is logged)
    assert token.value == CANARY
    seen += [repr(token), repr(source), str(token.metadata())]

    kube_api.put_secret(NAME, {"wrong": CANARY})  # missing key
    with pytest.raises(SourceError) as missing:
        await source.fetch()
    seen.append(str(missing.value))

    kube_api.fail_next(1, status=500)  # API failure
    with pytest.raises(SourceError) as failed:
        await source.fetch()
    seen.append(str(failed.value))

    kube_api.put_secret(NAME, {"token": CANARY})
    watcher = Watcher(source)
    try:
        seen.append(repr(await watcher.next()))
        await asyncio.to_thread(kube_api.wait_for_watches, 1)  # never block the loop the watch runs on
        kube_api.put_secret(NAME, {"token": CANARY + "x"})
        seen.append(repr(await watcher.next()))
        kube_api.drop_watches()  # a dropped watch is logged
        await asyncio.to_thread(lambda: wait_until(lambda: len(watch_requests(kube_api)) >= 2))
        kube_api.delete(SECRETS, NAME)
        seen.append(str(await watcher.next()))
    finally:
        await watcher.stop()

    formatter = JsonFormatter()
    seen += [formatter.format(record) for record in caplog.records]
    assert any("expires-at is not a time" in line for line in seen)
    for text in seen:
        assert CANARY not in text, text


def wait_until(predicate: Any, *, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.005)

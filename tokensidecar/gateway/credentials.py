"""The gateway's upstream credentials: named sidecar sources, kept fresh, held in memory only.

``TOKENSIDECAR_GATEWAY_CREDENTIALS`` names one or more credentials, each one of the
sidecar's sources with that source's own settings (docs/gateway.md)::

    credentials:
      default:                      # a rule without `credential` uses this one
        source: vault
        vault-path: secret/hf/acme
        vault-auth: kubernetes
        vault-role: tokensidecar-gateway
      partner:
        source: kubernetes-secret
        secret-name: hf-partner-token

A key is a sidecar setting's name in lower case with dashes (``TOKENSIDECAR_VAULT_PATH``
→ ``vault-path``, ``VAULT_ADDR`` → ``vault-addr``), as in the webhook's annotations; the
accepted keys are derived from the sidecar's own :class:`~tokensidecar.config.Setting`
declarations, so a source setting added there is accepted here with no change. Precedence
is the sidecar's (flag, environment, default) with the file's key in the place of the
flag: a credential that does not say ``vault-addr`` uses the gateway's ``VAULT_ADDR``.
Only ``source`` must be given for each credential. Settings about a token *file*
(``token-file``, ``file-mode``), the probe port, notifications and ``HF_ENDPOINT`` have no
meaning here and are refused; tokens are verified at ``TOKENSIDECAR_GATEWAY_UPSTREAM``.
Without the file, the sidecar's own source settings define one credential, ``default``.

Each credential is a :class:`~tokensidecar.sidecar.refresh.Refresher` over its source — the
sidecar's schedule, jitter, backoff, last-good and verification, unchanged — whose
publisher keeps the token in this process's memory (:class:`MemoryPublisher`): nothing is
ever written to disk. The data plane asks :meth:`CredentialStore.token` for every
upstream request, so a rotation takes effect at the next request and a download already
streaming keeps the connection it opened.

Metrics: each refresher counts into its own :class:`~tokensidecar.sidecar.metrics.SidecarMetrics`
(its own registry, the sidecar's exposition unchanged); :class:`CredentialMetricsCollector`
shows them all on the gateway's registry with a ``credential`` label added (docs/gateway.md:
"the refresh metrics of §6 labelled by credential").

Interface shared with the data plane (tokensidecar/gateway/server.py):
:meth:`CredentialStore.from_file`, :meth:`~CredentialStore.from_sidecar_config`,
``names``, ``token``, ``readiness``, ``start``, ``aclose``. Extend, don't change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from tokensidecar.backends.settings import VerifySettings
from tokensidecar.backends.verify import Verifier, build_verifier
from tokensidecar.config import Config, ConfigError, Setting, resolve
from tokensidecar.sidecar.metrics import SidecarMetrics
from tokensidecar.sidecar.publish import Publisher
from tokensidecar.sidecar.refresh import Refresher, close_upstreams
from tokensidecar.sidecar.settings import sidecar_settings
from tokensidecar.sources import Source, build_source
from tokensidecar.sources.settings import resolve_source
from tokensidecar.token import Token, validate

__all__ = [
    "CREDENTIALS_SETTING",
    "CREDENTIAL_SETTINGS",
    "Credential",
    "CredentialMetricsCollector",
    "CredentialStore",
    "MemoryPublisher",
    "setting_key",
]

log = logging.getLogger(__name__)

CREDENTIALS_SETTING = "TOKENSIDECAR_GATEWAY_CREDENTIALS"
DEFAULT_CREDENTIAL = "default"

# Sidecar settings that describe the pod's token file, its probe port, its notifications
# or its logs — nothing a gateway credential has — and HF_ENDPOINT, which the gateway
# replaces with TOKENSIDECAR_GATEWAY_UPSTREAM.
_NOT_FOR_CREDENTIALS = frozenset(
    {
        "token_file",
        "file_mode",
        "listen",
        "notify_signal",
        "notify_process",
        "notify_url",
        "log_format",
        "log_level",
        "hf_endpoint",
    }
)
# VAULT_TOKEN is environment-only by design (a secret is never a setting's value): a
# credential in the file names vault-token-file instead.
_NOT_IN_FILE = frozenset({"vault_token"})

#: The settings a credential may carry: the sidecar's, minus the ones above. The gateway
#: command includes them in its own settings, so ``from_sidecar_config`` finds them.
CREDENTIAL_SETTINGS: tuple[Setting, ...] = tuple(
    setting for setting in sidecar_settings() if setting.name not in _NOT_FOR_CREDENTIALS
)

# Names end up in metric labels and log lines: keep them simple.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9_]{0,61}[a-z0-9])?")


def setting_key(setting: Setting) -> str:
    """The file key of a setting: ``vault_path`` → ``vault-path``."""
    return setting.name.replace("_", "-")


_BY_KEY: dict[str, Setting] = {
    setting_key(setting): setting for setting in CREDENTIAL_SETTINGS if setting.name not in _NOT_IN_FILE
}


class MemoryPublisher(Publisher):
    """The refresher's publisher, in memory: the same ``prepare``/``publish`` interface as
    :class:`~tokensidecar.sidecar.publish.Publisher`, and no file anywhere.

    It subclasses Publisher only because the refresher is typed with that class; none of
    the parent's state is set up, and the one method that writes files refuses to run.
    """

    def __init__(self) -> None:  # no super().__init__(): there is no token path
        self._lock = threading.Lock()
        self._current: Token | None = None

    @property
    def current(self) -> Token | None:
        """The published token (with its metadata), or None before the first publish."""
        return self._current

    def prepare(self) -> None:
        """Nothing to prepare: no directory, no leftovers."""

    def publish(self, token: Token) -> bool:
        """Hold ``token`` as the current one; True when the value or its metadata changed."""
        value = validate(token.value)
        with self._lock:
            previous = self._current
            changed = previous is None or previous.value != value or previous.metadata() != token.metadata()
            self._current = token
        return changed

    def _write_atomically(self, path: Path, content: bytes) -> None:
        raise RuntimeError("gateway credentials are never written to disk")


@dataclass
class Credential:
    """One named credential: its source, verifier, refresher and in-memory publisher."""

    name: str
    source: Source
    verifier: Verifier | None
    publisher: MemoryPublisher
    refresher: Refresher
    metrics: SidecarMetrics
    task: asyncio.Task[None] | None = None

    def token(self) -> str | None:
        current = self.publisher.current
        if current is None or current.is_expired():
            return None
        return current.value

    def readiness(self) -> tuple[bool, str]:
        if self.task is not None and self.task.done():
            return False, "refresh loop stopped"
        return self.refresher.state.readiness()

    async def aclose(self) -> None:
        await close_upstreams(source=self.source, verifier=self.verifier)


class CredentialMetricsCollector(Collector):
    """The credentials' refresh metrics on one registry, each sample labelled ``credential``.

    Each credential's :class:`SidecarMetrics` lives on a registry of its own (so the
    sidecar's metric definitions are reused unchanged); this collector merges their
    families by name at scrape time. Process and build-info series are left out: the
    gateway's registry has its own.
    """

    _SKIPPED_PREFIXES = ("process_", "python_", "tokensidecar_build_info")

    def __init__(self) -> None:
        self._registries: dict[str, CollectorRegistry] = {}

    def add(self, name: str, registry: CollectorRegistry) -> None:
        self._registries[name] = registry

    def describe(self) -> list[Metric]:
        return []  # names are only known once credentials are added; skip duplicate checks

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for name, registry in sorted(self._registries.items()):
            for family in registry.collect():
                if family.name.startswith(self._SKIPPED_PREFIXES):
                    continue
                target = merged.get(family.name)
                if target is None:
                    target = Metric(family.name, family.documentation, family.type, family.unit)
                    merged[family.name] = target
                for sample in family.samples:
                    target.samples.append(sample._replace(labels={"credential": name, **sample.labels}))
        yield from merged.values()


def _translate(exc: ConfigError, *, name: str) -> ConfigError:
    """A source's ConfigError, reworded to name the credential's key (``credentials.x.vault-path``)."""
    text = exc.problem
    if exc.setting:
        text = f"{exc.setting}: {text}"
    for setting in CREDENTIAL_SETTINGS:
        key = f"credentials.{name}.{setting_key(setting)}"
        # The values reach resolve() as flags, so an error may name the flag or the variable.
        text = re.sub(rf"\b{re.escape(setting.env)}\b", key, text)
        text = re.sub(rf"(?<![\w-]){re.escape(setting.cli_flag)}(?![\w-])", key, text)
    return ConfigError(CREDENTIALS_SETTING, text)


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


class CredentialStore:
    """All the gateway's upstream credentials, by name."""

    def __init__(
        self, credentials: Mapping[str, Credential], *, registry: CollectorRegistry | None = None
    ) -> None:
        self._credentials = dict(credentials)
        self.collector = CredentialMetricsCollector()
        for name, credential in self._credentials.items():
            self.collector.add(name, credential.metrics.registry)
        if registry is not None:
            registry.register(self.collector)

    # -- building (raises ConfigError before anything starts) ------------------------------

    @staticmethod
    def build_credential(name: str, config: Config, *, upstream: str) -> Credential:
        """One credential from resolved settings; verification and exchanges go to ``upstream``."""
        values = dict(config.values)
        values["hf_endpoint"] = upstream
        config = Config(values=values, explicit=config.explicit)
        try:
            max_backoff = config.get("max_backoff", float)
            source = build_source(resolve_source(config, max_backoff=max_backoff))
            verifier = build_verifier(VerifySettings.resolve(config))
        except ConfigError as exc:
            raise _translate(exc, name=name) from None
        metrics = SidecarMetrics(source=source.kind)
        publisher = MemoryPublisher()
        refresher = Refresher(
            source=source,
            publisher=publisher,
            metrics=metrics,
            verifier=verifier,
            refresh_interval=config.get("refresh_interval", float),
            max_backoff=max_backoff,
            on_hub_outage=config.get("verify_on_hub_outage", str),
        )
        return Credential(
            name=name,
            source=source,
            verifier=verifier,
            publisher=publisher,
            refresher=refresher,
            metrics=metrics,
        )

    @classmethod
    def from_yaml(
        cls,
        text: str,
        *,
        upstream: str,
        environ: Mapping[str, str] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> CredentialStore:
        """Parse the credentials file's text; raise ConfigError naming the key."""
        try:
            document: Any = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            raise ConfigError(
                CREDENTIALS_SETTING, f"{where}{getattr(exc, 'problem', None) or 'not valid YAML'}"
            ) from None
        if not isinstance(document, dict) or set(document) != {"credentials"}:
            raise ConfigError(CREDENTIALS_SETTING, "must be a mapping with one key, credentials")
        entries = document["credentials"]
        if not isinstance(entries, dict) or not entries:
            raise ConfigError(CREDENTIALS_SETTING, "credentials: must map at least one name to its settings")
        env = os.environ if environ is None else environ
        built: dict[str, Credential] = {}
        for raw_name, settings in entries.items():
            name = str(raw_name)
            if _NAME.fullmatch(name) is None:
                raise ConfigError(
                    CREDENTIALS_SETTING,
                    f"credentials.{name}: a name is lower-case letters, digits, '-' and '_' (at most 63)",
                )
            built[name] = cls._credential_from_entry(name, settings, upstream=upstream, environ=env)
        return cls(built, registry=registry)

    @classmethod
    def _credential_from_entry(
        cls, name: str, settings: Any, *, upstream: str, environ: Mapping[str, str]
    ) -> Credential:
        where = f"credentials.{name}"
        if not isinstance(settings, dict):
            raise ConfigError(CREDENTIALS_SETTING, f"{where}: must be a mapping of settings")
        flags: dict[str, str] = {}
        for raw_key, raw_value in settings.items():
            key = str(raw_key)
            setting = _BY_KEY.get(key)
            if setting is None:
                raise ConfigError(CREDENTIALS_SETTING, f"{where}.{key}: not a setting a credential can have")
            value = _scalar(raw_value)
            if value is None:
                raise ConfigError(CREDENTIALS_SETTING, f"{where}.{key}: must be a string, number or boolean")
            flags[setting.name] = value
        if "source" not in flags:
            raise ConfigError(
                CREDENTIALS_SETTING, f"{where}.source: is required (one of the sidecar's sources)"
            )
        try:
            config = resolve(CREDENTIAL_SETTINGS, flags, environ=environ)
        except ConfigError as exc:
            raise _translate(exc, name=name) from None
        return cls.build_credential(name, config, upstream=upstream)

    @classmethod
    def from_file(
        cls,
        path: Path,
        *,
        upstream: str,
        environ: Mapping[str, str] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> CredentialStore:
        """Read ``TOKENSIDECAR_GATEWAY_CREDENTIALS``; raise ConfigError naming the key."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise ConfigError(CREDENTIALS_SETTING, f"cannot read {path}: {reason}") from None
        return cls.from_yaml(text, upstream=upstream, environ=environ, registry=registry)

    @classmethod
    def from_sidecar_config(
        cls, config: Config, *, upstream: str, registry: CollectorRegistry | None = None
    ) -> CredentialStore:
        """One credential, ``default``, from the sidecar's source settings in ``config``.

        Settings missing from ``config`` (a command that did not declare them) take their
        declared defaults.
        """
        values = dict(resolve(CREDENTIAL_SETTINGS, {}, environ={}).values)
        values.update({k: v for k, v in config.values.items() if k in values})
        resolved = Config(values=values, explicit=config.explicit)
        credential = cls.build_credential(DEFAULT_CREDENTIAL, resolved, upstream=upstream)
        return cls({DEFAULT_CREDENTIAL: credential}, registry=registry)

    # -- what the data plane asks -----------------------------------------------------------

    def names(self) -> frozenset[str]:
        return frozenset(self._credentials)

    def token(self, name: str) -> str | None:
        """The current good value of credential ``name``: memory only, None when there is none."""
        credential = self._credentials.get(name)
        return credential.token() if credential is not None else None

    def readiness(self, names: Iterable[str]) -> tuple[bool, str]:
        """Ready when every credential in ``names`` holds a valid token; else why not."""
        problems = []
        for name in sorted(set(names)):
            credential = self._credentials.get(name)
            if credential is None:
                problems.append(f"credential {name!r} is not defined")
                continue
            ready, reason = credential.readiness()
            if not ready:
                problems.append(f"credential {name!r}: {reason}")
        if problems:
            return False, "; ".join(problems)
        return True, "credentials ready"

    def status(self) -> dict[str, dict[str, Any]]:
        """Each credential's refresh state (fingerprints and times, never a token)."""
        return {
            name: credential.refresher.state.status()
            for name, credential in sorted(self._credentials.items())
        }

    def alive(self) -> bool:
        """False when a refresh loop has died (a bug): /healthz says so."""
        return all(c.task is None or not c.task.done() for c in self._credentials.values())

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start one refresher per credential (they publish their first token in the background)."""
        for name, credential in self._credentials.items():
            if credential.task is None:
                credential.task = asyncio.create_task(credential.refresher.run(), name=f"credential-{name}")
                credential.task.add_done_callback(_report_stopped)

    async def aclose(self) -> None:
        tasks = [c.task for c in self._credentials.values() if c.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.gather(*(credential.aclose() for credential in self._credentials.values()))


def _report_stopped(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("credential refresh loop died", extra={"task": task.get_name()}, exc_info=task.exception())

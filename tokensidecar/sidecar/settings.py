"""Settings of ``tokensidecar run`` and ``once``: declared here, resolved once at the door.

:data:`SETTINGS` is what the CLI turns into the sidecar's flags (and the docs reference
into its table): the sidecar's own settings (:data:`SIDECAR_SETTINGS`: where the token is
published, the refresh schedule, the probe port, notifications), then the Hub's, Vault's
and Kubernetes' (:mod:`tokensidecar.backends.settings`) and the token exchange's
(:mod:`tokensidecar.sources.settings`). :meth:`SidecarSettings.resolve` reads them once
into frozen, typed values and raises the :class:`~tokensidecar.config.ConfigError` that
names a bad one; the publisher, the refresher, the notifier, the source and the verifier
are built from those values and never see the configuration.

This module is imported by ``--help``, so it stays light: only declarations and resolvers.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from tokensidecar.backends.settings import HUB_SETTINGS, KUBERNETES_SETTINGS, VAULT_SETTINGS, VerifySettings
from tokensidecar.config import (
    COMMON_SETTINGS,
    SOURCES,
    Config,
    ConfigError,
    Setting,
    parse_file_mode,
    parse_listen,
    parse_positive_duration,
    register,
)
from tokensidecar.sources.settings import OIDC_SETTINGS, SourceSettings, resolve_source

__all__ = ["SETTINGS", "SIDECAR_SETTINGS", "NotifySettings", "SidecarSettings", "sidecar_settings"]

SIDECAR_SETTINGS = register(
    Setting(
        "source",
        "TOKENSIDECAR_SOURCE",
        "Where the token comes from.",
        default="vault",
        choices=SOURCES,
        section="sidecar",
    ),
    Setting(
        "source_file",
        "TOKENSIDECAR_SOURCE_FILE",
        "File holding the token for --source=file (e.g. a projected Secret volume); watched.",
        section="sidecar",
    ),
    Setting(
        "token_file",
        "TOKENSIDECAR_TOKEN_FILE",
        "Where the token is published; token.json is written beside it.",
        default="/var/run/tokensidecar/token",
        section="sidecar",
    ),
    Setting(
        "file_mode",
        "TOKENSIDECAR_FILE_MODE",
        "Mode of the published files (octal).",
        default="0440",
        parse=parse_file_mode,
        section="sidecar",
    ),
    Setting(
        "refresh_interval",
        "TOKENSIDECAR_REFRESH_INTERVAL",
        "How often polled sources are read again; earlier when the token's expiry is near "
        "(refresh at 2/3 of its remaining lifetime). ±10% jitter.",
        default="60s",
        parse=parse_positive_duration,
        section="sidecar",
    ),
    Setting(
        "max_backoff",
        "TOKENSIDECAR_MAX_BACKOFF",
        "Ceiling of the exponential backoff (full jitter, from 1s) after failures.",
        default="60s",
        parse=parse_positive_duration,
        section="sidecar",
    ),
    Setting(
        "listen",
        "TOKENSIDECAR_LISTEN",
        "Address of /healthz, /readyz, /metrics and /status (port 0 picks a free port).",
        default="0.0.0.0:8099",
        parse=parse_listen,
        section="sidecar",
    ),
    Setting(
        "notify_signal",
        "TOKENSIDECAR_NOTIFY_SIGNAL",
        "Signal sent after each publish (e.g. SIGHUP) to the processes named by --notify-process.",
        section="sidecar",
    ),
    Setting(
        "notify_process",
        "TOKENSIDECAR_NOTIFY_PROCESS",
        "Comma list of process names to signal (needs shareProcessNamespace).",
        section="sidecar",
    ),
    Setting(
        "notify_url",
        "TOKENSIDECAR_NOTIFY_URL",
        "URL POSTed after each publish, with token.json as the JSON body.",
        section="sidecar",
    ),
)


def sidecar_settings() -> tuple[Setting, ...]:
    """Every setting of ``run`` and ``once``, in the order of their flags and reference table."""
    return (
        COMMON_SETTINGS
        + SIDECAR_SETTINGS
        + HUB_SETTINGS
        + VAULT_SETTINGS
        + KUBERNETES_SETTINGS
        + OIDC_SETTINGS
    )


SETTINGS = sidecar_settings()


@dataclass(frozen=True)
class NotifySettings:
    """Whom to tell after each publish: a signal to named processes, a URL, or both."""

    #: Signal sent to ``process_names``; SIGHUP when only the names are given.
    signal_number: int | None = None
    #: ``TOKENSIDECAR_NOTIFY_PROCESS``: command names (``comm`` or argv[0]) to signal.
    process_names: frozenset[str] = frozenset()
    #: ``TOKENSIDECAR_NOTIFY_URL``: POSTed ``token.json`` after each publish.
    url: str | None = None

    @classmethod
    def resolve(cls, config: Config) -> NotifySettings | None:
        """The notifications asked for, or None when there are none."""
        signal_number = None
        given_signal = config.optional("notify_signal", str)
        process = config.optional("notify_process", str)
        if given_signal:
            name = given_signal.upper()
            name = name if name.startswith("SIG") else "SIG" + name
            try:
                signal_number = int(signal.Signals[name])
            except KeyError:
                raise ConfigError(
                    "TOKENSIDECAR_NOTIFY_SIGNAL", f"{given_signal!r} is not a signal name"
                ) from None
            if not process:
                raise ConfigError(
                    "", "TOKENSIDECAR_NOTIFY_PROCESS is required when TOKENSIDECAR_NOTIFY_SIGNAL is set"
                )
        names = frozenset(n.strip() for n in (process or "").split(",") if n.strip())
        if names and signal_number is None:
            signal_number = int(signal.SIGHUP)
        url = config.optional("notify_url", str)
        if signal_number is None and not url:
            return None
        return cls(signal_number=signal_number, process_names=names, url=url)


@dataclass(frozen=True)
class SidecarSettings:
    """Everything ``run`` and ``once`` need, resolved and checked."""

    #: The chosen source's settings (``TOKENSIDECAR_SOURCE`` and what it requires).
    source: SourceSettings
    #: How a new token is checked at the Hub before it is published.
    verify: VerifySettings
    #: ``TOKENSIDECAR_TOKEN_FILE``: where the token is published (token.json beside it).
    token_file: str
    #: ``TOKENSIDECAR_FILE_MODE``: mode of the published files.
    file_mode: int
    #: ``TOKENSIDECAR_LISTEN``: (host, port) of the probes, metrics and status.
    listen: tuple[str, int]
    #: ``TOKENSIDECAR_REFRESH_INTERVAL``, seconds: how often polled sources are read again.
    refresh_interval: float
    #: ``TOKENSIDECAR_MAX_BACKOFF``, seconds: ceiling of the backoff after failures.
    max_backoff: float
    #: ``TOKENSIDECAR_VERIFY_ON_HUB_OUTAGE``: ``publish`` or ``hold`` a token the Hub could
    #: not judge while no valid token is published.
    on_hub_outage: str
    #: Notifications after each publish, or None.
    notify: NotifySettings | None

    @classmethod
    def resolve(cls, config: Config) -> SidecarSettings:
        """Check every setting, source first (raises ConfigError before anything starts)."""
        max_backoff = config.get("max_backoff", float)
        source = resolve_source(config, max_backoff=max_backoff)
        verify = VerifySettings.resolve(config)
        return cls(
            source=source,
            verify=verify,
            token_file=config.get("token_file", str),
            file_mode=config.get("file_mode", int),
            listen=config.address("listen"),
            refresh_interval=config.get("refresh_interval", float),
            max_backoff=max_backoff,
            on_hub_outage=config.get("verify_on_hub_outage", str),
            notify=NotifySettings.resolve(config),
        )

"""Settings: one declaration per setting, read from a flag or an environment variable.

Every setting of every command is declared exactly once, as a :class:`Setting`, in a
module-level tuple of the room that owns it: the sidecar's in
:mod:`tokensidecar.sidecar.settings`, the Hub's, Vault's and Kubernetes' in
:mod:`tokensidecar.backends.settings`, the token exchange source's in
:mod:`tokensidecar.sources.settings`, the webhook's, the rotation job's, the gateway's and
the demo's in their own packages. This module keeps the machinery they share, the
settings of every command (logging), and the settings two rooms share (the certificate
files of the webhook's and the gateway's HTTPS servers). The CLI turns the declarations into argparse flags,
the docs reference is generated from them, and :func:`resolve` gives every command the
same precedence: flag, then environment, then default.

Values are parsed and checked here so that a misconfiguration is reported once, as one
line that names the setting the way the user gave it — the flag when it came from a flag
(``error: --refresh-interval: ...``), the environment variable when it came from the
environment (``error: TOKENSIDECAR_REFRESH_INTERVAL: ...``) — before any work starts.
A resolved :class:`Config` is read only by each room's resolver, at the door, through a
typed API (:meth:`Config.get`, :meth:`Config.optional`, :meth:`Config.require`,
:meth:`Config.address`) that fails at once on a misspelt name; the rooms themselves take
frozen, typed settings.
Secret *values* are never settings: only paths to files that hold them (``VAULT_TOKEN`` is
the one standard exception, and it is read from the environment only, never from argv,
where every local user could see it).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

__all__ = [
    "COMMON_SETTINGS",
    "TLS_SETTINGS",
    "Config",
    "ConfigError",
    "Setting",
    "parse_bool",
    "parse_duration",
    "parse_file_mode",
    "resolve",
]


T = TypeVar("T")


class ConfigError(Exception):
    """A setting is missing or malformed; the CLI prints it as one line and exits 2."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}" if setting else problem)
        self.setting = setting
        self.problem = problem


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


DURATION_FORMS = "500ms, 30s, 5m, 1h, 1d, 1m30s or bare seconds"


def parse_duration(text: str) -> float:
    """``500ms``, ``30s``, ``5m``, ``1h``, ``1d``, ``1m30s`` or a bare number of seconds → seconds."""
    raw = text.strip()
    if not raw:
        raise ValueError("empty duration")
    try:
        seconds = float(raw)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(raw):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(raw) or pos == 0:
            raise ValueError(f"{raw!r} is not a duration (use e.g. {DURATION_FORMS})") from None
    if not math.isfinite(seconds):  # float() accepts "nan" and "inf"
        raise ValueError(f"{raw!r} is not a finite duration")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


def parse_file_mode(text: str) -> int:
    try:
        mode = int(text.strip(), 8)
    except ValueError:
        raise ValueError(f"{text!r} is not an octal file mode (e.g. 0440)") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{text!r} is outside 0000-0777")
    return mode


def parse_positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True)
class Setting:
    """One setting: its name (what resolvers read, ``config.get("token_file", str)``), environment
    variable, flag, default and parser.

    ``default`` is given as the string a user would type, so the docs show it the way a
    user writes it and it goes through the same parser as user input.
    """

    name: str
    env: str
    help: str
    default: str | None = None
    parse: Callable[[str], Any] = str
    choices: Sequence[str] = ()
    flag: str = ""
    is_bool: bool = False
    metavar: str | None = None
    section: str = "general"
    flag_only: bool = False
    env_only: bool = False
    #: A switch (``is_bool``) whose flag also takes an explicit value, ``--x=false``: kept
    #: where an older release documented the flag with a value.
    switch_takes_value: bool = False

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def convert(self, raw: str, *, given_as: str | None = None) -> Any:
        """Parse ``raw``; a bad value is a ConfigError naming ``given_as`` (default: the env var)."""
        label = given_as or self.env
        if self.choices and raw not in self.choices:
            raise ConfigError(label, f"{raw!r} is not one of {', '.join(self.choices)}")
        try:
            return self.parse(raw)
        except (ValueError, TypeError) as exc:
            raise ConfigError(label, str(exc)) from None


@dataclass
class Config:
    """Resolved settings of one command, read by name through a typed API.

    Only resolvers read it (``SidecarSettings.resolve(config)`` and the like), each once,
    at the door; what they return is what the rooms take. Every read names its type and is
    checked at run time, and a name that is not a setting of the command fails at once:
    a misspelt setting is an error, never a silent ``None``.
    """

    values: dict[str, Any] = field(default_factory=dict)
    explicit: frozenset[str] = frozenset()
    #: How the user gave each explicit setting: its flag (``--vault-path``) or its
    #: environment variable (``TOKENSIDECAR_VAULT_PATH``).
    given_as: Mapping[str, str] = field(default_factory=dict)

    def get(self, name: str, kind: type[T]) -> T:
        """The value of setting ``name``, which must be a ``kind`` (a default or a parse)."""
        value = self._value(name)
        if not isinstance(value, kind):
            raise TypeError(f"setting {name} is a {type(value).__name__}, not a {kind.__name__}")
        return value

    def optional(self, name: str, kind: type[T]) -> T | None:
        """Like :meth:`get`, but None when the setting is unset (no default, or given empty)."""
        if self._value(name) in (None, ""):
            return None
        return self.get(name, kind)

    def address(self, name: str) -> tuple[str, int]:
        """The (host, port) of a ``HOST:PORT`` setting (parsed by :func:`parse_listen`)."""
        host, port = self.get(name, tuple)
        return str(host), int(port)

    def _value(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise LookupError(f"{name!r} is not a setting of this command") from None

    def is_set(self, name: str) -> bool:
        """True when the user gave the setting (flag or environment), not just the default."""
        return name in self.explicit

    def label(self, name: str) -> str:
        """The name to put in an error about a setting: what the user typed, else its env var."""
        given = self.given_as.get(name)
        if given:
            return given
        setting = _BY_NAME.get(name)
        return setting.env if setting else name

    @overload
    def require(self, name: str, *, when: str) -> str: ...

    @overload
    def require(self, name: str, kind: type[T], *, when: str) -> T: ...

    def require(self, name: str, kind: type[Any] = str, *, when: str) -> Any:
        """The value of setting ``name`` (text unless ``kind`` says otherwise); a
        ConfigError naming it when it is unset."""
        value = self.optional(name, kind)
        if value is None:
            setting = _BY_NAME.get(name)
            label = setting.env if setting else name
            raise ConfigError("", f"{label} is required when {when}")
        return value


def resolve(
    settings: Iterable[Setting],
    flags: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Flag (not None) wins over environment, which wins over the declared default."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for setting in settings:
        flag_value = flags.get(setting.name)
        if flag_value is not None and not setting.env_only:
            given_as[setting.name] = setting.cli_flag
            # A switch gives True/False; a switch that takes a value gives the text typed.
            values[setting.name] = (
                flag_value
                if isinstance(flag_value, bool)
                else setting.convert(str(flag_value), given_as=setting.cli_flag)
            )
            continue
        raw = None if setting.flag_only else env.get(setting.env)
        if raw is not None and raw != "":
            given_as[setting.name] = setting.env
            values[setting.name] = setting.convert(raw, given_as=setting.env)
        elif setting.default is not None:
            values[setting.name] = setting.convert(setting.default)
        else:
            values[setting.name] = False if setting.is_bool else None
    return Config(values=values, explicit=frozenset(given_as), given_as=given_as)


_BY_NAME: dict[str, Setting] = {}


def register(*settings: Setting) -> tuple[Setting, ...]:
    """Declare settings; their names must be unique across the program."""
    for setting in settings:
        known = _BY_NAME.get(setting.name)
        if known is not None and known is not setting:
            raise RuntimeError(f"setting {setting.name} declared twice")
        _BY_NAME[setting.name] = setting
    return settings


def all_settings() -> list[Setting]:
    return list(_BY_NAME.values())


SOURCES = ("vault", "kubernetes-secret", "file", "oidc-exchange")
VAULT_AUTH_METHODS = ("kubernetes", "jwt", "approle", "token")
VERIFY_MODES = ("none", "whoami", "repo", "scope")

SA_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"

COMMON_SETTINGS = register(
    Setting(
        "log_format",
        "TOKENSIDECAR_LOG_FORMAT",
        "Log line format: JSON lines for collectors, or text for people.",
        default="json",
        choices=("json", "text"),
    ),
    Setting(
        "log_level",
        "TOKENSIDECAR_LOG_LEVEL",
        "Lowest level logged.",
        default="info",
        choices=("debug", "info", "warning", "error"),
    ),
)

# The serving certificate of the two HTTPS servers, the webhook and the gateway, which follow
# it on disk (tokensidecar.serving.CertificateReloader). Declared here, where neither server
# imports the other for it, and listed in a section of their own on both commands' pages.
TLS_SETTINGS = register(
    Setting(
        "tls_cert_file",
        "TOKENSIDECAR_TLS_CERT_FILE",
        "Serving certificate (PEM, chain allowed); reloaded when it changes on disk.",
        section="tls",
    ),
    Setting(
        "tls_key_file",
        "TOKENSIDECAR_TLS_KEY_FILE",
        "Private key of --tls-cert-file (PEM); reloaded with it.",
        section="tls",
    ),
)

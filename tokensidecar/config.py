"""Settings: one declaration per setting, read from a flag or an environment variable.

Every setting of every command is declared exactly once, as a :class:`Setting`, in a
module-level tuple of the room that owns it (``SIDECAR_SETTINGS`` here, the webhook's
and the rotation job's in their own packages). The CLI turns the declarations into
argparse flags, the docs reference is generated from them, and :func:`resolve` gives
every command the same precedence: flag, then environment, then default.

Values are parsed and checked here so that a misconfiguration is reported once, as one
line that names the setting the way the user gave it — the flag when it came from a flag
(``error: --refresh-interval: ...``), the environment variable when it came from the
environment (``error: TOKENSIDECAR_REFRESH_INTERVAL: ...``) — before any work starts.
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
from typing import Any

__all__ = [
    "COMMON_SETTINGS",
    "SIDECAR_SETTINGS",
    "Config",
    "ConfigError",
    "Setting",
    "parse_bool",
    "parse_duration",
    "parse_file_mode",
    "resolve",
]


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
    """One setting: its attribute name, environment variable, flag, default and parser.

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
    """Resolved settings of one command, by attribute (``config.token_file``)."""

    values: dict[str, Any] = field(default_factory=dict)
    explicit: frozenset[str] = frozenset()
    #: How the user gave each explicit setting: its flag (``--vault-path``) or its
    #: environment variable (``TOKENSIDECAR_VAULT_PATH``).
    given_as: Mapping[str, str] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

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

    def require(self, name: str, *, when: str) -> Any:
        value = self.values.get(name)
        if value in (None, ""):
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

# Settings the sidecar (run, once) shares with the rotation job: where tokens live and
# how they are verified.
HUB_SETTINGS = register(
    Setting(
        "hf_endpoint",
        "HF_ENDPOINT",
        "Hugging Face Hub base URL (verification, token exchange, revocation).",
        default="https://huggingface.co",
        section="hub",
    ),
    Setting(
        "verify",
        "TOKENSIDECAR_VERIFY",
        "Check a new token at the Hub before publishing it: none, whoami "
        "(GET /api/whoami-v2), repo (whoami plus GET /api/models/{id}/auth-check: read access "
        "to --model-id, gated access included), or scope (repo, and refuse a token that can "
        "write to any other repository or whose fine-grained scope lacks --model-id).",
        default="whoami",
        choices=VERIFY_MODES,
        section="hub",
    ),
    Setting(
        "verify_on_hub_outage",
        "TOKENSIDECAR_VERIFY_ON_HUB_OUTAGE",
        "When the Hub cannot be reached (connection error, 5xx, 429) and no valid token is "
        "published yet (none, or the published one expired): publish the new token unverified, "
        "or hold it until the Hub answers. A verified, unexpired token is never displaced by an "
        "unverified one, and a rejection (401/403) always holds.",
        default="publish",
        choices=("publish", "hold"),
        section="hub",
    ),
    Setting(
        "model_id",
        "TOKENSIDECAR_MODEL_ID",
        "Model repository (org/name) that --verify=repo and --verify=scope prove read access to.",
        section="hub",
    ),
    Setting(
        "key",
        "TOKENSIDECAR_KEY",
        "Key of the token inside the Vault secret data or the Kubernetes Secret data.",
        default="token",
    ),
)

VAULT_SETTINGS = register(
    Setting("vault_addr", "VAULT_ADDR", "Vault/OpenBao address.", section="vault"),
    Setting(
        "vault_token",
        "VAULT_TOKEN",
        "Vault token for --vault-auth=token (environment only: never put a token in argv).",
        section="vault",
        env_only=True,
    ),
    Setting(
        "vault_token_file",
        "TOKENSIDECAR_VAULT_TOKEN_FILE",
        "File holding the Vault token for --vault-auth=token (read again at each login).",
        section="vault",
    ),
    Setting("vault_namespace", "VAULT_NAMESPACE", "Vault Enterprise / OpenBao namespace.", section="vault"),
    Setting("vault_cacert", "VAULT_CACERT", "CA bundle that signs Vault's TLS certificate.", section="vault"),
    Setting(
        "vault_skip_verify",
        "VAULT_SKIP_VERIFY",
        "Do not verify Vault's TLS certificate (testing only).",
        default="false",
        parse=parse_bool,
        is_bool=True,
        # 0.1.0's --help showed `--vault-skip-verify VAULT_SKIP_VERIFY`: a value still works.
        switch_takes_value=True,
        section="vault",
    ),
    Setting(
        "vault_path",
        "TOKENSIDECAR_VAULT_PATH",
        "KV secret holding the token, as <mount>/<path> (e.g. secret/hf/model-a).",
        section="vault",
    ),
    Setting(
        "vault_kv_version",
        "TOKENSIDECAR_VAULT_KV_VERSION",
        "KV secrets engine version of the mount.",
        default="2",
        choices=("1", "2"),
        parse=int,
        section="vault",
    ),
    Setting(
        "vault_auth",
        "TOKENSIDECAR_VAULT_AUTH",
        "How to log in to Vault: kubernetes (role + service-account JWT), jwt, approle, "
        "or token (VAULT_TOKEN or --vault-token-file).",
        default="kubernetes",
        choices=VAULT_AUTH_METHODS,
        section="vault",
    ),
    Setting("vault_role", "TOKENSIDECAR_VAULT_ROLE", "Vault role for kubernetes/jwt auth.", section="vault"),
    Setting(
        "vault_auth_mount",
        "TOKENSIDECAR_VAULT_AUTH_MOUNT",
        "Mount path of the auth method (default: the method's name).",
        section="vault",
    ),
    Setting(
        "vault_jwt_file",
        "TOKENSIDECAR_VAULT_JWT_FILE",
        "JWT presented for kubernetes/jwt auth (read again at each login: kubelet rotates it).",
        default=SA_TOKEN_FILE,
        section="vault",
    ),
    Setting(
        "vault_role_id_file", "TOKENSIDECAR_VAULT_ROLE_ID_FILE", "AppRole role_id file.", section="vault"
    ),
    Setting(
        "vault_secret_id_file",
        "TOKENSIDECAR_VAULT_SECRET_ID_FILE",
        "AppRole secret_id file.",
        section="vault",
    ),
)

KUBERNETES_SETTINGS = register(
    Setting(
        "secret_name",
        "TOKENSIDECAR_SECRET_NAME",
        "Kubernetes Secret holding the token.",
        section="kubernetes",
    ),
    Setting(
        "secret_namespace",
        "TOKENSIDECAR_SECRET_NAMESPACE",
        "Namespace of the Secret (default: the pod's own namespace).",
        section="kubernetes",
    ),
    Setting(
        "kubeconfig",
        "KUBECONFIG",
        "Kubeconfig file for running outside a cluster (default: in-cluster config).",
        section="kubernetes",
    ),
)

OIDC_SETTINGS = register(
    Setting(
        "oidc_resource",
        "TOKENSIDECAR_OIDC_RESOURCE",
        "Resource requested in the Hugging Face token exchange (RFC 8693 'resource').",
        section="hub",
    ),
    Setting(
        "oidc_token_file",
        "TOKENSIDECAR_OIDC_TOKEN_FILE",
        "Projected service-account token used as the exchange's id_token subject "
        "(read again at each exchange: kubelet rotates it).",
        section="hub",
    ),
)

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
    return (
        COMMON_SETTINGS
        + SIDECAR_SETTINGS
        + HUB_SETTINGS
        + VAULT_SETTINGS
        + KUBERNETES_SETTINGS
        + OIDC_SETTINGS
    )

"""Settings of ``tokensidecar rotate``: where a fresh token comes from and where it goes.

The job reuses the sidecar's names wherever the meaning is the same (docs/rotation.md): the
*target* is described by the settings a sidecar reads from (``TOKENSIDECAR_SECRET_NAME``,
``TOKENSIDECAR_VAULT_PATH``, ``TOKENSIDECAR_KEY``), so one ConfigMap can feed both. Only
what is new to minting lives here, and a Vault *issuer* path gets its own name because it
is never the path the sidecars read. This module is imported by ``--help``, so it stays
light: no clients, only declarations and parsers.
"""

from __future__ import annotations

import json
import re

from tokensidecar.config import (
    COMMON_SETTINGS,
    HUB_SETTINGS,
    KUBERNETES_SETTINGS,
    OIDC_SETTINGS,
    VAULT_SETTINGS,
    Setting,
    parse_bool,
    parse_duration,
    parse_positive_duration,
    register,
)

__all__ = ["ISSUERS", "ROTATE_SETTINGS", "SETTINGS", "TARGETS", "parse_argv", "parse_env_names"]

ISSUERS = ("oidc-exchange", "enterprise-exchange", "vault", "command")
TARGETS = ("kubernetes-secret", "vault")


def parse_argv(text: str) -> tuple[str, ...]:
    """A JSON list of strings (``["mint-hf-token", "--org", "acme"]``): run without a shell,
    so no quoting rules and no injection through the value."""
    try:
        argv = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError('must be a JSON list of strings, e.g. ["mint-hf-token", "--org", "acme"]') from None
    if not isinstance(argv, list) or not argv or not all(isinstance(arg, str) for arg in argv):
        raise ValueError('must be a non-empty JSON list of strings, e.g. ["mint-hf-token"]')
    if not argv[0]:
        raise ValueError("the program name (first element) is empty")
    return tuple(argv)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\*?")


def parse_env_names(text: str) -> tuple[str, ...]:
    """Comma-separated environment variable names (``NAME`` or ``PREFIX*``): names, never
    values, so the setting itself holds no secret."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"{name[:40]!r} is not an environment variable name (NAME or PREFIX*)")
    return names


ROTATE_SETTINGS = register(
    Setting(
        "issuer",
        "TOKENSIDECAR_ISSUER",
        "Where a fresh token comes from: oidc-exchange (Trusted Publishers, the job's projected "
        "service-account token as subject), enterprise-exchange (Enterprise token exchange with the "
        "org's OAuth app), vault (copy from --issuer-vault-path), or command (run --issuer-command).",
        choices=ISSUERS,
        section="rotate",
    ),
    Setting(
        "target",
        "TOKENSIDECAR_TARGET",
        "Where the token is stored for the sidecars: kubernetes-secret (--secret-name) or vault "
        "(KV v2 at --vault-path).",
        default="kubernetes-secret",
        choices=TARGETS,
        section="rotate",
    ),
    Setting(
        "issuer_command",
        "TOKENSIDECAR_ISSUER_COMMAND",
        "Program for --issuer=command, as a JSON list (no shell). It prints the token on stdout, or "
        'a JSON object {"token", "expires_at" | "expires_in"}; non-zero exit or no output fails.',
        parse=parse_argv,
        section="rotate",
    ),
    Setting(
        "issuer_command_env",
        "TOKENSIDECAR_ISSUER_COMMAND_ENV",
        "Environment variables passed to --issuer-command, comma-separated (NAME or PREFIX*). The "
        "command otherwise gets only PATH, HOME, LANG, LANGUAGE, LC_ALL, LC_CTYPE, TZ, SSL_CERT_FILE, "
        "SSL_CERT_DIR, REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE: not the job's credentials (VAULT_TOKEN, "
        "TOKENSIDECAR_*) nor proxies (name HTTPS_PROXY, NO_PROXY here if it needs them).",
        default="",
        parse=parse_env_names,
        metavar="NAMES",
        section="rotate",
    ),
    Setting(
        "issuer_command_mints",
        "TOKENSIDECAR_ISSUER_COMMAND_MINTS",
        "The command mints a new credential on every run, so a token the job does not store (dry run, "
        "a concurrent run rotated first, a failed write) is revoked instead of left to expire. Leave it "
        "off when the command prints a token that something else keeps using.",
        default="false",
        parse=parse_bool,
        is_bool=True,
        section="rotate",
    ),
    Setting(
        "issuer_timeout",
        "TOKENSIDECAR_ISSUER_TIMEOUT",
        "How long the issuer may take (the command and every process it started are killed after it).",
        default="60s",
        parse=parse_positive_duration,
        section="rotate",
    ),
    Setting(
        "issuer_vault_path",
        "TOKENSIDECAR_ISSUER_VAULT_PATH",
        "KV secret (<mount>/<path>) copied by --issuer=vault; never the --vault-path the sidecars read.",
        section="rotate",
    ),
    Setting(
        "issuer_vault_key",
        "TOKENSIDECAR_ISSUER_VAULT_KEY",
        "Key of the token inside --issuer-vault-path.",
        default="token",
        section="rotate",
    ),
    Setting(
        "enterprise_client_id_file",
        "TOKENSIDECAR_ENTERPRISE_CLIENT_ID_FILE",
        "File holding the org OAuth app's client_id (--issuer=enterprise-exchange).",
        section="rotate",
    ),
    Setting(
        "enterprise_client_secret_file",
        "TOKENSIDECAR_ENTERPRISE_CLIENT_SECRET_FILE",
        "File holding the org OAuth app's client_secret (--issuer=enterprise-exchange).",
        section="rotate",
    ),
    Setting(
        "enterprise_subject",
        "TOKENSIDECAR_ENTERPRISE_SUBJECT",
        "Member or service identity (email) the Enterprise exchange issues the token for.",
        section="rotate",
    ),
    Setting(
        "enterprise_scope",
        "TOKENSIDECAR_ENTERPRISE_SCOPE",
        "OAuth scopes asked of the Enterprise exchange, space-separated (e.g. 'read-repos'); "
        "unset: the org app's scopes. The granted scopes are what --verify=scope judges.",
        section="rotate",
    ),
    Setting(
        "requested_lifetime",
        "TOKENSIDECAR_REQUESTED_LIFETIME",
        "Removed: the Hub documents no lifetime parameter for token exchanges (the org OAuth app's "
        "token duration decides, 8h by default). Setting it is an error.",
        parse=parse_positive_duration,
        section="rotate",
    ),
    Setting(
        "revoke_after",
        "TOKENSIDECAR_REVOKE_AFTER",
        "Overlap: revoke the token kept under 'previous' once it was rotated out this long ago "
        "(POST {HF_ENDPOINT}/api/credentials/revoke). Unset: never revoke a token that was stored "
        "(each one dropped from 'previous' is logged as left to expire).",
        parse=parse_duration,
        section="rotate",
    ),
    Setting(
        "min_remaining",
        "TOKENSIDECAR_MIN_REMAINING",
        "Skip (exit 0) while the stored token has more than this left, so the CronJob can run "
        "often and cheaply. Unset: always rotate.",
        parse=parse_duration,
        section="rotate",
    ),
    Setting(
        "dry_run",
        "TOKENSIDECAR_DRY_RUN",
        "Mint and verify, but store nothing and revoke nothing that is stored; print the fingerprints "
        "that would change. The token minted to check the issuer is revoked again (oidc-exchange, "
        "enterprise-exchange, or a command with TOKENSIDECAR_ISSUER_COMMAND_MINTS).",
        default="false",
        parse=parse_bool,
        is_bool=True,
        section="rotate",
    ),
    Setting(
        "metrics_file",
        "TOKENSIDECAR_METRICS_FILE",
        "Write the job's outcome here in node-exporter textfile format (path ending in .prom).",
        section="rotate",
    ),
)

SETTINGS: tuple[Setting, ...] = (
    COMMON_SETTINGS + ROTATE_SETTINGS + HUB_SETTINGS + VAULT_SETTINGS + KUBERNETES_SETTINGS + OIDC_SETTINGS
)

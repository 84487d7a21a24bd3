"""Issuers: where the rotation job gets a fresh token.

Each issuer answers one question — "give me a new token and what you know of its
expiry" — so the job's order of work (mint, validate, verify, store, revoke) is the same
whatever mints. The Hub exchanges and the Vault read are not implemented here: they reuse
the one Hub client (:mod:`tokensidecar.hub`) and the one Vault session
(:mod:`tokensidecar.vault`) the sidecar uses, imported only when chosen. The ``command``
issuer is the escape hatch for organisations whose issuance lives elsewhere: it runs a
program from an argv list (never a shell), treats a non-zero exit or empty stdout as a
failure, and logs the program's stderr through the redactor.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from tokensidecar.config import ConfigError
from tokensidecar.redact import remember, safe_error
from tokensidecar.token import InvalidTime, Token, parse_lifetime, parse_time, utcnow

if TYPE_CHECKING:
    from tokensidecar.config import Config
    from tokensidecar.hub import ExchangedToken
    from tokensidecar.vault import KvPath, VaultSession

__all__ = [
    "CommandIssuer",
    "EnterpriseExchangeIssuer",
    "Issuer",
    "IssuerError",
    "OidcExchangeIssuer",
    "VaultIssuer",
    "build_issuer",
    "read_secret_file",
]

log = logging.getLogger(__name__)

# A program that prints more than this is not printing a token; stop reading instead of
# buffering whatever it emits.
_MAX_STDOUT_BYTES = 64 * 1024
_MAX_STDERR_LINES = 50


class IssuerError(Exception):
    """The issuer could not deliver a token. The message is redacted and user-facing."""


class Issuer(abc.ABC):
    """Obtain one fresh token."""

    kind: ClassVar[str]

    @abc.abstractmethod
    async def issue(self) -> Token:
        """Return a new token (not yet validated or verified), or raise :class:`IssuerError`."""

    async def aclose(self) -> None:
        """Release connections and credentials (e.g. revoke a Vault login token)."""


def read_secret_file(path: str, *, setting: str) -> str:
    """Read a credential from a file and register it with the redactor before anyone sees it."""
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise IssuerError(f"cannot read {setting} ({path}): {exc.strerror or safe_error(exc)}") from None
    remember(value)
    if not value:
        raise IssuerError(f"{setting} ({path}) is empty")
    return value


class CommandIssuer(Issuer):
    """Run a program that prints a token.

    stdout is the token, or a JSON object ``{"token": ..., "expires_at": RFC 3339 |
    "expires_in": seconds}`` for programs that know the lifetime. Everything the program
    prints is registered as a secret before its stderr is logged, so a program that echoes
    the token to stderr by mistake does not leak it.
    """

    kind = "command"

    def __init__(self, *, argv: tuple[str, ...], timeout: float) -> None:
        self.argv = argv
        self.timeout = timeout

    @classmethod
    def from_config(cls, config: Config) -> CommandIssuer:
        argv: tuple[str, ...] = config.require("issuer_command", when="--issuer=command")
        return cls(argv=argv, timeout=config.issuer_timeout)

    async def issue(self) -> Token:
        program = self.argv[0]
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise IssuerError(f"cannot run {program}: {exc.strerror or safe_error(exc)}") from None
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=self.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise IssuerError(f"{program} did not finish within {self.timeout:g}s and was killed") from None
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

        output = stdout[:_MAX_STDOUT_BYTES].decode("utf-8", "replace")
        # Register before logging stderr: a program may echo its token there.
        remember(output)
        remember(output.strip())
        token_text, expires_at = self._parse_output(output)
        remember(token_text)
        self._log_stderr(program=program, stderr=stderr)

        if process.returncode != 0:
            raise IssuerError(f"{program} exited with status {process.returncode}")
        if len(stdout) > _MAX_STDOUT_BYTES:
            raise IssuerError(f"{program} printed more than {_MAX_STDOUT_BYTES} bytes; expected a token")
        if not token_text.strip():
            raise IssuerError(f"{program} printed no token")
        return Token(value=token_text.strip(), source=self.kind, expires_at=expires_at)

    @staticmethod
    def _parse_output(output: str) -> tuple[str, datetime | None]:
        stripped = output.strip()
        if not stripped.startswith("{"):
            return stripped, None
        try:
            document: Any = json.loads(stripped)
        except json.JSONDecodeError:
            raise IssuerError("the command printed something that starts like JSON but is not") from None
        if not isinstance(document, dict) or not isinstance(document.get("token"), str):
            raise IssuerError('the command printed a JSON object without a string "token"')
        token_text: str = document["token"]
        remember(token_text)
        expires_at: datetime | None = None
        try:
            if document.get("expires_at") is not None:
                expires_at = parse_time(str(document["expires_at"]))
            elif document.get("expires_in") is not None:
                lifetime = parse_lifetime(document["expires_in"])
                expires_at = utcnow() + timedelta(seconds=lifetime) if lifetime else None
        except InvalidTime as exc:
            raise IssuerError(f"the command printed an unusable expiry: {exc}") from None
        return token_text, expires_at

    @staticmethod
    def _log_stderr(*, program: str, stderr: bytes) -> None:
        lines = stderr.decode("utf-8", "replace").splitlines()
        for line in lines[:_MAX_STDERR_LINES]:
            if line.strip():
                # The log formatter redacts every known secret and token shape in the line.
                log.warning("issuer command stderr: %s", line.rstrip(), extra={"program": program})
        if len(lines) > _MAX_STDERR_LINES:
            log.warning(
                "issuer command stderr truncated",
                extra={"program": program, "lines_dropped": len(lines) - _MAX_STDERR_LINES},
            )


class OidcExchangeIssuer(Issuer):
    """Trusted Publishers: exchange the job's projected service-account token (audience =
    the Hub) for a short-lived ``hf_jwt_…`` token, through the sidecar's exchange client."""

    kind = "oidc-exchange"

    def __init__(self, *, endpoint: str, resource: str, subject_token_file: str) -> None:
        self.endpoint = endpoint
        self.resource = resource
        self.subject_token_file = subject_token_file

    @classmethod
    def from_config(cls, config: Config) -> OidcExchangeIssuer:
        when = "--issuer=oidc-exchange"
        return cls(
            endpoint=_hub_endpoint(config),
            resource=config.require("oidc_resource", when=when),
            subject_token_file=config.require("oidc_token_file", when=when),
        )

    async def issue(self) -> Token:
        from tokensidecar import hub
        from tokensidecar.verify import HubUnavailable

        # Read at every run: kubelet rotates the projected token.
        subject = read_secret_file(self.subject_token_file, setting="TOKENSIDECAR_OIDC_TOKEN_FILE")
        try:
            exchanged = await hub.exchange_id_token(
                endpoint=self.endpoint, subject_token=subject, resource=self.resource
            )
        except (hub.ExchangeRefused, HubUnavailable) as exc:
            raise IssuerError(str(exc)) from None
        except InvalidTime as exc:  # the answer's expires_in (hub.parse_lifetime)
            raise IssuerError(f"the Hub's token exchange answer has an unusable lifetime: {exc}") from None
        return _exchanged_token(exchanged, source=self.kind)


class EnterpriseExchangeIssuer(Issuer):
    """Enterprise token exchange: the org's OAuth app (client credentials from files) asks
    the Hub for an ``hf_oauth_…`` token acting as a member or service identity."""

    kind = "enterprise-exchange"

    def __init__(
        self,
        *,
        endpoint: str,
        client_id_file: str,
        client_secret_file: str,
        subject: str,
        requested_lifetime: float | None,
    ) -> None:
        self.endpoint = endpoint
        self.client_id_file = client_id_file
        self.client_secret_file = client_secret_file
        self.subject = subject
        self.requested_lifetime = requested_lifetime

    @classmethod
    def from_config(cls, config: Config) -> EnterpriseExchangeIssuer:
        when = "--issuer=enterprise-exchange"
        return cls(
            endpoint=_hub_endpoint(config),
            client_id_file=config.require("enterprise_client_id_file", when=when),
            client_secret_file=config.require("enterprise_client_secret_file", when=when),
            subject=config.require("enterprise_subject", when=when),
            requested_lifetime=config.requested_lifetime,
        )

    async def issue(self) -> Token:
        from tokensidecar import hub
        from tokensidecar.verify import HubUnavailable

        client_id = read_secret_file(self.client_id_file, setting="TOKENSIDECAR_ENTERPRISE_CLIENT_ID_FILE")
        client_secret = read_secret_file(
            self.client_secret_file, setting="TOKENSIDECAR_ENTERPRISE_CLIENT_SECRET_FILE"
        )
        try:
            exchanged = await hub.exchange_enterprise(
                endpoint=self.endpoint,
                client_id=client_id,
                client_secret=client_secret,
                subject=self.subject,
                requested_lifetime=self.requested_lifetime,
            )
        except (hub.ExchangeRefused, HubUnavailable) as exc:
            raise IssuerError(str(exc)) from None
        except InvalidTime as exc:  # the answer's expires_in (hub.parse_lifetime)
            raise IssuerError(f"the Hub's token exchange answer has an unusable lifetime: {exc}") from None
        return _exchanged_token(exchanged, source=self.kind)


class VaultIssuer(Issuer):
    """Copy the token another system keeps at a Vault KV path, with the sidecar's Vault
    session (same auth options, login token revoked when the job ends)."""

    kind = "vault"

    def __init__(self, *, session: VaultSession, path: KvPath, key: str, kv_version: int) -> None:
        self.session = session
        self.path = path
        self.key = key
        self.kv_version = kv_version

    @classmethod
    def from_config(cls, config: Config) -> VaultIssuer:
        from tokensidecar.vault import KvPath, VaultSession

        raw_path = config.require("issuer_vault_path", when="--issuer=vault")
        try:
            path = KvPath.parse(raw_path)
        except ValueError as exc:
            raise ConfigError("TOKENSIDECAR_ISSUER_VAULT_PATH", str(exc)) from None
        if config.target == "vault" and config.vault_path and KvPath.parse(config.vault_path) == path:
            raise ConfigError(
                "TOKENSIDECAR_ISSUER_VAULT_PATH", "is the same secret as TOKENSIDECAR_VAULT_PATH (the target)"
            )
        return cls(
            session=VaultSession.from_config(config),
            path=path,
            key=config.issuer_vault_key,
            kv_version=config.vault_kv_version,
        )

    async def issue(self) -> Token:
        from tokensidecar.vault import VaultError

        try:
            secret = await self.session.read_kv(self.path, kv_version=self.kv_version)
        except VaultError as exc:
            raise IssuerError(str(exc)) from None
        value = secret.data.get(self.key)
        if not isinstance(value, str) or not value.strip():
            raise IssuerError(f"{self.path} has no string key {self.key!r}")
        try:
            expires_at = parse_time(secret.custom_metadata.get("expires_at"))
        except InvalidTime as exc:
            log.warning("ignoring the issuer path's custom_metadata.expires_at", extra={"reason": str(exc)})
            expires_at = None
        return Token(
            value=value,
            source=self.kind,
            version=str(secret.version) if secret.version is not None else None,
            expires_at=expires_at,
        )

    async def aclose(self) -> None:
        await self.session.aclose()


def _hub_endpoint(config: Config) -> str:
    endpoint = str(config.hf_endpoint or "").strip().rstrip("/")
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError("HF_ENDPOINT", f"{endpoint!r} is not an http(s) URL")
    return endpoint


def _exchanged_token(exchanged: ExchangedToken, *, source: str) -> Token:
    expires_at = utcnow() + timedelta(seconds=exchanged.expires_in) if exchanged.expires_in else None
    return Token(value=exchanged.value, source=source, expires_at=expires_at)


_ISSUERS: dict[str, type[CommandIssuer | OidcExchangeIssuer | EnterpriseExchangeIssuer | VaultIssuer]] = {
    "command": CommandIssuer,
    "oidc-exchange": OidcExchangeIssuer,
    "enterprise-exchange": EnterpriseExchangeIssuer,
    "vault": VaultIssuer,
}


def build_issuer(config: Config) -> Issuer:
    """Check the chosen issuer's settings and build it (raises ConfigError)."""
    issuer = config.require("issuer", when="running rotate")
    return _ISSUERS[issuer].from_config(config)

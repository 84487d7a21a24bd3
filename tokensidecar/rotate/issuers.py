"""Issuers: where the rotation job gets a fresh token.

Each issuer answers one question — "give me a new token and what you know of its
expiry" — so the job's order of work (mint, validate, verify, store, revoke) is the same
whatever mints. The Hub exchanges and the Vault read are not implemented here: they reuse
the one Hub client (:mod:`tokensidecar.backends.hub`) and the one Vault session
(:mod:`tokensidecar.backends.vault`) the sidecar uses, imported only when chosen. The ``command``
issuer is the escape hatch for organisations whose issuance lives elsewhere: it runs a
program from an argv list (never a shell), treats a non-zero exit or empty stdout as a
failure, and logs the program's stderr through the redactor.

The program runs in a session (process group) of its own, with a minimal environment:
:data:`BASE_ENVIRONMENT` (``PATH``, ``HOME``, locale, ``TZ``, CA-bundle variables) plus the
names listed in ``TOKENSIDECAR_ISSUER_COMMAND_ENV``; never the job's own credentials
(``VAULT_TOKEN``, ``TOKENSIDECAR_*``) unless named there. When the program exits, whatever
it left running in its group is killed, so a background process that still holds stdout
cannot hang the job; on timeout the whole group is killed, not just the program.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from tokensidecar.redact import remember, safe_error
from tokensidecar.rotate.settings import (
    CommandIssuerSettings,
    EnterpriseExchangeIssuerSettings,
    IssuerSettings,
    VaultIssuerSettings,
)
from tokensidecar.sources.settings import OidcExchangeSettings
from tokensidecar.token import InvalidTime, Token, parse_lifetime, parse_time, utcnow

if TYPE_CHECKING:
    from tokensidecar.backends.hub import ExchangedToken
    from tokensidecar.backends.vault import KvPath, VaultSession

__all__ = [
    "BASE_ENVIRONMENT",
    "CommandIssuer",
    "EnterpriseExchangeIssuer",
    "Issuer",
    "IssuerError",
    "OidcExchangeIssuer",
    "VaultIssuer",
    "build_issuer",
    "command_environment",
    "read_secret_file",
]

log = logging.getLogger(__name__)

# A program that prints more than this is not printing a token; stop reading instead of
# buffering whatever it emits.
_MAX_STDOUT_BYTES = 64 * 1024
_MAX_STDERR_BYTES = 64 * 1024
_MAX_STDERR_LINES = 50
# After the program exits and its group is killed, how long to wait for the pipes to close.
# Only something that left the group (setsid) can hold them longer; it is not waited for.
_DRAIN_SECONDS = 2.0
_POLL_SECONDS = 0.05

#: What the command's environment holds without asking: enough to find programs, a home,
#: the locale and time zone, and where the CA certificates are. Anything else (proxies,
#: cloud credentials, VAULT_TOKEN) only when named in TOKENSIDECAR_ISSUER_COMMAND_ENV.
BASE_ENVIRONMENT = (
    "PATH",
    "HOME",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
)
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def command_environment(
    passed: tuple[str, ...] = (), *, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment the command runs with: :data:`BASE_ENVIRONMENT` and the ``passed``
    names (``NAME``, or ``PREFIX*`` for every variable starting with ``PREFIX``), taken
    from this process's environment when set there."""
    source = os.environ if environ is None else environ
    exact = set(BASE_ENVIRONMENT) | {name for name in passed if not name.endswith("*")}
    prefixes = tuple(name[:-1] for name in passed if name.endswith("*"))
    env = {
        name: value
        for name, value in source.items()
        if name in exact or (prefixes and name.startswith(prefixes))
    }
    env.setdefault("PATH", _DEFAULT_PATH)
    return env


class IssuerError(Exception):
    """The issuer could not deliver a token. The message is redacted and user-facing."""


class Issuer(abc.ABC):
    """Obtain one fresh token."""

    kind: ClassVar[str]
    #: Whether each token is a new credential minted for this run, which the job may revoke
    #: when it does not store it (a dry run, a concurrent run that rotated first, a failed
    #: write). False for issuers that copy a token someone else holds and still uses.
    mints: bool = False

    @abc.abstractmethod
    async def issue(self) -> Token:
        """Return a new token (not yet validated or verified), or raise :class:`IssuerError`."""

    async def aclose(self) -> None:
        """Release connections and credentials (e.g. revoke a Vault login token)."""


def read_secret_file(path: str, *, setting: str) -> str:
    """Read a credential from a file and register it with the redactor before anyone sees it."""
    from tokensidecar.backends.credential_file import CredentialUnavailable, read_credential

    try:
        return read_credential(path, setting=setting)
    except CredentialUnavailable as exc:
        raise IssuerError(str(exc)) from None


class CommandIssuer(Issuer):
    """Run a program that prints a token.

    stdout is the token, or a JSON object ``{"token": ..., "expires_at": RFC 3339 |
    "expires_in": seconds}`` for programs that know the lifetime. Everything the program
    prints is registered as a secret before its stderr is logged, so a program that echoes
    the token to stderr by mistake does not leak it.
    """

    kind = "command"

    def __init__(
        self, *, argv: tuple[str, ...], timeout: float, pass_env: tuple[str, ...] = (), mints: bool = False
    ) -> None:
        self.argv = argv
        self.timeout = timeout
        self.pass_env = pass_env
        # The program may mint (mint-hf-token) or copy a token held elsewhere; only the
        # operator knows, and revoking a copied token would cut off everyone using it.
        self.mints = mints

    @classmethod
    def from_settings(cls, settings: CommandIssuerSettings) -> CommandIssuer:
        return cls(
            argv=settings.argv, timeout=settings.timeout, pass_env=settings.pass_env, mints=settings.mints
        )

    async def issue(self) -> Token:
        program = self.argv[0]
        run = await asyncio.to_thread(
            _run_command, self.argv, env=command_environment(self.pass_env), timeout=self.timeout
        )
        if run.error is not None:
            raise IssuerError(f"cannot run {program}: {run.error}")
        output = run.stdout[:_MAX_STDOUT_BYTES].decode("utf-8", "replace")
        # Register before logging stderr: a program may echo its token there.
        remember(output)
        remember(output.strip())
        if run.timed_out:
            self._log_stderr(program=program, stderr=run.stderr)
            raise IssuerError(f"{program} did not finish within {self.timeout:g}s and was killed")
        if run.overflowed:
            self._log_stderr(program=program, stderr=run.stderr)
            raise IssuerError(f"{program} printed more than {_MAX_STDOUT_BYTES} bytes; expected a token")
        token_text, expires_at = self._parse_output(output)
        remember(token_text)
        self._log_stderr(program=program, stderr=run.stderr)
        if run.leftovers:
            log.warning(
                "the issuer command left processes running; they were killed", extra={"program": program}
            )

        if run.returncode != 0:
            raise IssuerError(f"{program} exited with status {run.returncode}")
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


@dataclass
class _CommandRun:
    returncode: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False
    overflowed: bool = False
    #: Members of the program's group were still running after it exited.
    leftovers: bool = False
    error: str | None = None


def _exited(pid: int) -> bool:
    """Whether ``pid`` has exited, without reaping it: while it is a zombie its pid (which
    is also its process-group id) cannot be reused, so killing the group stays safe."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _others_in_group(pgid: int) -> bool:
    """Whether a process other than the (exited) leader is in group ``pgid``, from
    ``/proc/<pid>/stat`` (field 5 is the process group; kill(2) cannot tell, since a
    zombie leader still counts as a member)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == pgid:
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(pgid).encode():
            return True
    return False


def _kill_group(pgid: int) -> None:
    """SIGKILL every process in the group (the program and whatever it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass
class _Program:
    """A started program and what has been seen of it: the state the read loop and the
    wait loop share."""

    process: subprocess.Popen[bytes]
    run: _CommandRun
    deadline: float
    out_fd: int
    err_fd: int
    exited: bool = False

    def seen_exiting(self) -> bool:
        """Whether the program has exited just now: the first time it is seen to, record
        whether it left processes in its group and kill them (True only that once)."""
        if self.exited or not _exited(self.process.pid):
            return False
        self.exited = True
        self.run.leftovers = _others_in_group(self.process.pid)
        _kill_group(self.process.pid)
        return True

    def time_out(self) -> None:
        self.run.timed_out = True
        _kill_group(self.process.pid)


def _run_command(argv: tuple[str, ...], *, env: dict[str, str], timeout: float) -> _CommandRun:
    """Run ``argv`` in its own session; read stdout and stderr until the program exits and
    its pipes close, killing its whole process group on timeout, on too much output, and
    once it has exited (to end what it left behind). Blocking: run it in a thread.

    asyncio's subprocess ``communicate()`` and (on Python 3.11) ``wait()`` both wait for
    the pipes to close, which a background grandchild can postpone forever; here the
    program's exit is observed directly (``waitid``) and the pipes are polled.
    """
    run = _CommandRun()
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        run.error = exc.strerror or safe_error(exc)
        return run
    assert process.stdout is not None and process.stderr is not None
    program = _Program(
        process=process,
        run=run,
        deadline=time.monotonic() + timeout,
        out_fd=process.stdout.fileno(),
        err_fd=process.stderr.fileno(),
    )
    try:
        stdout, stderr = _read_output(program)
        _wait_for_exit(program)
    finally:
        if not program.exited and not _exited(process.pid):
            _kill_group(process.pid)  # an exception above: never leave the program running
        run.returncode = process.wait()
        process.stdout.close()
        process.stderr.close()
    run.stdout, run.stderr = stdout, stderr
    return run


def _read_output(program: _Program) -> tuple[bytes, bytes]:
    """(stdout, stderr), read until both pipes close, the deadline passes, or the drain
    time after the program's exit runs out."""
    buffers = {program.out_fd: bytearray(), program.err_fd: bytearray()}
    drain_until: float | None = None
    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            now = time.monotonic()
            if program.seen_exiting():
                drain_until = now + _DRAIN_SECONDS
            if not program.exited and now >= program.deadline:
                program.time_out()
                break
            if drain_until is not None and now >= drain_until:
                break  # something outside the group holds a pipe; do not wait for it
            _read_ready(selector, program=program, buffers=buffers)
    return bytes(buffers[program.out_fd]), bytes(buffers[program.err_fd])


def _read_ready(
    selector: selectors.BaseSelector, *, program: _Program, buffers: dict[int, bytearray]
) -> None:
    """Read what the pipes hold within one poll interval, keeping at most each pipe's
    limit; more stdout than a token can be kills the program's group."""
    limits = {program.out_fd: _MAX_STDOUT_BYTES + 1, program.err_fd: _MAX_STDERR_BYTES}
    for key, _ in selector.select(timeout=_POLL_SECONDS):
        fd = int(key.fd)
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            selector.unregister(fd)
            continue
        buffer = buffers[fd]
        buffer += chunk[: max(0, limits[fd] - len(buffer))]
        if fd == program.out_fd and len(buffer) > _MAX_STDOUT_BYTES and not program.run.overflowed:
            program.run.overflowed = True
            _kill_group(program.process.pid)


def _wait_for_exit(program: _Program) -> None:
    """Both pipes closed: the program may still be running (it closed them itself), so wait
    for its exit or its deadline."""
    while not program.exited and not program.run.timed_out:
        if program.seen_exiting():
            break
        if time.monotonic() >= program.deadline:
            program.time_out()
        else:
            time.sleep(_POLL_SECONDS)


class _HubExchangeIssuer(Issuer):
    """An issuer whose token is the answer to a Hub token exchange (:mod:`tokensidecar.backends.hub`)."""

    mints = True

    async def _exchanged(self, exchange: Awaitable[ExchangedToken]) -> Token:
        """The token ``exchange`` returns; the Hub's refusals and outages as :class:`IssuerError`."""
        from tokensidecar.backends import hub
        from tokensidecar.backends.hub_errors import HubUnavailable

        try:
            exchanged = await exchange
        except (hub.ExchangeRefused, hub.InvalidSubjectToken, HubUnavailable) as exc:
            raise IssuerError(str(exc)) from None
        except InvalidTime as exc:  # the answer's expires_in (hub.parse_lifetime)
            raise IssuerError(f"the Hub's token exchange answer has an unusable lifetime: {exc}") from None
        return exchanged.to_token(source=self.kind, issued_at=utcnow())


class OidcExchangeIssuer(_HubExchangeIssuer):
    """Trusted Publishers: exchange an OIDC id_token (the job's projected service-account
    token, or a CI provider's — GitHub Actions, GitLab CI — written to the file) whose
    ``aud`` is ``https://huggingface.co`` for a 60-minute token, through the sidecar's
    exchange client. A repository resource gives ``hf_jwt_…`` (write access to that one
    repository); a username gives ``hf_oauth_…`` (read-only, ``gated-repos`` scope only:
    it cannot read private repositories)."""

    kind = "oidc-exchange"

    def __init__(self, *, endpoint: str, resource: str, subject_token_file: str) -> None:
        self.endpoint = endpoint
        self.resource = resource
        self.subject_token_file = subject_token_file

    @classmethod
    def from_settings(cls, settings: OidcExchangeSettings) -> OidcExchangeIssuer:
        return cls(
            endpoint=settings.hub.endpoint,
            resource=settings.resource,
            subject_token_file=settings.subject_token_file,
        )

    async def issue(self) -> Token:
        from tokensidecar.backends import hub

        # Read at every run: kubelet rotates the projected token.
        subject = read_secret_file(self.subject_token_file, setting="TOKENSIDECAR_OIDC_TOKEN_FILE")
        return await self._exchanged(
            hub.exchange_id_token(endpoint=self.endpoint, subject_token=subject, resource=self.resource)
        )


class EnterpriseExchangeIssuer(_HubExchangeIssuer):
    """Enterprise token exchange: the org's OAuth app (client credentials from files) asks
    the Hub for an ``hf_oauth_…`` token for an organisation member, named by e-mail (the
    only documented subject type: a service identity needs a member account with an
    e-mail). The token reaches only the organisation's resources; its lifetime is the
    app's (8 h by default); ``TOKENSIDECAR_ENTERPRISE_SCOPE`` narrows the app's scopes."""

    kind = "enterprise-exchange"

    def __init__(
        self,
        *,
        endpoint: str,
        client_id_file: str,
        client_secret_file: str,
        subject: str,
        scope: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.client_id_file = client_id_file
        self.client_secret_file = client_secret_file
        self.subject = subject
        self.scope = scope

    @classmethod
    def from_settings(cls, settings: EnterpriseExchangeIssuerSettings) -> EnterpriseExchangeIssuer:
        return cls(
            endpoint=settings.hub.endpoint,
            client_id_file=settings.client_id_file,
            client_secret_file=settings.client_secret_file,
            subject=settings.subject,
            scope=settings.scope,
        )

    async def issue(self) -> Token:
        from tokensidecar.backends import hub

        client_id = read_secret_file(self.client_id_file, setting="TOKENSIDECAR_ENTERPRISE_CLIENT_ID_FILE")
        client_secret = read_secret_file(
            self.client_secret_file, setting="TOKENSIDECAR_ENTERPRISE_CLIENT_SECRET_FILE"
        )
        return await self._exchanged(
            hub.exchange_enterprise(
                endpoint=self.endpoint,
                client_id=client_id,
                client_secret=client_secret,
                subject=self.subject,
                scope=self.scope,
            )
        )


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
    def from_settings(cls, settings: VaultIssuerSettings) -> VaultIssuer:
        from tokensidecar.backends.vault import VaultSession

        return cls(
            session=VaultSession.from_settings(settings.vault),
            path=settings.path,
            key=settings.key,
            kv_version=settings.kv_version,
        )

    async def issue(self) -> Token:
        from tokensidecar.backends.vault import METADATA_EXPIRES_AT, VaultError

        try:
            secret = await self.session.read_kv(self.path, kv_version=self.kv_version)
        except VaultError as exc:
            raise IssuerError(str(exc)) from None
        value = secret.data.get(self.key)
        if not isinstance(value, str) or not value.strip():
            raise IssuerError(f"{self.path} has no string key {self.key!r}")
        try:
            expires_at = parse_time(secret.custom_metadata.get(METADATA_EXPIRES_AT))
        except InvalidTime as exc:
            log.warning("ignoring the issuer path's custom_metadata.expires_at", extra={"reason": str(exc)})
            expires_at = None
        return Token(
            value=value,
            source=self.kind,
            version=secret.token_version,
            expires_at=expires_at,
        )

    async def aclose(self) -> None:
        await self.session.aclose()


def build_issuer(settings: IssuerSettings) -> Issuer:
    """Build the issuer that resolved ``settings`` describe (:mod:`tokensidecar.rotate.settings`)."""
    if isinstance(settings, CommandIssuerSettings):
        return CommandIssuer.from_settings(settings)
    if isinstance(settings, OidcExchangeSettings):
        return OidcExchangeIssuer.from_settings(settings)
    if isinstance(settings, EnterpriseExchangeIssuerSettings):
        return EnterpriseExchangeIssuer.from_settings(settings)
    return VaultIssuer.from_settings(settings)

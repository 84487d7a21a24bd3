"""The command line: the door that wires the rooms together, and nothing more.

Each command names the module that declares its settings and the module that runs it.
Only the chosen command's modules are imported, so ``tokensidecar run --source vault``
never loads the Kubernetes client and ``--help`` stays fast. Every :class:`Setting`
becomes a flag and an environment variable; flags win (docs/configuration.md).

Misconfiguration ends the program with status 2 and a single line on stderr naming the
setting as the user gave it (the flag, or the environment variable) — never a traceback,
which could carry a value from the environment. Every line printed here goes through
:func:`tokensidecar.redact.redact`: a token pasted into the wrong setting is not echoed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from tokensidecar import __version__
from tokensidecar.config import DURATION_FORMS, Config, ConfigError, Setting, parse_bool, resolve
from tokensidecar.redact import redact, safe_error

__all__ = ["COMMANDS", "Command", "build_parser", "main"]

EXIT_CONFIG = 2


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    description: str
    settings_module: str  # module with a SETTINGS tuple (light: no heavy imports)
    entry: str  # "module:function" taking a Config, returning the exit code
    #: Settings of that module this command has no use for: not offered as flags, not read
    #: from the environment (an init container may share a sidecar's env), kept at their
    #: defaults so the wiring code can still read them.
    unused: frozenset[str] = frozenset()

    def all_settings(self) -> tuple[Setting, ...]:
        settings: tuple[Setting, ...] = importlib.import_module(self.settings_module).SETTINGS
        return settings

    def settings(self) -> tuple[Setting, ...]:
        """The settings this command takes: its flags, its environment, its reference table."""
        return tuple(setting for setting in self.all_settings() if setting.name not in self.unused)

    def resolve(self, flags: dict[str, Any]) -> Config:
        config = resolve(self.settings(), flags)
        unused = [setting for setting in self.all_settings() if setting.name in self.unused]
        defaults = resolve(unused, {}, {})
        return Config(
            values={**defaults.values, **config.values}, explicit=config.explicit, given_as=config.given_as
        )

    def entry_point(self) -> Callable[[Config], int]:
        module_name, _, function = self.entry.partition(":")
        entry: Callable[[Config], int] = getattr(importlib.import_module(module_name), function)
        return entry


COMMANDS = {
    command.name: command
    for command in (
        Command(
            "run",
            "the sidecar: fetch, verify, publish, keep refreshing until SIGTERM",
            "Fetch the Hugging Face token from the source, verify it at the Hub, publish it "
            "atomically to the token file, and keep it fresh until SIGTERM. Serves /healthz, "
            "/readyz, /metrics and /status. Failures keep the last good token published.",
            "tokensidecar.sidecar.settings",
            "tokensidecar.sidecar.main:main_run",
        ),
        Command(
            "once",
            "fetch, verify and publish once, then exit (init containers, debugging)",
            "Fetch, verify and publish the token once. Exit 0 when it is on disk, 1 with a "
            "one-line reason when it is not.",
            "tokensidecar.sidecar.settings",
            "tokensidecar.sidecar.main:main_once",
            # The refresh schedule and the probe port belong to `run`'s loop.
            unused=frozenset({"refresh_interval", "max_backoff", "listen"}),
        ),
        Command(
            "webhook",
            "the mutating admission webhook that injects the sidecar",
            "Serve the HTTPS mutating admission webhook that injects the tokensidecar "
            'sidecar into pods annotated tokensidecar.io/inject: "true".',
            "tokensidecar.webhook.settings",
            "tokensidecar.webhook.server:main",
        ),
        Command(
            "rotate",
            "the rotation job: mint or copy a fresh token, verify it, store it",
            "Obtain a fresh token upstream (token exchange, Vault, or a command), verify it at "
            "the Hub, and store it in the rotating Secret or Vault path, keeping the previous "
            "one for overlap and revoking what is past it.",
            "tokensidecar.rotate.settings",
            "tokensidecar.rotate.job:main",
        ),
        Command(
            "gateway",
            "the cluster's Hugging Face endpoint: authorize, cache, fetch upstream",
            "Serve a Hugging Face Hub-compatible endpoint for the cluster: authorize each "
            "workload by its Kubernetes service-account token against the policy, serve model "
            "files from the cache, and fetch what is missing from the upstream with credentials "
            "only the gateway holds.",
            "tokensidecar.gateway.settings",
            "tokensidecar.gateway.server:main",
        ),
        Command(
            "demo",
            "the whole flow on this machine: local OpenBao, Hub stand-in, sidecar, gateway",
            "Run the whole flow locally with embedded defaults: a local OpenBao dev server, a "
            "local Hugging Face Hub stand-in, the sidecar, live rotations and a private-model "
            "download through huggingface_hub after each; then the gateway, three predictor "
            "replicas downloading through it with service-account tokens, a denied service "
            "account and rotations of the gateway's upstream credential. No cluster, no "
            "internet. Cleans up everything it started.",
            "tokensidecar.demo.settings",
            "tokensidecar.demo.run:main",
        ),
    )
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line and exit 2, like bad settings."""

    def error(self, message: str) -> NoReturn:
        # "unrecognized arguments: hf_…" would echo a token typed in the wrong place.
        self.exit(EXIT_CONFIG, redact(f"error: {message} (see '{self.prog} --help')") + "\n")


class _Switch(argparse.Action):
    """``--x`` sets true, ``--no-x`` false; with ``takes_value``, ``--x=false`` works too."""

    def __init__(self, option_strings: list[str], dest: str, *, takes_value: bool = False, **kwargs: Any):
        negated = [f"--no-{flag[2:]}" for flag in option_strings if flag.startswith("--")]
        super().__init__(
            [*option_strings, *negated],
            dest,
            nargs="?" if takes_value else 0,
            metavar="true|false" if takes_value else None,
            **kwargs,
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        negated = bool(option_string and option_string.startswith("--no-"))
        if values in (None, []):
            setattr(namespace, self.dest, not negated)
            return
        if negated:
            parser.error(f"{option_string} takes no value")
        try:
            setattr(namespace, self.dest, parse_bool(str(values)))
        except ValueError as exc:
            parser.error(f"{option_string}: {exc}")

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a switch that takes a value as ``--x [true|false], --no-x``."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, _Switch) and action.nargs == "?":
            positive, *negated = action.option_strings
            return ", ".join([f"{positive} [{action.metavar}]", *negated])
        return super()._format_action_invocation(action)


def _describe(setting: Setting) -> str:
    parts = [setting.help]
    details = [] if setting.flag_only else [f"env {setting.env}"]
    if setting.choices:
        details.append("one of: " + ", ".join(setting.choices))
    if setting.default not in (None, ""):
        details.append(f"default: {setting.default}")
    if details:
        parts.append(f"[{'; '.join(details)}]")
    return " ".join(parts).replace("%", "%%")


def build_parser(command: Command) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"tokensidecar {command.name}",
        description=command.description,
        formatter_class=_HelpFormatter,
        epilog="Every flag can also be set by the environment variable shown; flags win. "
        f"Durations accept {DURATION_FORMS}.",
        # No prefix matching: "--vault-token X" must fail, not set --vault-token-file to X
        # (and a flag added later must not change what an existing abbreviation means).
        allow_abbrev=False,
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for setting in command.settings():
        if setting.env_only:
            continue
        group = groups.get(setting.section)
        if group is None:
            group = groups[setting.section] = parser.add_argument_group(f"{setting.section} settings")
        if setting.is_bool:
            group.add_argument(
                setting.cli_flag,
                dest=setting.name,
                action=_Switch,
                takes_value=setting.switch_takes_value,
                default=None,
                help=_describe(setting),
            )
        else:
            group.add_argument(
                setting.cli_flag,
                dest=setting.name,
                default=None,
                metavar=setting.metavar or setting.name.upper(),
                help=_describe(setting),
            )
    return parser


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {c.name:<9} {c.summary}" for c in COMMANDS.values())
    parser = _Parser(
        prog="tokensidecar",
        description="Keeps short-lived Hugging Face tokens fresh inside Kubernetes model-serving pods.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"commands:\n{lines}\n\nRun 'tokensidecar COMMAND --help' for the settings of a command.",
    )
    parser.add_argument("--version", action="version", version=f"tokensidecar {__version__}")
    parser.add_argument("command", nargs="?", choices=sorted(COMMANDS), help="the command to run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        parsed = _top_parser().parse_args(args)
        if parsed.command is None:
            _top_parser().print_help()
            return EXIT_CONFIG
    command = COMMANDS[args[0]]
    namespace = build_parser(command).parse_args(args[1:])
    config: Config | None = None
    try:
        config = command.resolve(vars(namespace))
        from tokensidecar import logs

        logs.configure(fmt=config.get("log_format", str), level=config.get("log_level", str))
        return command.entry_point()(config)
    except ConfigError as exc:
        print(redact(f"error: {_as_given(exc, command=command, config=config)}"), file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        logging.getLogger("tokensidecar").debug("fatal error", exc_info=True)
        print(redact(f"error: {_describe_os_error(exc, config=config)}"), file=sys.stderr)
        return 1
    except Exception as exc:
        # Last resort: one redacted line, no traceback (it could carry values).
        logging.getLogger("tokensidecar").debug("fatal error", exc_info=True)
        print(f"error: {safe_error(exc)}", file=sys.stderr)
        return 1


def _as_given(exc: ConfigError, *, command: Command, config: Config | None) -> str:
    """The error with its setting named the way the user gave it.

    The rooms validate their settings by their environment names
    (``TOKENSIDECAR_VAULT_PATH: ...``); when the value came from ``--vault-path``, that is
    the name the user typed and the one to show.
    """
    if config is None or not exc.setting:
        return str(exc)
    for setting in command.settings():
        if setting.env == exc.setting:
            return f"{config.label(setting.name)}: {exc.problem}"
    return str(exc)


def _describe_os_error(exc: OSError, *, config: Config | None) -> str:
    """One line for a file the program cannot use, naming the setting that chose the path.

    ``PermissionError: [Errno 13] Permission denied: '/var/run/tokensidecar'`` says neither
    which setting picked that path nor what to change; this says both.
    """
    reason = (exc.strerror or type(exc).__name__).lower()
    if exc.filename is None:
        return safe_error(exc)
    failed = pathlib.Path(os.fsdecode(exc.filename))
    if config is not None:
        for name, value in config.values.items():
            if not isinstance(value, str | pathlib.Path) or not str(value):
                continue
            chosen = pathlib.Path(value)
            if failed == chosen:
                return f"{config.label(name)}={chosen}: {reason}"
            if failed in chosen.parents and failed != pathlib.Path("."):
                return f"{config.label(name)}={chosen}: cannot use its directory {failed}: {reason}"
    return f"cannot use {failed}: {reason}"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

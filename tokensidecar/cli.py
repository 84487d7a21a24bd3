"""The command line: the door that wires the rooms together, and nothing more.

Each command names the module that declares its settings and the module that runs it.
Only the chosen command's modules are imported, so ``tokensidecar run --source vault``
never loads the Kubernetes client and ``--help`` stays fast. Every :class:`Setting`
becomes a flag and an environment variable; flags win (CONTRACT §1).

Misconfiguration ends the program with status 2 and a single line on stderr naming the
setting — never a traceback, which could carry a value from the environment.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from tokensidecar import __version__
from tokensidecar.config import Config, ConfigError, Setting, resolve
from tokensidecar.redact import safe_error

__all__ = ["COMMANDS", "Command", "build_parser", "main"]

EXIT_CONFIG = 2


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    description: str
    settings_module: str  # module with a SETTINGS tuple (light: no heavy imports)
    entry: str  # "module:function" taking a Config, returning the exit code

    def settings(self) -> tuple[Setting, ...]:
        settings: tuple[Setting, ...] = importlib.import_module(self.settings_module).SETTINGS
        return settings

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
            "tokensidecar.sidecar",
            "tokensidecar.sidecar:main_run",
        ),
        Command(
            "once",
            "fetch, verify and publish once, then exit (init containers, debugging)",
            "Fetch, verify and publish the token once. Exit 0 when it is on disk, 1 with a "
            "one-line reason when it is not.",
            "tokensidecar.sidecar",
            "tokensidecar.sidecar:main_once",
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
        self.exit(EXIT_CONFIG, f"error: {message} (see '{self.prog} --help')\n")


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
        epilog="Every flag can also be set by the environment variable shown; flags win. "
        "Durations accept 500ms, 30s, 5m, 1h, 1m30s or bare seconds.",
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
                action=argparse.BooleanOptionalAction,
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
    try:
        config = resolve(command.settings(), vars(namespace))
        from tokensidecar import logs

        logs.configure(fmt=config.log_format, level=config.log_level)
        return command.entry_point()(config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # Last resort: one redacted line, no traceback (it could carry values).
        logging.getLogger("tokensidecar").debug("fatal error", exc_info=True)
        print(f"error: {safe_error(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

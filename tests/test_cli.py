"""The command line as users meet it: ``--version``, ``--help``, one-line configuration errors
with exit status 2, and ``once`` with the file source (docs/configuration.md).

Most cases run ``cli.main([...])`` in-process (fast, stderr captured by capsys); a few run
the real ``python -m tokensidecar`` and the console script, to pin what a shell sees.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokensidecar import __version__, cli
from tokensidecar.redact import fingerprint

VERSION_LINE = re.compile(r"^tokensidecar \d+\.\d+\.\d+\n$")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No TOKENSIDECAR_/VAULT_/HF_ variable of the outer shell leaks into a case, and the
    root logger that cli.main() reconfigures is put back afterwards."""
    import os

    for name in list(os.environ):
        if name.startswith(("TOKENSIDECAR_", "VAULT_", "HF_")) or name == "KUBECONFIG":
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def tmp_path(shm_path: Path) -> Path:
    """Memory-backed like the sidecar's real token volume: on a disk-backed directory the
    publisher rightly warns (a log line on stderr), which is not what these cases are about."""
    return shm_path


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENSIDECAR_", "VAULT_", "HF_"))}
    return subprocess.run(
        [sys.executable, "-m", "tokensidecar", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# -- version and help ------------------------------------------------------------------


def test_version_prints_name_and_semver_and_exits_0() -> None:
    result = _run_cli("--version")
    assert result.returncode == 0
    assert VERSION_LINE.match(result.stdout), result.stdout
    assert result.stdout == f"tokensidecar {__version__}\n"


def test_console_script_is_the_same_program() -> None:
    script = Path(sys.executable).with_name("tokensidecar")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0
    assert result.stdout == f"tokensidecar {__version__}\n"


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for name in ("run", "once", "webhook", "rotate", "demo"):
        assert re.search(rf"^\s+{name}\s+\S", out, re.MULTILINE), name
    assert "--version" in out


def test_help_of_a_real_process_exits_0() -> None:
    result = _run_cli("run", "--help")
    assert result.returncode == 0
    assert "TOKENSIDECAR_TOKEN_FILE" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_help_shows_each_setting_as_flag_and_env(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())  # argparse wraps long help lines
    assert f"tokensidecar {command}" in out
    settings = cli.COMMANDS[command].settings()
    assert settings, command
    for setting in settings:
        if not setting.env_only:
            assert setting.cli_flag in out, (command, setting.cli_flag)
        if not setting.flag_only and not setting.env_only:
            assert f"env {setting.env}" in flat, (command, setting.env)


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: tokensidecar" in capsys.readouterr().out


def test_vault_token_is_not_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    # A token in argv is visible to every local user through /proc/<pid>/cmdline.
    with pytest.raises(SystemExit) as exited:
        cli.main(["run", "--vault-token", "hvs.something"])
    assert exited.value.code == 2
    assert "--vault-token" not in capsys.readouterr().out


# -- configuration errors ------------------------------------------------------------


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("error: ")
    return lines[0]


BAD_CONFIG = [
    pytest.param(
        ["--source=vault"],
        {"VAULT_ADDR": "http://127.0.0.1:1"},
        "error: TOKENSIDECAR_VAULT_PATH is required when --source=vault",
        id="vault-without-path",
    ),
    pytest.param(
        ["--source=vault"], {}, "VAULT_ADDR is required when --source=vault", id="vault-without-addr"
    ),
    pytest.param(["--source=s3"], {}, "error: --source: 's3' is not one of", id="unknown-source"),
    pytest.param(
        [], {"TOKENSIDECAR_SOURCE": "s3"}, "error: TOKENSIDECAR_SOURCE: 's3'", id="unknown-source-env"
    ),
    pytest.param(
        ["--source=file"],
        {},
        "TOKENSIDECAR_SOURCE_FILE is required when --source=file",
        id="file-without-path",
    ),
    pytest.param(
        ["--source=kubernetes-secret"],
        {},
        "TOKENSIDECAR_SECRET_NAME is required when --source=kubernetes-secret",
        id="secret-without-name",
    ),
    pytest.param([], {"TOKENSIDECAR_FILE_MODE": "rw-r-----"}, "TOKENSIDECAR_FILE_MODE", id="bad-file-mode"),
    pytest.param(["--file-mode=rw-r-----"], {}, "error: --file-mode: 'rw-r-----'", id="bad-file-mode-flag"),
    pytest.param(["--verify=maybe"], {}, "error: --verify: 'maybe' is not one of", id="bad-verify"),
    pytest.param(
        [], {"TOKENSIDECAR_VERIFY": "maybe"}, "error: TOKENSIDECAR_VERIFY: 'maybe'", id="bad-verify-env"
    ),
    pytest.param(["--log-format=xml"], {}, "error: --log-format: 'xml'", id="bad-log-format"),
    pytest.param(
        ["--vault-skip-verify=maybe"],
        {},
        "error: --vault-skip-verify: 'maybe' is not a boolean",
        id="bad-switch",
    ),
    pytest.param(
        [], {"VAULT_SKIP_VERIFY": "maybe"}, "error: VAULT_SKIP_VERIFY: 'maybe'", id="bad-switch-env"
    ),
    pytest.param(["--bogus"], {}, "unrecognized arguments: --bogus", id="unknown-flag"),
    pytest.param(
        ["--source=file", "--source-file=/nonexistent/token", "--notify-signal=SIGHUP"],
        {},
        "TOKENSIDECAR_NOTIFY_PROCESS is required when TOKENSIDECAR_NOTIFY_SIGNAL is set",
        id="signal-without-process",
    ),
    pytest.param(
        ["--source=file", "--source-file=/nonexistent/token", "--notify-process=app"],
        {"TOKENSIDECAR_NOTIFY_SIGNAL": "SIGNOPE"},
        "TOKENSIDECAR_NOTIFY_SIGNAL: 'SIGNOPE' is not a signal name",
        id="bad-signal",
    ),
    pytest.param(
        ["--source=file", "--source-file=/nonexistent/token", "--verify=repo"],
        {},
        "TOKENSIDECAR_MODEL_ID",
        id="repo-verify-without-model",
    ),
]


@pytest.mark.parametrize("command", ["run", "once"])
@pytest.mark.parametrize(("args", "env", "expected"), BAD_CONFIG)
def test_bad_configuration_exits_2_with_one_line_naming_the_setting(
    command: str, args: list[str], env: dict[str, str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        listen = ["--listen=127.0.0.1:0"] if command == "run" else []
        try:
            code = cli.main([command, *listen, *args])
        except SystemExit as exited:  # argparse's own errors
            code = exited.code  # type: ignore[assignment]
    assert code == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert expected in line
    assert captured.out == ""


def test_bad_configuration_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    result = _run_cli("run", env={"TOKENSIDECAR_SOURCE": "vault", "VAULT_ADDR": "http://127.0.0.1:1"})
    assert result.returncode == 2
    assert result.stderr == "error: TOKENSIDECAR_VAULT_PATH is required when --source=vault\n"
    result = _run_cli("run", "--source=file", "--refresh-interval=1m30")
    assert result.returncode == 2
    assert _one_error_line(result.stderr).startswith("error: --refresh-interval: '1m30' is not a duration")


# Settings of run's refresh loop and probe port: `once` has none of them.
RUN_ONLY = [
    pytest.param(
        ["--refresh-interval=5x"], {}, "error: --refresh-interval: '5x' is not a duration", id="duration"
    ),
    pytest.param(
        [],
        {"TOKENSIDECAR_REFRESH_INTERVAL": "5x"},
        "error: TOKENSIDECAR_REFRESH_INTERVAL: '5x'",
        id="duration-env",
    ),
    pytest.param(
        [], {"TOKENSIDECAR_MAX_BACKOFF": "0"}, "error: TOKENSIDECAR_MAX_BACKOFF:", id="zero-backoff"
    ),
    pytest.param(["--listen=8099"], {}, "error: --listen: '8099' is not HOST:PORT", id="bad-listen"),
]


@pytest.mark.parametrize(("args", "env", "expected"), RUN_ONLY)
def test_run_names_the_flag_or_variable_the_user_typed(
    args: list[str], env: dict[str, str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        assert cli.main(["run", *args]) == 2
    assert expected in _one_error_line(capsys.readouterr().err)


def test_once_help_offers_no_run_only_flag_and_once_ignores_their_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["once", "--help"])
    out = capsys.readouterr().out
    for flag in ("--listen", "--refresh-interval", "--max-backoff"):
        assert flag not in out, flag
        with pytest.raises(SystemExit) as exited:
            cli.main(["once", f"{flag}=1s"])
        assert exited.value.code == 2
        assert f"unrecognized arguments: {flag}" in _one_error_line(capsys.readouterr().err)
    # An init container running `once` may share the sidecar's environment.
    monkeypatch.setenv("TOKENSIDECAR_LISTEN", "not-an-address")
    source = tmp_path / "source"
    source.write_text("hf_oncesharedenviron1")
    assert _once(f"--source-file={source}", f"--token-file={tmp_path / 'token'}") == 0


def test_vault_skip_verify_is_a_switch_that_still_takes_a_value() -> None:
    parse = cli.build_parser(cli.COMMANDS["run"]).parse_args
    assert parse(["--vault-skip-verify"]).vault_skip_verify is True
    assert parse(["--no-vault-skip-verify"]).vault_skip_verify is False
    assert parse(["--vault-skip-verify=false"]).vault_skip_verify is False
    assert parse(["--vault-skip-verify", "true"]).vault_skip_verify is True
    assert parse([]).vault_skip_verify is None
    command = cli.COMMANDS["run"]
    assert command.resolve({"vault_skip_verify": True}).values["vault_skip_verify"] is True


def test_durations_in_days_are_documented(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["rotate", "--help"])
    assert "1d" in " ".join(capsys.readouterr().out.split())
    assert "`1d`" in (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()


@pytest.mark.parametrize(
    ("args", "env"),
    [
        pytest.param([], {"TOKENSIDECAR_VAULT_AUTH": "hf_pastedintothewrongplace01"}, id="env-choice"),
        pytest.param(["--vault-auth=hf_pastedintothewrongplace01"], {}, id="flag-choice"),
        pytest.param([], {"TOKENSIDECAR_REFRESH_INTERVAL": "hf_pastedintothewrongplace01"}, id="env-parse"),
        pytest.param(["hf_pastedintothewrongplace01"], {}, id="stray-argument"),
    ],
)
def test_configuration_errors_never_echo_a_token(
    args: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        try:
            code = cli.main(["run", *args])
        except SystemExit as exited:
            code = exited.code  # type: ignore[assignment]
    assert code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "hf_pastedintothewrongplace01" not in line
    assert "REDACTED" in line


def test_text_logs_never_print_python_none(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_text("hf_noexpiryknown00001")  # no expiry: expires_at has no value
    result = _run_cli(
        "once",
        "--source=file",
        f"--source-file={source}",
        f"--token-file={tmp_path / 'token'}",
        "--verify=none",
        "--log-format=text",
    )
    assert result.returncode == 0, result.stderr
    assert "published a new token" in result.stderr
    assert "None" not in result.stderr


def test_an_unusable_token_directory_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")  # a file where the token directory should be: mkdir fails
    source = tmp_path / "source"
    source.write_text("hf_unwritabletokendir1")
    token = blocker / "sub" / "token"
    result = _run_cli(
        "once", "--source=file", f"--source-file={source}", f"--token-file={token}", "--verify=none"
    )
    assert result.returncode == 1
    line = _one_error_line(result.stderr)
    assert line == f"error: --token-file={token}: cannot use its directory {blocker / 'sub'}: not a directory"
    result = _run_cli(
        "once",
        env={
            "TOKENSIDECAR_SOURCE": "file",
            "TOKENSIDECAR_SOURCE_FILE": str(source),
            "TOKENSIDECAR_TOKEN_FILE": str(token),
            "TOKENSIDECAR_VERIFY": "none",
        },
    )
    assert _one_error_line(result.stderr).startswith(f"error: TOKENSIDECAR_TOKEN_FILE={token}: ")


def test_a_token_directory_without_write_permission_is_one_line(tmp_path: Path) -> None:
    import os

    source = tmp_path / "source"
    source.write_text("hf_permissiondenied01")
    if os.geteuid() == 0:
        # root may write anywhere but sysfs, where mkdir is refused with EPERM (CI runs as root).
        directory = Path("/sys/tokensidecar-test")
    else:
        readonly = tmp_path / "readonly"
        readonly.mkdir()
        readonly.chmod(0o555)
        directory = readonly / "tokens"
    token = directory / "token"
    result = _run_cli(
        "once", "--source=file", f"--source-file={source}", f"--token-file={token}", "--verify=none"
    )
    assert result.returncode == 1, result.stderr
    line = _one_error_line(result.stderr)
    assert line in {
        f"error: --token-file={token}: cannot use its directory {directory}: permission denied",
        f"error: --token-file={token}: cannot use its directory {directory}: operation not permitted",
    }


# -- once --------------------------------------------------------------------------------


def _once(*args: str) -> int:
    return cli.main(["once", "--source=file", "--verify=none", *args])


def test_once_publishes_the_file_source_token_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source"
    source.write_text("hf_oncetokenabcdefgh\n")  # kubelet-written files may end in a newline
    out = tmp_path / "out" / "token"  # the directory does not exist yet
    assert _once(f"--source-file={source}", f"--token-file={out}") == 0
    assert out.read_text() == "hf_oncetokenabcdefgh"
    assert stat.S_IMODE(out.stat().st_mode) == 0o440
    metadata = json.loads((tmp_path / "out" / "token.json").read_text())
    assert metadata["fingerprint"] == fingerprint("hf_oncetokenabcdefgh")
    assert metadata["source"] == "file"
    err = capsys.readouterr().err
    assert "hf_oncetokenabcdefgh" not in err
    assert any(json.loads(line).get("msg") == "token published" for line in err.splitlines())


def test_once_reads_settings_from_the_environment_and_flags_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source"
    source.write_text("hf_fromenvironment01")
    monkeypatch.setenv("TOKENSIDECAR_SOURCE_FILE", str(tmp_path / "missing"))
    monkeypatch.setenv("TOKENSIDECAR_TOKEN_FILE", str(tmp_path / "token"))
    monkeypatch.setenv("TOKENSIDECAR_FILE_MODE", "0400")
    assert _once(f"--source-file={source}") == 0  # the flag wins over the missing env path
    assert (tmp_path / "token").read_text() == "hf_fromenvironment01"
    assert stat.S_IMODE((tmp_path / "token").stat().st_mode) == 0o400


def test_once_fails_with_one_line_when_the_source_file_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "token"
    assert _once(f"--source-file={tmp_path / 'missing'}", f"--token-file={out}") == 1
    err = capsys.readouterr().err
    assert _one_error_line(err) == f"error: {tmp_path / 'missing'} does not exist"
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("hf_invalid token", "whitespace"),
        ("", "empty"),
        ("   \n", "empty"),
        ("hf_" + "x" * 5000, "longer than 4096 bytes"),
        ("hf_bell\x07token", "printable"),
    ],
)
def test_once_refuses_an_invalid_token_and_keeps_the_old_one(
    tmp_path: Path, content: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source, out = tmp_path / "source", tmp_path / "token"
    source.write_text("hf_previousgoodtoken")
    assert _once(f"--source-file={source}", f"--token-file={out}") == 0
    capsys.readouterr()
    source.write_text(content)
    assert _once(f"--source-file={source}", f"--token-file={out}") == 1
    line = _one_error_line(capsys.readouterr().err)
    assert reason in line
    assert "rejected" in line
    if content.strip():
        assert content.strip() not in line
    assert out.read_text() == "hf_previousgoodtoken"


def test_once_refuses_a_non_ascii_source_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "source"
    source.write_text("hf_tökenwithumlaut", encoding="utf-8")
    assert _once(f"--source-file={source}", f"--token-file={tmp_path / 'token'}") == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "ASCII" in line
    assert "tökenwithumlaut" not in line


def test_once_in_a_real_process(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_text("hf_realprocessonce01")
    result = _run_cli(
        "once",
        env={
            "TOKENSIDECAR_SOURCE": "file",
            "TOKENSIDECAR_SOURCE_FILE": str(source),
            "TOKENSIDECAR_TOKEN_FILE": str(tmp_path / "token"),
            "TOKENSIDECAR_VERIFY": "none",
            "TOKENSIDECAR_LOG_FORMAT": "text",
        },
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "token").read_text() == "hf_realprocessonce01"
    assert "token published" in result.stderr
    assert "hf_realprocessonce01" not in result.stderr + result.stdout
    source.unlink()
    result = _run_cli(
        "once",
        "--source=file",
        f"--source-file={source}",
        f"--token-file={tmp_path / 'token'}",
        "--verify=none",
    )
    assert result.returncode == 1
    assert _one_error_line(result.stderr) == f"error: {source} does not exist"
    assert (tmp_path / "token").read_text() == "hf_realprocessonce01"


def test_run_with_its_port_taken_fails_fast_with_one_line(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_text("hf_portalreadytaken1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_cli(
            "run",
            "--source=file",
            f"--source-file={source}",
            f"--token-file={tmp_path / 'out' / 'token'}",
            "--verify=none",
            f"--listen=127.0.0.1:{port}",
        )
    assert result.returncode == 1
    line = _one_error_line(result.stderr)
    assert "address already in use" in line


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        pytest.param(
            ["--vault-path=nomount"],
            {"VAULT_ADDR": "http://127.0.0.1:1"},
            "error: --vault-path: 'nomount' is not <mount>/<path>",
            id="flag",
        ),
        pytest.param(
            [],
            {"VAULT_ADDR": "http://127.0.0.1:1", "TOKENSIDECAR_VAULT_PATH": "nomount"},
            "error: TOKENSIDECAR_VAULT_PATH: 'nomount' is not <mount>/<path>",
            id="env",
        ),
        pytest.param(
            ["--vault-addr=ftp://vault", "--vault-path=secret/hf/a"],
            {},
            "error: --vault-addr: 'ftp://vault' is not an http:// or https:// URL",
            id="checked-by-the-vault-client",
        ),
    ],
)
def test_errors_found_after_parsing_name_what_the_user_typed(
    args: list[str], env: dict[str, str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rooms check their settings by environment name; the door renames the one typed as a flag."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        assert cli.main(["run", "--listen=127.0.0.1:0", "--source=vault", *args]) == 2
    assert _one_error_line(capsys.readouterr().err).startswith(expected)


def _once_verified(source: Path, out: Path, endpoint: str) -> int:
    return cli.main(
        [
            "once",
            "--source=file",
            f"--source-file={source}",
            f"--token-file={out}",
            "--verify=whoami",
            f"--hf-endpoint={endpoint}",
        ]
    )


def test_once_with_an_endpoint_that_does_not_exist_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Was: the DNS failure counted as a Hub outage, and the token went out unverified (exit 0).
    source = tmp_path / "source"
    source.write_text("hf_dnsfailure0000000000")
    out = tmp_path / "token"
    assert _once_verified(source, out, "https://hf.invalid") == 2  # RFC 2606: never resolves
    line = _one_error_line(capsys.readouterr().err)
    assert "HF_ENDPOINT" in line and "'hf.invalid' does not exist" in line, line
    assert "hf_dnsfailure" not in line
    assert not out.exists()


def test_once_with_an_endpoint_that_is_not_a_hub_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import http.server
    import threading

    class NotAHub(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # a web server with no Hub API: 404 for /api/whoami-v2
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotAHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source = tmp_path / "source"
        source.write_text("hf_notahub00000000000")
        out = tmp_path / "token"
        assert _once_verified(source, out, f"http://127.0.0.1:{server.server_address[1]}") == 2
    finally:
        server.shutdown()
    line = _one_error_line(capsys.readouterr().err)
    assert "is not a Hugging Face Hub" in line, line
    assert not out.exists()

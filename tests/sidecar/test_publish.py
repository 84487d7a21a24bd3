"""The publisher: a reader sees the old or the new complete token, never anything else."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tokensidecar.sidecar.publish import Publisher, PublishError, filesystem_type
from tokensidecar.token import InvalidToken, Token


def _token(value: str, **kwargs: object) -> Token:
    return Token(value=value, source="test", **kwargs)  # type: ignore[arg-type]


def _values(count: int) -> list[str]:
    # Different lengths, so a torn read (old head + new tail) cannot look valid.
    return [f"hf_{i:06d}" + "x" * (i % 97) for i in range(count)]


def test_publish_writes_token_and_metadata_with_mode(tmp_path: Path) -> None:
    publisher = Publisher(token_path=tmp_path / "token", mode=0o440)
    publisher.prepare()
    assert publisher.publish(_token("hf_abcdefghijkl", version="7"))
    assert (tmp_path / "token").read_text() == "hf_abcdefghijkl"
    metadata = json.loads((tmp_path / "token.json").read_text())
    assert metadata["version"] == "7"
    assert metadata["fingerprint"] == _token("hf_abcdefghijkl").fingerprint
    assert set(metadata) == {"version", "fingerprint", "source", "fetched_at", "expires_at"}
    assert "hf_abcdefghijkl" not in (tmp_path / "token.json").read_text()
    assert stat.S_IMODE((tmp_path / "token").stat().st_mode) == 0o440
    assert stat.S_IMODE((tmp_path / "token.json").stat().st_mode) == 0o440


def test_republishing_the_same_token_changes_nothing(tmp_path: Path) -> None:
    publisher = Publisher(token_path=tmp_path / "token")
    token = _token("hf_abcdefghijkl")
    assert publisher.publish(token)
    inode = (tmp_path / "token").stat().st_ino
    assert not publisher.publish(token)
    assert (tmp_path / "token").stat().st_ino == inode


@pytest.mark.parametrize(
    ("value", "reason"),
    [("", "empty"), ("hf_abc def", "whitespace"), ("hf_é", "printable"), ("x" * 4097, "longer")],
)
def test_invalid_token_is_never_written(tmp_path: Path, value: str, reason: str) -> None:
    publisher = Publisher(token_path=tmp_path / "token")
    publisher.publish(_token("hf_previousgood"))
    with pytest.raises(InvalidToken, match=reason):
        publisher.publish(_token(value))
    assert (tmp_path / "token").read_text() == "hf_previousgood"


def _read_loop(path: str, stop: Any, results: Any) -> None:
    seen: set[str] = set()
    reads = missing = 0
    while not stop.is_set():
        try:
            with open(path) as handle:
                value = handle.read()
        except FileNotFoundError:
            missing += 1
            continue
        reads += 1
        seen.add(value)
    results.put((reads, missing, seen))


def test_reader_never_sees_partial_or_empty_token_during_5000_rotations(shm_path: Path) -> None:
    values = _values(5000)
    publisher = Publisher(token_path=shm_path / "token")
    publisher.publish(_token(values[0]))
    context = multiprocessing.get_context("fork")
    stop, results = context.Event(), context.Queue()
    readers = [
        context.Process(target=_read_loop, args=(str(shm_path / "token"), stop, results)) for _ in range(2)
    ]
    for reader in readers:
        reader.start()
    try:
        for value in values[1:]:
            publisher.publish(_token(value))
    finally:
        stop.set()
    outcomes = [results.get(timeout=30) for _ in readers]
    for reader in readers:
        reader.join(timeout=10)
    allowed = set(values)
    for reads, missing, seen in outcomes:
        assert missing == 0
        assert reads > 1000
        assert seen <= allowed, f"torn or unknown reads: {len(seen - allowed)}"
        assert len(seen) > 1


def test_full_filesystem_keeps_the_old_token(tiny_tmpfs: Path) -> None:
    publisher = Publisher(token_path=tiny_tmpfs / "token")
    publisher.prepare()
    publisher.publish(_token("hf_oldgoodtoken"))
    filler = tiny_tmpfs / "filler"
    with open(filler, "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:  # fill the filesystem to the last block
            handle.write(b"\0" * 4096)
    with pytest.raises(PublishError, match="No space left"):
        publisher.publish(_token("hf_newtoken" + "y" * 4000))
    assert (tiny_tmpfs / "token").read_text() == "hf_oldgoodtoken"
    assert not list(tiny_tmpfs.glob(".*tmp*")), "temporary file left behind"
    filler.unlink()
    publisher.publish(_token("hf_newtoken" + "y" * 4000))
    assert (tiny_tmpfs / "token").read_text().startswith("hf_newtoken")


_PUBLISH_FOREVER = """
import sys
import tempfile
from tokensidecar.sidecar.publish import Publisher
from tokensidecar.token import Token
publisher = Publisher(token_path=sys.argv[1])
i = int(sys.argv[2])
print("ready", flush=True)
while True:
    i += 1
    publisher.publish(Token(value=f"hf_{i:06d}" + "x" * (i % 97), source="test"))
"""


def test_sigkill_mid_publish_leaves_a_complete_published_token(tmp_path: Path) -> None:
    token_path = tmp_path / "token"
    Publisher(token_path=token_path).publish(_token(_values(1)[0]))
    allowed = set(_values(200_000))
    start = 0
    for _ in range(25):
        process = subprocess.Popen(
            [sys.executable, "-c", _PUBLISH_FOREVER, str(token_path), str(start)], stdout=subprocess.PIPE
        )
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
        time.sleep(random.uniform(0.005, 0.05))
        process.send_signal(signal.SIGKILL)
        process.wait()
        value = token_path.read_text()
        assert value in allowed, "killed publisher left a torn or empty token"
        start = int(value[3:9]) + 1
        if start > 150_000:
            start = 0
    # The next start sweeps what the killed runs left behind.
    Publisher(token_path=token_path).prepare()
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_symlink_planted_at_a_temporary_name_is_never_written_through(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    directory.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    # Every name the old scheme could pick (.<name>.tmp-<pid>) points at the victim.
    for name in ("token", "token.json"):
        (directory / f".{name}.tmp-{os.getpid()}").symlink_to(victim)
    publisher = Publisher(token_path=directory / "token")
    assert publisher.publish(_token("hf_abcdefghijkl"))
    assert victim.read_text() == "precious"
    assert (directory / "token").read_text() == "hf_abcdefghijkl"
    assert not (directory / "token").is_symlink()


def test_each_temporary_file_is_a_new_file_at_a_fresh_name(tmp_path: Path) -> None:
    publisher = Publisher(token_path=tmp_path / "token")
    names = set()
    for index in range(20):
        tmp, fd = publisher._create_temporary(tmp_path / "token")
        os.close(fd)
        assert tmp.name.startswith(".token.tmp-") and stat.S_IMODE(tmp.stat().st_mode) == 0o600
        names.add(tmp.name)
        assert len(names) == index + 1
    assert len({name.removeprefix(".token.tmp-") for name in names}) == 20
    publisher.prepare()  # a crash's leftovers are swept
    assert not list(tmp_path.glob(".*.tmp-*"))


def _statfs_type(path: Path) -> str:
    """The filesystem type from statfs(2) via coreutils, independent of the code under test."""
    return subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_the_first_publish_warns_when_the_token_directory_is_on_disk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if _statfs_type(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip("the temporary directory is memory-backed on this machine")
    publisher = Publisher(token_path=tmp_path / "run" / "token")
    with caplog.at_level(logging.INFO, logger="tokensidecar.sidecar.publish"):
        publisher.prepare()
        for value in ("hf_abcdefghijkl", "hf_mnopqrstuvwx"):
            publisher.publish(_token(value))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage().split(":")[0] for r in warnings] == ["the token directory is not memory-backed"]
    assert warnings[0].filesystem not in ("tmpfs", "ramfs")  # type: ignore[attr-defined]


def test_publishing_is_quiet_on_a_memory_backed_directory(
    shm_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert _statfs_type(shm_path) == "tmpfs"
    publisher = Publisher(token_path=shm_path / "token")
    with caplog.at_level(logging.INFO, logger="tokensidecar.sidecar.publish"):
        publisher.prepare()
        publisher.publish(_token("hf_abcdefghijkl"))
    assert filesystem_type(shm_path) == "tmpfs"
    assert not [
        r for r in caplog.records if r.name == "tokensidecar.sidecar.publish" and r.levelno >= logging.INFO
    ]

"""The publisher under load and under SIGKILL: readers only ever see complete published tokens.

Beyond ``tests/test_publish.py`` (5,000 rotations, 2 readers, 25 kills of a fresh process):
10,000 rotations with 4 readers that check ``token.json`` too, and 250 kills of a forked
publisher at random points — including during the very first publish, when no file exists
yet — each followed by a new publisher that must carry on from what the killed one left.
Everything runs on /dev/shm, like the sidecar's memory-backed emptyDir (fsync is cheap there).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tokensidecar.publish import Publisher
from tokensidecar.token import Token


def _values(count: int) -> list[str]:
    # Lengths differ between neighbours, so a torn read (old head, new tail) is never valid.
    return [_value(i) for i in range(count)]


def _value(number: int) -> str:
    return f"hf_{number:06d}" + "x" * (number % 89)


def _token(value: str) -> Token:
    return Token(value=value, source="faults", version=value[3:9])


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=base, prefix="tokensidecar-faults-") as directory:
        yield Path(directory)


def _reader(directory: str, stop: Any, results: Any) -> None:
    """Read token and token.json as fast as possible; report what was seen."""
    token_path = os.path.join(directory, "token")
    metadata_path = os.path.join(directory, "token.json")
    tokens: set[str] = set()
    fingerprints: set[str] = set()
    reads = empty = missing = bad_metadata = 0
    while not stop.is_set():
        try:
            with open(token_path, "rb") as handle:
                raw = handle.read()
            with open(metadata_path, "rb") as handle:
                metadata_raw = handle.read()
        except FileNotFoundError:
            missing += 1
            continue
        reads += 1
        if not raw.strip():
            empty += 1
        tokens.add(raw.decode("ascii", "replace"))
        try:
            fingerprints.add(json.loads(metadata_raw)["fingerprint"])
        except (ValueError, KeyError):
            bad_metadata += 1
    results.put(
        {
            "reads": reads,
            "empty": empty,
            "missing": missing,
            "bad_metadata": bad_metadata,
            "tokens": tokens,
            "fingerprints": fingerprints,
        }
    )


def test_four_readers_see_no_torn_or_empty_read_in_10000_rotations(shm_dir: Path) -> None:
    values = _values(10_000)
    publisher = Publisher(token_path=shm_dir / "token")
    publisher.prepare()
    publisher.publish(_token(values[0]))
    context = multiprocessing.get_context("fork")
    stop, results = context.Event(), context.Queue()
    readers = [context.Process(target=_reader, args=(str(shm_dir), stop, results)) for _ in range(4)]
    for reader in readers:
        reader.start()
    try:
        for value in values[1:]:
            publisher.publish(_token(value))
    finally:
        stop.set()
    outcomes = [results.get(timeout=60) for _ in readers]
    for reader in readers:
        reader.join(timeout=10)

    allowed_tokens = set(values)
    allowed_fingerprints = {_token(v).fingerprint for v in values}
    for outcome in outcomes:
        assert outcome["missing"] == 0 and outcome["empty"] == 0 and outcome["bad_metadata"] == 0
        assert outcome["tokens"] <= allowed_tokens, (
            f"torn reads: {sorted(outcome['tokens'] - allowed_tokens)[:3]}"
        )
        assert outcome["fingerprints"] <= allowed_fingerprints
        assert outcome["reads"] > 500 and len(outcome["tokens"]) > 10  # the readers really overlapped
    assert (shm_dir / "token").read_text() == values[-1]
    assert not list(shm_dir.glob(".*.tmp-*"))


def _publish_forever(directory: Path, *, start: int, ready_fd: int) -> None:
    """Child of a fork: publish the sequence from ``start`` until killed."""
    publisher = Publisher(token_path=directory / "token")
    os.write(ready_fd, b"r")
    os.close(ready_fd)
    number = start
    while True:
        publisher.publish(_token(_value(number)))
        number += 1


def _fork_publisher(directory: Path, *, start: int) -> int:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        try:
            os.close(read_fd)
            _publish_forever(directory, start=start, ready_fd=write_fd)
        finally:
            os._exit(1)
    os.close(write_fd)
    assert os.read(read_fd, 1) == b"r"
    os.close(read_fd)
    return pid


def test_sigkill_at_random_points_never_leaves_a_torn_empty_or_unpublished_token(shm_dir: Path) -> None:
    allowed = set(_values(1_000_000))
    start = 0
    first_publish_kills = 0
    for iteration in range(250):
        if iteration % 25 == 0:
            # Now and then, start from nothing: a kill during the very first publish must
            # leave either no token at all or a complete one, never an empty file.
            for leftover in shm_dir.iterdir():
                leftover.unlink()
            first_publish_kills += 1
        pid = _fork_publisher(shm_dir, start=start)
        time.sleep(random.uniform(0, 0.004))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

        token_path = shm_dir / "token"
        if not token_path.exists():
            assert iteration % 25 == 0, "a published token disappeared"
            continue
        value = token_path.read_text()
        assert value in allowed, f"iteration {iteration}: torn or empty token {value[:20]!r}"
        number = int(value[3:9])
        metadata_path = shm_dir / "token.json"
        if metadata_path.exists():
            metadata = json.loads(metadata_path.read_text())  # always complete JSON
            # token.json follows the token: it describes this token or an earlier published
            # one (a kill between the two renames leaves it one publish behind), never a
            # token that was not published and never a mismatched version/fingerprint.
            described = int(metadata["version"])
            assert described <= number, f"iteration {iteration}: metadata ahead of the token"
            assert metadata["fingerprint"] == _token(_value(described)).fingerprint
        start = number + 1 if number < 900_000 else 0

        # What a restarted sidecar does: sweep the killed run's temporary files, publish on.
        publisher = Publisher(token_path=token_path)
        publisher.prepare()
        assert not list(shm_dir.glob(".*.tmp-*"))
        assert token_path.read_text() == value  # prepare() never touches the published token
    assert first_publish_kills == 10

"""Footprint: steady RSS and CPU of ``tokensidecar run`` per source under rotation, and import cost.

Method: three real sidecars run at once as subprocesses (``python -m tokensidecar run``,
default log level, verification off), one per source:

* ``vault``: local OpenBao dev server, token auth, ``TOKENSIDECAR_REFRESH_INTERVAL=5s``
  (so every rotation is published: the worst case, not the 60 s default);
* ``kubernetes-secret``: the kmock API server, a watch;
* ``file``: a kubelet-style Secret volume (``..data`` symlink swap), stat every 100 ms.

Every 5 s the token of each source is rotated, for ``--seconds`` (``make bench``: 600 s,
the issue's 10 minutes). Every 5 s the RSS (``/proc/<pid>/statm``) and CPU time
(utime+stime from ``/proc/<pid>/stat``) of each process are sampled. Reported: RSS once
warm (after the first minute, or 10% of a shorter run), RSS at the end, growth between
the two (a leak shows here), peak RSS, and mean CPU use over the warm window.

Import cost: ``python -X importtime -m tokensidecar once`` for each source against the
same servers, the top-level packages by cumulative import time.

    .venv/bin/python bench/footprint.py [--seconds 600] [--rotate-every 5]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common import (
    SIDECAR_PYTHON,
    clean_env,
    emit,
    process_usage,
    spawn_sidecar,
    stop_process,
    wait_for_file_content,
)
from propagation import KubeletSecretVolume

from tests.fixtures.kube import KubeApi
from tests.sidecar_process import free_port
from tokensidecar.demo.openbao import DevServer

RSS_GOAL_MIB = 40.0
VAULT_PATH = "secret/hf/footprint"
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)$")


def import_breakdown(env: Mapping[str, str], *, top: int = 12) -> dict[str, Any]:
    """Top-level packages by cumulative import time for one ``tokensidecar once``."""
    result = subprocess.run(
        [SIDECAR_PYTHON, "-X", "importtime", "-m", "tokensidecar", "once"],
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    roots: dict[str, int] = {}
    total = 0
    for line in result.stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if not match:
            continue
        self_us, cumulative_us, indent, name = int(match[1]), int(match[2]), match[3], match[4]
        total += self_us
        if not indent:  # imported by the program itself, not by another module
            package = name.split(".")[0]
            roots[package] = roots.get(package, 0) + cumulative_us
    ranked = sorted(roots.items(), key=lambda item: item[1], reverse=True)[:top]
    return {
        "exit_code": result.returncode,
        "total_import_ms": round(total / 1000, 1),
        "top_level_ms": {name: round(us / 1000, 1) for name, us in ranked},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="rotation phase length")
    parser.add_argument("--rotate-every", type=float, default=5.0)
    args = parser.parse_args()
    warm_after = min(60.0, args.seconds * 0.1)
    with (
        tempfile.TemporaryDirectory(prefix="bench-footprint-", dir="/dev/shm") as directory,
        DevServer() as server,
    ):
        scratch = Path(directory)
        api = KubeApi(directory=scratch).start()
        processes: dict[str, Any] = {}
        try:
            first = "hf_footprint_bench_000000"
            server.put_kv(VAULT_PATH, {"token": first})
            vault_token, _ = server.create_token(policies=[server.read_policy_for(VAULT_PATH)], ttl="24h")
            api.put_secret("hf-token", {"token": first})
            volume = KubeletSecretVolume(scratch / "secret-volume")
            volume.write(first)
            sources: dict[str, dict[str, str]] = {
                "vault": {
                    "TOKENSIDECAR_SOURCE": "vault",
                    "VAULT_ADDR": server.addr,
                    "VAULT_TOKEN": vault_token,
                    "TOKENSIDECAR_VAULT_AUTH": "token",
                    "TOKENSIDECAR_VAULT_PATH": VAULT_PATH,
                    "TOKENSIDECAR_REFRESH_INTERVAL": f"{args.rotate_every:g}s",
                },
                "kubernetes-secret": {
                    "TOKENSIDECAR_SOURCE": "kubernetes-secret",
                    "TOKENSIDECAR_SECRET_NAME": "hf-token",
                    "KUBECONFIG": str(api.kubeconfig_path),
                },
                "file": {"TOKENSIDECAR_SOURCE": "file", "TOKENSIDECAR_SOURCE_FILE": str(volume.token_path)},
            }
            imports = {}
            for name, settings in sources.items():
                (scratch / f"once-{name}").mkdir()
                imports[name] = import_breakdown(
                    clean_env(
                        {
                            **settings,
                            "TOKENSIDECAR_TOKEN_FILE": str(scratch / f"once-{name}" / "token"),
                            "TOKENSIDECAR_VERIFY": "none",
                        }
                    )
                )
            for name, settings in sources.items():
                (scratch / name).mkdir()
                env = clean_env(
                    {
                        **settings,
                        "TOKENSIDECAR_TOKEN_FILE": str(scratch / name / "token"),
                        "TOKENSIDECAR_LISTEN": f"127.0.0.1:{free_port()}",
                        "TOKENSIDECAR_VERIFY": "none",
                    }
                )
                processes[name] = spawn_sidecar(env, log_path=scratch / f"{name}.log")
            for name in sources:
                wait_for_file_content(scratch / name / "token", first, timeout=30)

            samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in sources}
            started = time.monotonic()
            rotation = 0
            while (now := time.monotonic()) - started < args.seconds:
                rotation += 1
                value = f"hf_footprint_bench_{rotation:06d}"
                server.put_kv(VAULT_PATH, {"token": value})
                api.put_secret("hf-token", {"token": value})
                volume.write(value)
                for name, process in processes.items():
                    if process.poll() is not None:
                        raise RuntimeError(f"the {name} sidecar exited with {process.returncode}")
                    rss, cpu = process_usage(process.pid)
                    samples[name].append((now - started, rss, cpu))
                time.sleep(max(0.0, started + rotation * args.rotate_every - time.monotonic()))
            published = {
                name: (scratch / name / "token").read_text().strip() == f"hf_footprint_bench_{rotation:06d}"
                or (scratch / name / "token").read_text().strip() == f"hf_footprint_bench_{rotation - 1:06d}"
                for name in sources
            }
        finally:
            for process in processes.values():
                stop_process(process)
            api.stop()

    by_source = {}
    for name, series in samples.items():
        warm = [s for s in series if s[0] >= warm_after] or series[-1:]
        first_warm, last = warm[0], series[-1]
        cpu_window = last[0] - first_warm[0]
        rss_end = last[1]
        by_source[name] = {
            "rss_warm_mib": round(first_warm[1], 1),
            "rss_end_mib": round(rss_end, 1),
            "rss_growth_mib": round(rss_end - first_warm[1], 2),
            "rss_peak_mib": round(max(s[1] for s in series), 1),
            "cpu_percent_mean": round(100 * (last[2] - first_warm[2]) / cpu_window, 2)
            if cpu_window
            else None,
            "cpu_seconds_total": round(last[2], 2),
            "rotations": rotation,
            "kept_up_with_rotations": published[name],
            "goal_rss_mib": RSS_GOAL_MIB,
            "goal_met": rss_end <= RSS_GOAL_MIB,
            "imports": imports[name],
        }
    emit(
        {
            "benchmark": "footprint",
            "method": (
                f"3 real `tokensidecar run` subprocesses (vault with 5 s interval, kubernetes-secret "
                f"watch, file) rotated every {args.rotate_every:g} s for {args.seconds:g} s; RSS from "
                f"/proc/pid/statm and CPU from /proc/pid/stat every {args.rotate_every:g} s; warm = after "
                f"{warm_after:g} s; imports: python -X importtime -m tokensidecar once"
            ),
            "seconds": args.seconds,
            "by_source": by_source,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

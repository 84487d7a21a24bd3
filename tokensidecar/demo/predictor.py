"""A stand-in for the model server: one long-lived process that downloads on request.

It gets ``HF_ENDPOINT`` and ``HF_TOKEN_PATH`` and no ``HF_TOKEN`` — exactly what the
webhook gives a KServe predictor — and downloads the private model each time it is
asked. Because it is one process for its whole life, a download that succeeds after a
rotation proves that huggingface_hub picked up the new token from the file with no
restart. With ``how="kserve"`` it uses KServe's real storage initializer
(``kserve_storage.Storage.download``), which is what ``storage-initializer`` runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["Predictor"]

# Reads "<how> <repo> <dir> [<revision>]" lines on stdin, answers one JSON line each. No token ever
# crosses this pipe: the process reads it from HF_TOKEN_PATH like a real predictor.
_PREDICTOR = r"""
import json, os, sys, time
from huggingface_hub import snapshot_download
for line in sys.stdin:
    how, repo, out_dir, *pinned = line.split()
    revision = pinned[0] if pinned else None
    started = time.perf_counter()
    try:
        if how == "kserve":
            from kserve_storage import Storage
            Storage.download(f"hf://{repo}" + (f":{revision}" if revision else ""), out_dir)
        else:
            snapshot_download(repo, revision=revision, local_dir=out_dir)
        files = sorted(
            os.path.relpath(os.path.join(root, name), out_dir)
            for root, _, names in os.walk(out_dir) if ".cache" not in root for name in names
        )
        answer = {"ok": True, "files": files}
    except Exception as exc:
        response = getattr(exc, "response", None)
        answer = {"ok": False, "error": type(exc).__name__, "status": getattr(response, "status_code", None)}
    answer["seconds"] = time.perf_counter() - started
    print(json.dumps(answer), flush=True)
"""


class Predictor:
    def __init__(self, *, hub_url: str, token_file: Path, home: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_"))}
        env.update(
            HF_ENDPOINT=hub_url,
            HF_TOKEN_PATH=str(token_file),
            HF_HOME=str(home),
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", _PREDICTOR],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.pid = self.process.pid

    def download(
        self, *, repo_id: str, out_dir: Path, how: str = "hub", revision: str | None = None
    ) -> dict[str, Any]:
        """Download ``repo_id`` (at ``revision``, default its main branch) into ``out_dir``;
        ``how`` is ``hub`` or ``kserve``."""
        assert self.process.stdin is not None and self.process.stdout is not None
        pinned = f" {revision}" if revision else ""
        self.process.stdin.write(f"{how} {repo_id} {out_dir}{pinned}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"predictor process {self.pid} exited ({self.process.poll()})")
        answer: dict[str, Any] = json.loads(line)
        answer["pid"] = self.process.pid
        return answer

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

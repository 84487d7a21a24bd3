"""Settings of ``tokensidecar demo`` (light: imported for ``--help``)."""

from __future__ import annotations

from tokensidecar.config import COMMON_SETTINGS, Setting, parse_bool, register

__all__ = ["SETTINGS"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


DEMO_SETTINGS = register(
    Setting(
        "rotations",
        "TOKENSIDECAR_DEMO_ROTATIONS",
        "How many token rotations the demo performs before its summary.",
        default="3",
        parse=_positive_int,
        metavar="N",
        section="demo",
    ),
    Setting(
        "forever",
        "TOKENSIDECAR_DEMO_FOREVER",
        "Keep rotating until Ctrl-C (then print the summary and clean up).",
        default="false",
        parse=parse_bool,
        is_bool=True,
        section="demo",
    ),
    Setting(
        "demo_interval",
        "TOKENSIDECAR_DEMO_INTERVAL",
        "Pause between rotations, in seconds.",
        default="1",
        parse=float,
        metavar="SECONDS",
        section="demo",
    ),
    Setting(
        "demo_dir",
        "TOKENSIDECAR_DEMO_DIR",
        "Working directory for the demo's token file and logs (default: a fresh temporary directory).",
        section="demo",
    ),
)

SETTINGS = (*COMMON_SETTINGS, *DEMO_SETTINGS)

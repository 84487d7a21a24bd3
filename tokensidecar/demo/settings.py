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
        "demo_flow",
        "TOKENSIDECAR_DEMO_FLOW",
        "Which flow the demo shows: the sidecar (OpenBao → sidecar → token file → download), "
        "the gateway (three predictors downloading through 'tokensidecar gateway' with their "
        "service-account tokens), or both, one after the other.",
        default="both",
        choices=("sidecar", "gateway", "both"),
        flag="--flow",
        section="demo",
    ),
    Setting(
        "rotations",
        "TOKENSIDECAR_DEMO_ROTATIONS",
        "How many token rotations each flow performs before the summary.",
        default="3",
        parse=_positive_int,
        metavar="N",
        section="demo",
    ),
    Setting(
        "forever",
        "TOKENSIDECAR_DEMO_FOREVER",
        "Keep rotating until Ctrl-C (then print the summary and clean up); with --flow both, "
        "the sidecar rotates --rotations times and the gateway flow keeps rotating.",
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

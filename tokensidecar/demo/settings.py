"""Settings of ``tokensidecar demo`` (light: imported for ``--help``), and the frozen
:class:`DemoSettings` the demo takes once they are resolved."""

from __future__ import annotations

from dataclasses import dataclass

from tokensidecar.config import COMMON_SETTINGS, Config, Setting, parse_bool, register

__all__ = ["SETTINGS", "DemoSettings"]


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


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs, how often and where."""

    #: ``TOKENSIDECAR_DEMO_FLOW``: the flows to run, in order.
    flows: tuple[str, ...] = ("sidecar", "gateway")
    #: ``TOKENSIDECAR_DEMO_ROTATIONS``: rotations per flow.
    rotations: int = 3
    #: ``TOKENSIDECAR_DEMO_FOREVER``: keep the last flow rotating until interrupted.
    forever: bool = False
    #: ``TOKENSIDECAR_DEMO_INTERVAL``: seconds between rotations.
    interval: float = 1.0
    #: ``TOKENSIDECAR_DEMO_DIR``: the working directory, or None for a fresh temporary one.
    directory: str | None = None

    @classmethod
    def resolve(cls, config: Config) -> DemoSettings:
        flow = config.optional("demo_flow", str) or "both"
        return cls(
            flows=("sidecar", "gateway") if flow == "both" else (flow,),
            rotations=config.get("rotations", int),
            forever=config.get("forever", bool),
            interval=float(config.get("demo_interval", float)),
            directory=config.optional("demo_dir", str),
        )

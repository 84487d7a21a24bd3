"""Logging: JSON lines by default (one object per line, for collectors), text on request.

Every record — message, extra fields and traceback alike — passes through
:func:`tokensidecar.redact.redact` in the formatter, so no code path can log a token by
accident. Library loggers (hvac, urllib3, kubernetes, aiohttp, and httpx2/httpcore2 under
huggingface_hub) go through the same handler and are held at WARNING to keep request URLs
and bodies out of the logs, in every command (the sidecar, the webhook and ``rotate``).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from tokensidecar.redact import redact

__all__ = ["JsonFormatter", "TextFormatter", "configure"]

# Attributes every LogRecord has; anything else was passed through ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}

# Logger names as the libraries create them: huggingface_hub 2.x talks through httpx2 (which
# logs every request at INFO) and httpcore2, not httpx/httpcore.
_NOISY_LIBRARIES = (
    "urllib3",
    "hvac",
    "kubernetes",
    "aiohttp",
    "asyncio",
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore2",
    "huggingface_hub",
)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in _extras(record).items():
            entry[key] = _clean(value)
        if record.exc_info:
            entry["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S")
        # A field with no value (expires_at of a token without a known expiry) is left out:
        # "expires_at=None" is Python talking, not the log.
        fields = " ".join(f"{k}={_clean(v)}" for k, v in _extras(record).items() if v is not None)
        line = f"{stamp} {record.levelname.lower():7} {redact(record.getMessage())}"
        if fields:
            line += f" {fields}"
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


def configure(*, fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    """Install the redacting handler on the root logger (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))

"""One logging set-up for every command, servers and nydus alike.

A line reads ``2025-01-31T14:02:03.512+01:00 WARNING damselfly.mirror.app: <message>``:
the time with milliseconds and its UTC offset (lines of several nodes sort and line up),
the level (what to grep for), and the module that logged (where to look).
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Formatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - the base's name
        return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")


def configure_logging(level: str = "info") -> None:
    """Log ``level`` and above to stderr (journald, a container runtime or a FUSE server's
    log file takes it from there). A process that has handlers already keeps them."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])

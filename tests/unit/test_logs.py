"""The one log line format of every command: time with its offset, level, module, message."""

from __future__ import annotations

import re
import subprocess
import sys

SCRIPT = """
import logging
from damselfly.lib.logs import configure_logging
configure_logging("warning")
logging.getLogger("damselfly.mirror.app").info("below the level")
logging.getLogger("damselfly.mirror.app").warning("cut off %s", "a client")
"""


def test_a_line_carries_iso_time_with_offset_level_and_module() -> None:
    """In a process of its own: logging is set up once per process, as each command does."""
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=30, check=True)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d WARNING damselfly\.mirror\.app: "
                        r"cut off a client\n", result.stderr), result.stderr

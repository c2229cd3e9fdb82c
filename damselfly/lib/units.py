"""Human sizes and durations for flags and config files (pure)."""

from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(text: str | int) -> int:
    """``"20GiB"`` -> bytes. Decimal suffixes (kB, MB, GB) count in 1000s, binary (KiB, Mi) in 1024s."""
    if isinstance(text, int):
        return text
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"invalid size {text!r}: want a number with an optional unit such as 512MiB or 20GB")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    power = _POWERS[unit[:1]] if unit[:1] in _POWERS else 0
    base = 1024 if "i" in unit or unit in {"k", "m", "g", "t", "p"} else 1000
    return int(number * base**power)


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")

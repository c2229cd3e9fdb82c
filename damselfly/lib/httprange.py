"""Single byte-range requests (RFC 9110 section 14), as pure functions."""

from __future__ import annotations

from dataclasses import dataclass


class RangeNotSatisfiable(Exception):
    """The range lies outside the representation: answer 416 with ``bytes */length``."""


class RangeInvalid(Exception):
    """The Range header is malformed or asks for something we do not serve."""


@dataclass(frozen=True)
class ByteRange:
    """Inclusive first and last byte positions, already clamped to the length."""

    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def content_range(self, length: int) -> str:
        return f"bytes {self.first}-{self.last}/{length}"


def parse_range(header: str | None, length: int) -> ByteRange | None:
    """Resolve a ``Range`` header against a representation of ``length`` bytes.

    Returns None when there is no header (serve everything). Supports ``a-b``, ``a-``
    and ``-n``; several ranges at once are refused rather than silently ignored.
    """
    if header is None:
        return None
    unit, sep, spec = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes":
        raise RangeInvalid(f"unsupported Range header {header!r}: want bytes=first-last")
    spec = spec.strip()
    if "," in spec:
        raise RangeInvalid("multiple ranges in one request are not supported")
    first_text, dash, last_text = spec.partition("-")
    first_text, last_text = first_text.strip(), last_text.strip()
    if not dash or not (first_text.isdigit() or first_text == "") or not (last_text.isdigit() or last_text == ""):
        raise RangeInvalid(f"malformed Range header {header!r}")
    if first_text == "":
        if last_text == "":
            raise RangeInvalid(f"malformed Range header {header!r}")
        suffix = int(last_text)
        if suffix == 0 or length == 0:
            raise RangeNotSatisfiable(f"suffix range of {suffix} bytes on {length} bytes")
        return ByteRange(max(0, length - suffix), length - 1)
    first = int(first_text)
    if last_text and int(last_text) < first:
        raise RangeInvalid(f"malformed Range header {header!r}: last byte before first")
    if first >= length:
        raise RangeNotSatisfiable(f"range starts at {first}, past the end ({length} bytes)")
    last = int(last_text) if last_text else length - 1
    return ByteRange(first, min(last, length - 1))

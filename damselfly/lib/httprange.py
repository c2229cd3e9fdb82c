"""Single byte-range requests (RFC 9110 section 14), as pure functions."""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 9110 byte ranges with optional blanks (SP, HTAB) around the parts. [0-9] and
# re.ASCII, not str.isdigit(): "١" and "¹" are digits to Python but not to HTTP.
_RANGE = re.compile(r"[ \t]*bytes[ \t]*=[ \t]*(?P<first>[0-9]*)[ \t]*-[ \t]*(?P<last>[0-9]*)[ \t]*",
                    re.ASCII | re.IGNORECASE)
_POSITION_DIGITS = 18
_BEYOND_ANY_BLOB = 10**_POSITION_DIGITS


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
    Anything else, non-ASCII digits included, raises RangeInvalid (a 400), never a crash.
    """
    if header is None:
        return None
    if "," in header:
        raise RangeInvalid("multiple ranges in one request are not supported")
    match = _RANGE.fullmatch(header)
    if match is None or match["first"] == match["last"] == "":
        raise RangeInvalid(f"malformed Range header {header!r}: want bytes=first-last, bytes=first- or bytes=-suffix")
    first_text, last_text = match["first"], match["last"]
    if first_text == "":
        suffix = _position(last_text)
        if suffix == 0 or length == 0:
            raise RangeNotSatisfiable(f"suffix range of {suffix} bytes on {length} bytes")
        return ByteRange(max(0, length - suffix), length - 1)
    first = _position(first_text)
    if last_text and _position(last_text) < first:
        raise RangeInvalid(f"malformed Range header {header!r}: last byte before first")
    if first >= length:
        raise RangeNotSatisfiable(f"range starts at {first}, past the end ({length} bytes)")
    last = _position(last_text) if last_text else length - 1
    return ByteRange(first, min(last, length - 1))


def _position(digits: str) -> int:
    """A byte position from ASCII digits, at most ``_BEYOND_ANY_BLOB``.

    No blob is that long, so capping changes no answer (but for two such positions in
    the wrong order: 416, not 400), and int() never sees more than its 4300-digit limit.
    """
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= _POSITION_DIGITS else _BEYOND_ANY_BLOB

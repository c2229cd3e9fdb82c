"""copy_within: the TLS stand-in for sendfile sends the right bytes and cuts off a receiver that stops."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from damselfly.lib.filesend import COPY_STEP, STALLED, copy_within


def test_sends_exactly_the_span_in_steps(tmp_path: Path) -> None:
    data = os.urandom(3 * COPY_STEP + 12345)
    (tmp_path / "blob").write_bytes(data)
    written: list[bytes] = []

    async def write(chunk: bytes) -> None:
        written.append(chunk)

    with open(tmp_path / "blob", "rb") as f:
        asyncio.run(copy_within(write, f, 777, len(data) - 1000, timeout=5))
    assert b"".join(written) == data[777:len(data) - 223]
    assert max(len(c) for c in written) == COPY_STEP


def test_a_receiver_that_stops_reading_is_cut_off(tmp_path: Path) -> None:
    (tmp_path / "blob").write_bytes(os.urandom(2 * COPY_STEP))

    async def never(_: bytes) -> None:
        await asyncio.Event().wait()

    with open(tmp_path / "blob", "rb") as f, pytest.raises(ConnectionAbortedError, match=STALLED):
        asyncio.run(copy_within(never, f, 0, 2 * COPY_STEP, timeout=0.2))


def test_a_file_shorter_than_the_span_is_an_error_not_a_short_body(tmp_path: Path) -> None:
    (tmp_path / "blob").write_bytes(b"x" * 100)

    async def write(_: bytes) -> None:
        pass

    with open(tmp_path / "blob", "rb") as f, pytest.raises(OSError, match="ends at 100"):
        asyncio.run(copy_within(write, f, 0, 200, timeout=5))

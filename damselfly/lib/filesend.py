"""sendfile(2) to an asyncio transport, with a deadline for a receiver that stops reading."""

from __future__ import annotations

import asyncio
from typing import BinaryIO

SLICE = 4 * 1024 * 1024  # per loop.sendfile call: each gets the whole timeout
STALLED = "the receiver stopped reading"


async def sendfile_within(transport: asyncio.Transport, file: BinaryIO, offset: int, count: int,
                          timeout: float) -> None:
    """Send ``count`` bytes of ``file`` from ``offset``, zero-copy, in slices of 4 MiB.

    A receiver that takes more than ``timeout`` seconds over one slice is cut off with
    ConnectionAbortedError: without a deadline, one that stops reading (frozen, or behind
    a link that drops everything) would hold its handler, the open file and any slot
    for as long as TCP keeps retrying. The caller must then abort the connection.
    """
    loop = asyncio.get_running_loop()
    end = offset + count
    while offset < end:
        part = min(end - offset, SLICE)
        try:
            async with asyncio.timeout(timeout):
                await loop.sendfile(transport, file, offset, part)
        except TimeoutError:
            raise ConnectionAbortedError(STALLED) from None
        offset += part

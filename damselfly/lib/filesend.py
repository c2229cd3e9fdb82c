"""sendfile(2) to an asyncio transport, with a deadline for a receiver that stops reading."""

from __future__ import annotations

import asyncio
from typing import BinaryIO

SLICE = 4 * 1024 * 1024  # per loop.sendfile call: each gets the whole timeout
FLUSH_POLL = 0.01  # seconds between looks at a transport's queue (only while headers wait behind a full socket)
STALLED = "the receiver stopped reading"


async def sendfile_within(transport: asyncio.Transport, file: BinaryIO, offset: int, count: int,
                          timeout: float, fallback: bool = True) -> None:
    """Send ``count`` bytes of ``file`` from ``offset``, zero-copy, in slices of 4 MiB.

    A receiver that takes more than ``timeout`` seconds over one slice is cut off with
    ConnectionAbortedError: without a deadline, one that stops reading (frozen, or behind
    a link that drops everything) would hold its handler, the open file and any slot
    for as long as TCP keeps retrying. The caller must then abort the connection.
    ``fallback=False`` refuses asyncio's read-and-write fallback, which may return with
    bytes still queued in the transport: for callers that write to the socket next.
    """
    loop = asyncio.get_running_loop()
    end = offset + count
    while offset < end:
        part = min(end - offset, SLICE)
        try:
            async with asyncio.timeout(timeout):
                await _flushed(transport)
                await loop.sendfile(transport, file, offset, part, fallback=fallback)
        except TimeoutError:
            raise ConnectionAbortedError(STALLED) from None
        offset += part


async def _flushed(transport: asyncio.Transport) -> None:
    """Until the transport has handed the kernel all it holds (the response headers, when
    the socket is full). loop.sendfile waits for that itself, but a timeout that fell in
    that wait would leave the transport half torn down (CPython 3.11), and asyncio has no
    public way to be woken then: the queue is polled, rarely needed and bounded by the
    caller's deadline."""
    while transport.get_write_buffer_size() and not transport.is_closing():
        await asyncio.sleep(FLUSH_POLL)

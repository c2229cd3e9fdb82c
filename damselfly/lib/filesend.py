"""sendfile(2) to an asyncio transport, with a deadline for a receiver that stops reading;
and its stand-in for TLS connections, which the kernel cannot sendfile to here."""

from __future__ import annotations

import asyncio
import os
from typing import Awaitable, BinaryIO, Callable

SLICE = 4 * 1024 * 1024  # per loop.sendfile call: each gets the whole timeout
# Bytes per write on a TLS connection. asyncio's own fallback for sendfile there sends
# 256 KiB at a time through its SSL protocol: 512 MiB went at 91 MB/s for 6.5 CPU seconds
# on this machine; written 1 MiB at a time through the stream's flow control, at 1205 MB/s
# for 0.73 s (256 KiB: 918 MB/s; 4 MiB: 867).
COPY_STEP = 1024 * 1024
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


async def copy_within(write: Callable[[bytes], Awaitable[None]], file: BinaryIO, offset: int, count: int,
                      timeout: float) -> None:
    """Send ``count`` bytes of ``file`` from ``offset`` with ``write`` (a response's, which
    waits while the connection's buffer is full), read on a worker thread in steps of
    COPY_STEP; a receiver that takes more than ``timeout`` over a step is cut off as
    ``sendfile_within`` cuts it off."""
    loop = asyncio.get_running_loop()
    end = offset + count
    while offset < end:
        data = await loop.run_in_executor(None, os.pread, file.fileno(), min(end - offset, COPY_STEP), offset)
        if not data:
            raise OSError(f"{file.name} ends at {offset}, before {end}")
        try:
            async with asyncio.timeout(timeout):
                await write(data)
        except TimeoutError:
            raise ConnectionAbortedError(STALLED) from None
        offset += len(data)


async def _flushed(transport: asyncio.Transport) -> None:
    """Until the transport has handed the kernel all it holds (the response headers, when
    the socket is full). loop.sendfile waits for that itself, but a timeout that fell in
    that wait would leave the transport half torn down (CPython 3.11), and asyncio has no
    public way to be woken then: the queue is polled, rarely needed and bounded by the
    caller's deadline."""
    while transport.get_write_buffer_size() and not transport.is_closing():
        await asyncio.sleep(FLUSH_POLL)

"""Waiting on an asyncio event with a deadline, without losing a cancellation.

Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that arrives just as the
awaited future completes; a loop that waits that way may then never stop. The
``asyncio.timeout`` context manager does not have that flaw.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable


async def wait_until_set(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; True if it was set."""
    return await within(event.wait(), timeout)


async def within(awaitable: Awaitable[object], timeout: float) -> bool:
    """Await ``awaitable`` at most ``timeout`` seconds; True if it finished in time."""
    try:
        async with asyncio.timeout(timeout):
            await awaitable
    except TimeoutError:
        return False
    return True

"""A token bucket for upload bandwidth (pure core, asyncio wait around it)."""

from __future__ import annotations

import asyncio
import time
from typing import Callable


class TokenBucket:
    """``rate`` bytes per second, bursts up to ``burst`` bytes.

    ``reserve(n)`` takes n tokens (going into debt if needed) and says how long the
    caller must wait before sending, so callers queue fairly in the order they ask.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()

    def reserve(self, n: int) -> float:
        self._refill()
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def backlog(self) -> float:
        """Seconds a caller asking now would wait for those already queued (0 without debt)."""
        self._refill()
        return max(0.0, -self._tokens / self.rate)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self, n: int) -> None:
        delay = self.reserve(n)
        if delay > 0:
            await asyncio.sleep(delay)

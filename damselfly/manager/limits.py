"""Sign-in failures counted per name and per address over a sliding minute (pure).

A caller may fail ``limit`` times a window; past that, every attempt for that name or from
that address is refused (429) without checking the password (which would cost an argon2
hash) until the oldest failure leaves the window. Successes clear nothing: otherwise an
attacker could sign in to an account of their own between guesses. The number of keys
kept is bounded, so a flood of invented names cannot grow memory without end. An attempt
is counted before its password is checked and forgiven when it succeeds (``forgive``), so
parallel guesses cannot all slip in under the limit.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import Callable

MAX_KEYS = 100_000


class FailureLimiter:
    def __init__(self, limit: int, window: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = MAX_KEYS) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit and window must be positive")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        failures = self._failures.get(key)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures

    def retry_after(self, *keys: str) -> float:
        """Seconds until any of ``keys`` may try again; 0 when all may try now."""
        now = self._clock()
        wait = 0.0
        for key in keys:
            failures = self._recent(key, now)
            if failures is not None and len(failures) >= self.limit:
                wait = max(wait, failures[-self.limit] + self.window - now)
        return wait

    def record_failure(self, *keys: str) -> None:
        now = self._clock()
        for key in keys:
            failures = self._recent(key, now)
            if failures is None:
                failures = self._failures[key] = deque()
            failures.append(now)
            self._failures.move_to_end(key)
            while len(failures) > self.limit:  # more are never needed to decide
                failures.popleft()
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)

    def forgive(self, *keys: str) -> None:
        """Take back the newest failure of each key: an attempt counted before its check that then succeeded."""
        now = self._clock()
        for key in keys:
            failures = self._recent(key, now)
            if failures:
                failures.pop()
                if not failures:
                    del self._failures[key]

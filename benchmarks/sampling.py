"""Reading a number at a fixed interval while a measurement runs (memory, link counters)."""

from __future__ import annotations

import threading
import time
from typing import Callable


class Sampler:
    """Calls ``read`` every ``interval`` seconds from a thread, between ``with`` entry and exit,
    and once more at exit; ``samples`` holds (seconds since entry, value)."""

    def __init__(self, read: Callable[[], int], interval: float) -> None:
        self._read = read
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.samples: list[tuple[float, int]] = []

    def _run(self) -> None:
        started = time.monotonic()
        while True:
            self.samples.append((round(time.monotonic() - started, 2), self._read()))
            if self._stop.wait(self._interval):
                self.samples.append((round(time.monotonic() - started, 2), self._read()))
                return

    @property
    def peak(self) -> int:
        return max((value for _, value in self.samples), default=0)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

"""Waiting on conditions with deadlines, instead of sleeping."""

from __future__ import annotations

import socket
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
        except Exception as exc:  # noqa: BLE001 - the condition may fail until the server is up
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and never one this process handed out before: nothing
    binds a port between two calls, so the kernel may offer the same one twice (a daemon then
    got it for both its mirror and its upload server, and could not start)."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port left that this process has not handed out")

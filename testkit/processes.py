"""Stopping the servers the tests start, and reading their Prometheus metrics."""

from __future__ import annotations

import ssl
import subprocess
import threading
from typing import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


def stop_process(process: subprocess.Popen | None, kill: bool = False, grace: float = 15) -> None:
    """SIGTERM (or SIGKILL), then SIGKILL if it has not exited within ``grace`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.kill() if kill else process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_healthy(process: subprocess.Popen | None, url: str, what: str, log: Callable[[], str] = lambda: "") -> None:
    """Until ``url``/healthy answers 200; a process that exits or never answers within 20 s
    is stopped (not left behind) and its log's end is in the error."""
    from testkit.wait import wait_until

    def healthy() -> bool:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {log()[-3000:]}")
        return httpx.get(f"{url}/healthy", timeout=1, verify=verify_for(url)).status_code == 200

    try:
        wait_until(healthy, 20, what)
    except BaseException:
        stop_process(process)
        raise


def verify_for(url: str) -> ssl.SSLContext | bool:
    """What httpx verifies a test server with: a member's context for the cluster's HTTPS ports."""
    from testkit.tls import harness_context

    return harness_context() if url.startswith("https:") else True


def metric(base_url: str, name: str, labels: str = "") -> float:
    """Sum of the samples of ``name`` at ``base_url/metrics`` whose label text contains ``labels``."""
    total = 0.0
    for line in httpx.get(f"{base_url}/metrics", timeout=5, verify=verify_for(base_url)).text.splitlines():
        key, _, value = line.rpartition(" ")
        if not line.startswith("#") and key.split("{")[0] == name and labels in key:
            total += float(value)
    return total


class QuietRequestHandler(BaseHTTPRequestHandler):
    """A test server's handler that keeps its access lines out of the test output."""

    def log_message(self, *args: object) -> None:
        pass


class ThreadedHTTPServer:
    """An http.server on a loopback port, served from a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

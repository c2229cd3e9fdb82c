"""Blocking HTTP connections for worker threads that move blob bytes (piece and origin
transfers), with a short deadline to connect and a longer one for every read."""

from __future__ import annotations

import http.client
import ssl
from urllib.parse import urlsplit


class _Deadlines:
    """Connect (and any TLS handshake) within ``connect_timeout``; then each read may wait ``read_timeout``.

    Also on the reconnect http.client makes by itself when a kept-alive connection was closed.
    """

    connect_timeout: float
    read_timeout: float
    timeout: float | None
    sock: object

    def connect(self) -> None:
        self.timeout = self.connect_timeout
        super().connect()  # type: ignore[misc]
        self.sock.settimeout(self.read_timeout)  # type: ignore[attr-defined]


class TimedHTTPConnection(_Deadlines, http.client.HTTPConnection):
    def __init__(self, host: str, port: int | None, connect_timeout: float, read_timeout: float) -> None:
        super().__init__(host, port, timeout=connect_timeout)
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout


class TimedHTTPSConnection(_Deadlines, http.client.HTTPSConnection):
    def __init__(self, host: str, port: int | None, connect_timeout: float, read_timeout: float) -> None:
        super().__init__(host, port, timeout=connect_timeout, context=ssl.create_default_context())
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout


def connection_for(url: str, connect_timeout: float, read_timeout: float) -> http.client.HTTPConnection:
    """A connection (not yet opened) to the host of an http or https ``url``."""
    parts = urlsplit(url)
    kind = TimedHTTPSConnection if parts.scheme == "https" else TimedHTTPConnection
    return kind(parts.hostname or "", parts.port, connect_timeout, read_timeout)


def request_target(url: str) -> str:
    """The path and query of ``url``, as the request line wants them."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

"""Upstreams that misbehave on purpose, for what a real docker-registry cannot be made to do.

The names say they are fakes: a registry that pauses mid-blob until the test lets it go
on, and a server that accepts connections and never answers.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

from testkit.processes import QuietRequestHandler, ThreadedHTTPServer
from testkit.wait import free_port


@dataclass
class GatedRegistryFake:
    """Serves one blob; sends its first ``gate_at`` bytes, then waits for ``gate`` to open."""

    blob: bytes
    gate_at: int
    gate: threading.Event = field(default_factory=threading.Event)
    blob_gets: int = 0
    port: int = field(default_factory=free_port)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "GatedRegistryFake":
        fake = self

        class Handler(QuietRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", str(len(fake.blob)))
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                fake.blob_gets += 1
                if self.headers.get("Range"):  # bytes=a-b, for peers sent back to the origin: not gated
                    first, last = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
                    self.send_response(206)
                    self.send_header("Content-Length", str(last - first + 1))
                    self.send_header("Content-Range", f"bytes {first}-{last}/{len(fake.blob)}")
                    self.end_headers()
                    self.wfile.write(fake.blob[first:last + 1])
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(fake.blob)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                self.wfile.write(fake.blob[: fake.gate_at])
                self.wfile.flush()
                fake.gate.wait(60)
                self.wfile.write(fake.blob[fake.gate_at:])

        self._server = ThreadedHTTPServer(Handler, self.port)
        return self

    def stop(self) -> None:
        self.gate.set()
        self._server.stop()


class SilentServerFake:
    """Listens and accepts, but never sends a byte: an upstream that hangs."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self.port = self._socket.getsockname()[1]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._socket.close()

"""Upstreams that misbehave on purpose, for what a real docker-registry cannot be made to do.

The names say they are fakes: a registry that pauses mid-blob until the test lets it go
on, one that sends at a fixed rate and counts what it sent, one that sends the manifests
it is told to, true or not, and a server that accepts connections and never answers.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field

from testkit.processes import QuietRequestHandler, ThreadedHTTPServer
from testkit.wait import free_port


@dataclass
class GatedRegistryFake:
    """Serves one blob; sends its first ``gate_at`` bytes, then waits for ``gate`` to open.

    ``gate_ranges``: a range request stops at byte ``gate_at`` of the blob too. ``cut``:
    when the gate opens, hang up instead of sending the rest (the origin dies mid-blob)."""

    blob: bytes
    gate_at: int
    gate: threading.Event = field(default_factory=threading.Event)
    gate_ranges: bool = False
    cut: bool = False
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
                first, last = 0, len(fake.blob) - 1
                if self.headers.get("Range"):  # bytes=a-b: seeds filling by ranges, peers sent back to the origin
                    first, last = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {first}-{last}/{len(fake.blob)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(last - first + 1))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                gated = first < fake.gate_at <= last and (fake.gate_ranges or not self.headers.get("Range"))
                if not gated:
                    self.wfile.write(fake.blob[first:last + 1])
                    return
                self.wfile.write(fake.blob[first:fake.gate_at])
                self.wfile.flush()
                fake.gate.wait(60)
                if fake.cut:
                    self.close_connection = True
                    return
                self.wfile.write(fake.blob[fake.gate_at:last + 1])

        self._server = ThreadedHTTPServer(Handler, self.port)
        return self

    def stop(self) -> None:
        self.gate.set()
        self._server.stop()


@dataclass
class ThrottledRegistryFake:
    """Serves blobs (whole, or in ranges) at ``rate`` bytes per second per connection, and
    counts the blob bytes it sent (``sent``)."""

    rate: int
    blobs: dict[str, bytes] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    sent: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "ThrottledRegistryFake":
        fake = self

        class Handler(QuietRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle(self) -> None:
                with contextlib.suppress(ConnectionError):  # a seed killed mid-blob
                    super().handle()

            def _blob(self) -> bytes | None:
                blob = fake.blobs.get(self.path.split("?")[0].rsplit("/", 1)[-1])
                if blob is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                return blob

            def do_HEAD(self) -> None:  # noqa: N802
                if (blob := self._blob()) is not None:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(blob)))
                    self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                if (blob := self._blob()) is None:
                    return
                first, last = 0, len(blob) - 1
                if self.headers.get("Range"):
                    first, last = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {first}-{last}/{len(blob)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(last - first + 1))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                step = 64 * 1024
                started = time.monotonic()
                for offset in range(first, last + 1, step):
                    ahead = (offset - first) / fake.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)  # the throttle itself, not a wait for anything
                    chunk = blob[offset:min(offset + step, last + 1)]
                    self.wfile.write(chunk)
                    with fake._lock:
                        fake.sent += len(chunk)

        self._server = ThreadedHTTPServer(Handler, self.port)
        return self

    def stop(self) -> None:
        self._server.stop()


@dataclass
class ManifestRegistryFake:
    """Answers ``GET /v2/<name>/manifests/<reference>`` with what ``manifests`` holds for the
    reference: (body, Content-Type, Docker-Content-Digest or None), whatever the body hashes
    to; 404 for any other request."""

    manifests: dict[str, tuple[bytes, str, str | None]] = field(default_factory=dict)
    port: int = field(default_factory=free_port)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "ManifestRegistryFake":
        fake = self

        class Handler(QuietRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                _, _, reference = self.path.partition("/manifests/")
                if reference not in fake.manifests:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body, media_type, digest = fake.manifests[reference]
                self.send_response(200)
                self.send_header("Content-Type", media_type)
                self.send_header("Content-Length", str(len(body)))
                if digest is not None:
                    self.send_header("Docker-Content-Digest", digest)
                self.end_headers()
                with contextlib.suppress(ConnectionError):  # a client that stops reading a body too large
                    self.wfile.write(body)

        self._server = ThreadedHTTPServer(Handler, self.port)
        return self

    def stop(self) -> None:
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

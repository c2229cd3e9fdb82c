"""The nydus commands' HTTP session and registry client against a small HTTP/1.1 server on
loopback: kept-alive connections, redirects, a server that closes idle connections, and
Bearer challenges whose retried request carries its body again."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import http.server
import json
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from damselfly.lib.blockinghttp import Session, tls_context
from damselfly.core.oci import Digest, Origin, SourceUnavailable
from damselfly.registry.blocking import RegistryClient, RegistryError
from damselfly.registry.client import AsyncRegistryClient, RegistryStream
from testkit.proxy import Tinyproxy, tinyproxy


BLOB = bytes(range(256)) * 64


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *_: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def _answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        if self.path.startswith("/drop"):
            self.close_connection = True  # without saying so, as a server timing out an idle connection

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))  # a body it is told of, it waits for
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization")))
        self.server.via.append(self.headers.get("Via"))
        if self.path.startswith("/hop"):
            self._answer(307, headers={"Location": self.server.other + "/landed"})
        elif self.path == "/loop":
            self._answer(302, headers={"Location": "/loop"})
        elif self.path == "/short":  # promises 100 bytes, sends 40 and closes
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"x" * 40)
            self.close_connection = True
        elif self.path.startswith("/token"):
            self._answer(200, json.dumps({"token": "t0k"}).encode())
        elif self.path.startswith("/v2/") and self.headers.get("Authorization") != "Bearer t0k":
            realm = f"{self.server.url}/token"
            self._answer(401, b'{"errors":[]}', {"WWW-Authenticate": f'Bearer realm="{realm}",service="s"'})
        elif self.path.startswith("/v2/ranged/") and "/blobs/sha256:" in self.path:
            first, last = (int(n) for n in self.headers["Range"].removeprefix("bytes=").split("-"))
            self._answer(206, BLOB[first:last + 1], {"Content-Range": f"bytes {first}-{last}/{len(BLOB)}"})
        elif self.path.startswith("/v2/") and "/blobs/sha256:" in self.path:
            self._answer(404)
        else:
            self._answer(200, f"{self.command} {self.path}".encode())

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization")))
        if self.path == "/see-other":
            self._answer(303, headers={"Location": "/after"})
        else:
            self._answer(202, headers={"Location": "/upload/1?_state=abc"})

    def do_PUT(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization")))
        if self.server.challenge_puts:  # as a token that expired between two requests
            self.server.challenge_puts -= 1
            self._answer(401, headers={"WWW-Authenticate": f'Bearer realm="{self.server.url}/token",service="s"'})
            return
        self.server.uploads.append(body)
        if self.path == "/upload-then-drop":  # the server fails after taking the upload, without an answer
            self.close_connection = True
            return
        self._answer(201)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections = 0
        self.seen: list[tuple[str, str, str | None]] = []
        self.uploads: list[bytes] = []
        self.via: list[str | None] = []  # what each GET came through (a proxy adds itself)
        self.challenge_puts = 0
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.other = ""


@contextlib.contextmanager
def _serving(wrap: Callable[[_Server], socket.socket] | None = None) -> Iterator[_Server]:
    server = _Server()
    if wrap is not None:
        server.socket = wrap(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def server() -> Iterator[_Server]:
    with _serving() as first, _serving() as second:
        first.other = second.url
        yield first


def test_kept_alive_connection_serves_the_next_requests(server: _Server) -> None:
    session = Session()
    with session.request("GET", f"{server.url}/a") as response:
        assert b"".join(response.iter_bytes(2)) == b"GET /a"
    with session.request("HEAD", f"{server.url}/b") as response:
        assert response.status_code == 200  # its empty body never read
    assert session.request("GET", f"{server.url}/c").content == b"GET /c"
    assert server.connections == 1
    session.close()


def test_unread_answer_closes_its_connection(server: _Server) -> None:
    session = Session()
    session.request("GET", f"{server.url}/a").close()  # body never read: the connection cannot be reused
    assert session.request("GET", f"{server.url}/b").content == b"GET /b"
    assert server.connections == 2


def test_a_kept_alive_connection_the_server_dropped_is_replaced(server: _Server) -> None:
    session = Session()
    assert session.request("GET", f"{server.url}/drop").content == b"GET /drop"
    assert session.request("GET", f"{server.url}/b").content == b"GET /b"  # the kept one was dead
    assert server.connections == 2


def test_a_connection_idle_too_long_is_not_reused(server: _Server) -> None:
    session = Session(idle_seconds=0.0)  # every kept connection has been idle too long by its next request
    for path in ("/a", "/b"):
        assert session.request("GET", f"{server.url}{path}").content == f"GET {path}".encode()
    assert server.connections == 2


def test_an_upload_is_never_sent_twice(server: _Server) -> None:
    session = Session()
    assert session.request("GET", f"{server.url}/a").content == b"GET /a"  # a live connection kept
    with pytest.raises(ConnectionError):
        session.request("PUT", f"{server.url}/upload-then-drop", {"Content-Length": "3"}, b"abc")
    assert server.uploads == [b"abc"]  # taken once: whether it took effect is the caller's to find out
    assert session.request("PUT", f"{server.url}/upload", {"Content-Length": "3"}, b"def").status_code == 201


def test_a_body_cut_short_is_an_error_and_its_connection_is_not_kept(server: _Server) -> None:
    session = Session()
    with session.request("GET", f"{server.url}/short") as response:
        with pytest.raises(http.client.IncompleteRead):
            b"".join(response.iter_bytes())
    assert not session._idle.get(server.url)


def test_see_other_after_a_post_becomes_a_get_without_the_body(server: _Server) -> None:
    session = Session(read_timeout=5)  # a GET still claiming the POST's body would wait for it, then time out
    response = session.request("POST", f"{server.url}/see-other", {"Content-Length": "3", "Content-Type": "x/y"},
                               b"abc")
    assert response.content == b"GET /after"


def test_redirect_to_another_origin_drops_credentials(server: _Server) -> None:
    session = Session()
    response = session.request("GET", f"{server.url}/hop", {"Authorization": "Bearer secret"})
    assert response.content == b"GET /landed"
    assert server.seen[-1] == ("GET", "/hop", "Bearer secret")
    assert response.url == f"{server.other}/landed"


def test_endless_redirects_are_an_error(server: _Server) -> None:
    with pytest.raises(Exception, match="redirects"):
        Session().request("GET", f"{server.url}/loop")


def test_registry_client_answers_a_bearer_challenge_and_pushes(server: _Server, tmp_path: Path) -> None:
    client = RegistryClient(server.url.removeprefix("http://"), plain_http=True)
    source = tmp_path / "blob"
    source.write_bytes(b"y" * 2_500_000)
    client.push_blob("r", "sha256:" + "0" * 64, source)
    assert server.uploads == [source.read_bytes()]
    assert [entry[:2] for entry in server.seen] == [
        ("HEAD", f"/v2/r/blobs/sha256:{'0' * 64}"), ("GET", "/token?service=s&scope=repository%3Ar%3Apull%2Cpush"),
        ("HEAD", f"/v2/r/blobs/sha256:{'0' * 64}"), ("POST", "/v2/r/blobs/uploads/"),
        ("PUT", f"/upload/1?_state=abc&digest=sha256%3A{'0' * 64}")]
    assert all(entry[2] == "Bearer t0k" for entry in server.seen[2:])
    client.close()


def test_a_challenged_upload_is_sent_again_whole(server: _Server, tmp_path: Path) -> None:
    server.challenge_puts = 1
    client = RegistryClient(server.url.removeprefix("http://"), plain_http=True)
    source = tmp_path / "blob"
    source.write_bytes(os.urandom(3_000_000))  # read from the file in parts: the second send reads it again
    client.push_blob("r", "sha256:" + "1" * 64, source)
    assert server.uploads == [source.read_bytes()]
    assert [entry[0] for entry in server.seen].count("PUT") == 2
    client.close()


def test_registry_errors_are_one_line_messages(server: _Server) -> None:
    client = RegistryClient("127.0.0.1:9", plain_http=True)  # nothing listens on the discard port
    with pytest.raises(RegistryError, match="ConnectionRefusedError"):
        client.manifest("r", "latest")


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[_Server, Path]]:
    """The test server behind TLS, with a certificate for 127.0.0.1 made here; (server, certificate)."""
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(certificate), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    with _serving(lambda server: context.wrap_socket(server.socket, server_side=True)) as server:
        server.url = server.url.replace("http://", "https://")
        yield server, certificate


@pytest.fixture
def proxy(tmp_path: Path, tls_server: tuple[_Server, Path]) -> Iterator[Tinyproxy]:
    """tinyproxy, which tunnels to the TLS server's port too."""
    with tinyproxy(tmp_path / "proxy", connect_ports=[tls_server[0].server_address[1]]) as running:
        yield running


def test_requests_go_through_the_proxy_the_environment_names(server: _Server, proxy: Tinyproxy,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert Session().request("GET", f"{server.url}/through").content == b"GET /through"
    assert server.via[-1] is not None and "tinyproxy" in server.via[-1]
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert Session().request("GET", f"{server.url}/around").content == b"GET /around"
    assert server.via[-1] is None
    monkeypatch.delenv("no_proxy")
    assert Session(trust_env=False).request("GET", f"{server.url}/ignored").content == b"GET /ignored"
    assert server.via[-1] is None


def test_https_goes_through_a_tunnel_of_the_proxy(tls_server: tuple[_Server, Path], proxy: Tinyproxy,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    server, certificate = tls_server
    monkeypatch.setenv("https_proxy", proxy.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))  # the system store, as the environment names it
    tls_context.cache_clear()
    try:
        assert Session().request("GET", f"{server.url}/secret").content == b"GET /secret"
    finally:
        tls_context.cache_clear()
    assert any(line.startswith(f"CONNECT 127.0.0.1:{server.server_address[1]} ") for line in proxy.requests())


def _read_all(stream: RegistryStream) -> bytes:
    buffer = bytearray(stream.length + 1)
    view, total = memoryview(buffer), 0
    while count := stream.readinto(view[total:]):
        total += count
    return bytes(buffer[:total])


def test_the_daemons_blob_downloads_keep_their_connection(server: _Server) -> None:
    """A seed filling nydus ranges makes many downloads from one registry: each read to its
    end leaves the connection for the next; one aborted midway does not go back."""
    origin = Origin(server.url, "ranged/blob", "Bearer t0k")
    digest = Digest.parse("sha256:" + "0" * 64)

    async def downloads() -> None:
        client = AsyncRegistryClient(connect_timeout=5, read_timeout=5)
        try:
            for start in (0, 1000, 16000):
                stream = await client.open_blob(origin, digest, (start, 300))
                assert _read_all(stream) == BLOB[start:start + 300]
                stream.close()
            assert server.connections == 1
            stream = await client.open_blob(origin, digest, (0, 8000))
            stream.abort()  # what it still reads (bytes already queued, or an error) does not matter here
            with contextlib.suppress(SourceUnavailable):
                _read_all(stream)
            stream.close()
            stream = await client.open_blob(origin, digest, (10, 5))
            assert _read_all(stream) == BLOB[10:15]
            stream.close()
            assert server.connections == 2
        finally:
            await client.close()

    asyncio.run(downloads())


def test_an_https_registry_behind_a_proxy_that_wants_credentials(tls_server: tuple[_Server, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy refuses the CONNECT tunnel with a 407: the daemon's downloads and its
    requests through aiohttp both answer 502 saying so, naming the proxy but not its password."""
    server, _ = tls_server
    origin = Origin(server.url, "ranged/blob", "Bearer t0k")
    digest = Digest.parse("sha256:" + "0" * 64)
    with tinyproxy(tmp_path / "proxy", connect_ports=[server.server_address[1]], credentials=("site", "s3cret")) as proxy:
        monkeypatch.setenv("https_proxy", proxy.url.replace("s3cret", "wrong"))

        async def attempts() -> list[SourceUnavailable]:
            client = AsyncRegistryClient(connect_timeout=5, read_timeout=5)
            failures = []
            try:
                for attempt in (client.open_blob(origin, digest, (0, 10)), client.blob_length(origin, digest)):
                    with pytest.raises(SourceUnavailable) as failed:
                        await attempt
                    failures.append(failed.value)
            finally:
                await client.close()
            return failures

        failures = asyncio.run(attempts())
    for failure in failures:
        assert failure.status == 502
        assert "wants credentials (401)" in failure.message  # tinyproxy's answer to a CONNECT (others: 407)
        assert proxy.url.split("@")[1] in failure.message
        assert "wrong" not in failure.message and "s3cret" not in failure.message


def test_abort_ends_a_read_blocked_on_a_server_that_closes_after_its_answer() -> None:
    """An HTTP/1.0 server (or Connection: close) leaves the socket to the answer alone: an
    abort from another thread must still end a read that waits for bytes that never come
    (a daemon stopping with a download stuck on such a registry did not exit)."""
    release = threading.Event()

    class Stalling(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.wfile.flush()
            release.wait(30)

        def log_message(self, *args: object) -> None:
            pass

    stalling = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stalling)
    threading.Thread(target=stalling.serve_forever, daemon=True).start()
    session = Session(read_timeout=60)
    try:
        response = session.request("GET", f"http://127.0.0.1:{stalling.server_address[1]}/blob")
        assert response.raw.read(10) == b"x" * 10
        reader = threading.Thread(target=lambda: response.raw.read(1), daemon=True)
        reader.start()
        response.abort()
        reader.join(5)
        assert not reader.is_alive(), "the read stayed blocked after abort()"
    finally:
        release.set()
        stalling.shutdown()
        session.close()

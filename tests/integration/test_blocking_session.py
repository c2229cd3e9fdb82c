"""The nydus commands' HTTP session and registry client against a small HTTP/1.1 server on
loopback: kept-alive connections, redirects, a server that closes idle connections, and
Bearer challenges whose retried request carries its body again."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from damselfly.lib.blockinghttp import Session
from damselfly.nydus.remote import RegistryClient, RegistryError


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
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization")))
        if self.path.startswith("/hop"):
            self._answer(307, headers={"Location": self.server.other + "/landed"})
        elif self.path == "/loop":
            self._answer(302, headers={"Location": "/loop"})
        elif self.path.startswith("/token"):
            self._answer(200, json.dumps({"token": "t0k"}).encode())
        elif self.path.startswith("/v2/") and self.headers.get("Authorization") != "Bearer t0k":
            realm = f"{self.server.url}/token"
            self._answer(401, b'{"errors":[]}', {"WWW-Authenticate": f'Bearer realm="{realm}",service="s"'})
        elif self.path.startswith("/v2/") and "/blobs/sha256:" in self.path:
            self._answer(404)
        else:
            self._answer(200, f"{self.command} {self.path}".encode())

    def do_POST(self) -> None:  # noqa: N802
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization")))
        self._answer(202, headers={"Location": "/upload/1?_state=abc"})

    def do_PUT(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization")))
        self.server.uploads.append(body)
        self._answer(201)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections = 0
        self.seen: list[tuple[str, str, str | None]] = []
        self.uploads: list[bytes] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.other = ""


@contextlib.contextmanager
def _serving() -> Iterator[_Server]:
    server = _Server()
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


def test_connection_the_server_dropped_is_replaced_and_the_body_sent_again(server: _Server, tmp_path: Path) -> None:
    session = Session()
    assert session.request("GET", f"{server.url}/drop").content == b"GET /drop"
    source = tmp_path / "blob"
    source.write_bytes(b"x" * 3_000_000)
    with source.open("rb") as opened:  # a body read from a file, as uploads are
        def chunks() -> Iterator[bytes]:
            opened.seek(0)
            while chunk := opened.read(1 << 20):
                yield chunk

        answer = session.request("PUT", f"{server.url}/upload", {"Content-Length": "3000000"}, chunks)
    assert answer.status_code == 201
    assert server.uploads == [source.read_bytes()]
    assert server.connections == 2


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


def test_registry_errors_are_one_line_messages(server: _Server) -> None:
    client = RegistryClient("127.0.0.1:9", plain_http=True)  # nothing listens on the discard port
    with pytest.raises(RegistryError, match="ConnectionRefusedError"):
        client.manifest("r", "latest")

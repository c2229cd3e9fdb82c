"""The piece fetcher against a parent on loopback that misbehaves on request."""

import asyncio
import os
import threading
import time

import pytest

from damselfly.p2p.fetch import BadParent, PieceFetcher, PieceRefused, PieceRequest, TransferFailed
from damselfly.p2p.pieces import piece_digest
from tests.support.processes import QuietRequestHandler, ThreadedHTTPServer
from tests.support.wait import free_port

PIECE = os.urandom(3 * 1024 * 1024 + 17)  # longer than the fetcher's buffer, not a multiple of it


class Parent:
    """Serves PIECE at /pieces/x/0; how it misbehaves is set per test."""

    def __init__(self) -> None:
        self.mode = "good"
        self.connections = 0
        self.release = threading.Event()
        parent = self

        class Handler(QuietRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def setup(self) -> None:
                super().setup()
                parent.connections += 1

            def do_GET(self) -> None:
                if parent.mode == "missing":
                    self._reply(404, b"not here")
                    return
                body = bytearray(PIECE)
                if parent.mode == "corrupt":
                    body[1000] ^= 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(PIECE)))
                self.send_header("X-Piece-Digest", piece_digest(PIECE) if parent.mode != "lying-seed" else piece_digest(b"x"))
                self.end_headers()
                if parent.mode == "short":
                    self.wfile.write(body[:1000])
                    self.close_connection = True
                elif parent.mode == "stall":
                    self.wfile.write(body[:1000])
                    self.wfile.flush()
                    parent.release.wait(30)
                    self.close_connection = True
                else:
                    self.wfile.write(body)
                if parent.mode == "close-after":
                    self.close_connection = True  # without a Connection: close header, as an idle timeout would

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.port = free_port()
        self.server = ThreadedHTTPServer(Handler, self.port)
        self.url = f"http://127.0.0.1:{self.port}"


@pytest.fixture
def parent():
    server = Parent()
    yield server
    server.release.set()
    server.server.stop()


def request(parent: Parent, path, offset=4096, digest=None, seed=False) -> PieceRequest:
    return PieceRequest(parent.url, "/pieces/x/0", len(PIECE), path, offset,
                        digest=digest if digest is not None or seed else piece_digest(PIECE), trust_sent_digest=seed)


def run(coroutine_factory):
    return run_with(coroutine_factory, workers=2)


def run_with(coroutine_factory, workers: int):
    async def main():
        fetcher = PieceFetcher(workers, read_timeout=10)
        try:
            return await coroutine_factory(fetcher)
        finally:
            await fetcher.close()
    return asyncio.run(main())


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "task"
    path.write_bytes(b"\0" * (len(PIECE) + 8192))
    return path


def test_a_piece_lands_at_its_offset_over_one_kept_alive_connection(parent, data_file):
    async def go(fetcher):
        for _ in range(3):
            assert await fetcher.fetch(request(parent, data_file)) == piece_digest(PIECE)
    run(go)
    data = data_file.read_bytes()
    assert data[4096:4096 + len(PIECE)] == PIECE and data[:4096] == b"\0" * 4096
    assert parent.connections <= 2  # one per worker thread at most, not one per piece


def test_a_connection_the_parent_closed_while_idle_is_replaced(parent, data_file):
    parent.mode = "close-after"

    async def go(fetcher):
        for _ in range(3):
            assert await fetcher.fetch(request(parent, data_file)) == piece_digest(PIECE)
    run(go)
    assert parent.connections >= 2


def test_a_seed_digest_is_trusted_and_a_peer_without_one_is_refused(parent, data_file):
    async def go(fetcher):
        assert await fetcher.fetch(request(parent, data_file, seed=True)) == piece_digest(PIECE)
        with pytest.raises(PieceRefused, match="no trusted digest"):
            await fetcher.fetch(PieceRequest(parent.url, "/pieces/x/0", len(PIECE), data_file, 0, None, False))
    run(go)


@pytest.mark.parametrize(("mode", "error", "message"), [
    ("corrupt", BadParent, "does not match"),
    ("lying-seed", BadParent, "does not match"),
    ("short", BadParent, "sent 1000 of"),
    ("missing", PieceRefused, "answered 404"),
])
def test_a_parent_that_misbehaves_is_named_for_it(parent, data_file, mode, error, message):
    parent.mode = mode

    async def go(fetcher):
        with pytest.raises(error, match=message):
            await fetcher.fetch(request(parent, data_file, seed=mode == "lying-seed"))
    run(go)


def test_an_unknown_digest_algorithm_is_the_parents_fault(parent, data_file):
    async def go(fetcher):
        with pytest.raises(BadParent, match="unknown piece digest algorithm"):
            await fetcher.fetch(request(parent, data_file, digest="md5:abc"))
    run(go)


def test_closing_the_fetcher_breaks_off_a_stalled_transfer_at_once(parent, data_file):
    parent.mode = "stall"

    async def go(fetcher):
        transfer = asyncio.ensure_future(fetcher.fetch(request(parent, data_file)))
        deadline = time.monotonic() + 10
        while parent.connections == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await fetcher.close()
        with pytest.raises(TransferFailed):
            await transfer
        return time.monotonic() - started
    assert run(go) < 5  # not the 10 s read timeout


def test_a_worker_keeps_a_bounded_number_of_idle_connections(data_file, monkeypatch):
    import damselfly.p2p.fetch as fetch

    monkeypatch.setattr(fetch, "CONNECTIONS_PER_WORKER", 2)
    parents = [Parent() for _ in range(4)]
    try:
        async def go(fetcher):
            for parent in parents:
                await fetcher.fetch(request(parent, data_file))
            return sum(c.sock is not None for c in fetcher._connections)
        assert run_with(go, workers=1) <= 2
    finally:
        for parent in parents:
            parent.server.stop()

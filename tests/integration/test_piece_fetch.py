"""The piece fetcher against a parent on loopback that misbehaves on request."""

import asyncio
import os
import threading
import time

import pytest

from damselfly.network.fetch import BadParent, PieceCorrupt, PieceFetcher, PieceRefused, PieceRequest, TransferFailed
from damselfly.core.pieces import piece_digest
from damselfly.core.wire import piece_trailer, run_body_length
from testkit.processes import QuietRequestHandler, ThreadedHTTPServer
from testkit.wait import free_port

PIECE = os.urandom(3 * 1024 * 1024 + 17)  # longer than the fetcher's buffer, not a multiple of it
RUN = [os.urandom(300 * 1024) for _ in range(3)]  # a blob of three small pieces, for runs


class Parent:
    """Serves PIECE at /pieces/x/0, and RUN's pieces at /pieces/run/<i>?count=<n> (as many as
    it ``holds``); how it misbehaves is set per test."""

    def __init__(self) -> None:
        self.mode = "good"
        self.holds = len(RUN)
        self.connections = 0
        self.requests = 0
        self.release = threading.Event()
        parent = self

        class Handler(QuietRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def setup(self) -> None:
                super().setup()
                parent.connections += 1

            def do_GET(self) -> None:
                parent.requests += 1
                if parent.mode == "missing":
                    self._reply(404, b"not here")
                    return
                if self.path.startswith("/pieces/run/"):
                    self._run()
                    return
                body = bytearray(PIECE)
                if parent.mode == "corrupt":
                    body[1000] ^= 1
                body += piece_trailer(piece_digest(PIECE) if parent.mode != "lying-seed" else piece_digest(b"x"))
                self.send_response(200)
                if parent.mode == "trickle-close":
                    self.send_header("Connection", "close")  # http.client then lets go of the socket
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if parent.mode == "short":
                    self.wfile.write(body[:1000])
                    self.close_connection = True
                elif parent.mode.startswith("trickle"):  # a little within every read timeout, for ever
                    for start in range(0, len(body), 4096):
                        if parent.release.wait(0.05):
                            break
                        self.wfile.write(body[start:start + 4096])
                        self.wfile.flush()
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

            def _run(self) -> None:
                path, _, query = self.path.partition("?count=")
                first = int(path.rsplit("/", 1)[1])
                pieces = [bytearray(p) for p in RUN[first:min(first + int(query or 1), parent.holds)]]
                if parent.mode == "corrupt-second":
                    pieces[1][7] ^= 1
                count = len(pieces) + (1 if parent.mode == "too-many" else 0)
                self.send_response(200)
                self.send_header("Content-Length", str(run_body_length([len(p) for p in pieces])))
                self.send_header("X-Piece-Count", str(count))
                self.end_headers()
                for piece, sent in zip(pieces, RUN[first:], strict=False):
                    self.wfile.write(piece + piece_trailer(piece_digest(sent)))

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
    return PieceRequest(parent.url, "x", 0, (len(PIECE),), path, offset,
                        (digest if digest is not None or seed else piece_digest(PIECE),), trust_sent_digest=seed)


def run_request(parent: Parent, path, first=0, count=3, seed=True) -> PieceRequest:
    pieces = RUN[first:first + count]
    return PieceRequest(parent.url, "run", first, tuple(map(len, pieces)), path, sum(map(len, RUN[:first])),
                        (None,) * len(pieces) if seed else tuple(map(piece_digest, pieces)), trust_sent_digest=seed)


class Landed(list):
    """on_piece for the fetcher: the (index, digest) pairs, in the order they landed."""

    def __call__(self, index: int, digest: str) -> None:
        self.append((index, digest))


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
            landed = Landed()
            assert await fetcher.fetch(request(parent, data_file), landed) == 1
            assert landed == [(0, piece_digest(PIECE))]
    run(go)
    data = data_file.read_bytes()
    assert data[4096:4096 + len(PIECE)] == PIECE and data[:4096] == b"\0" * 4096
    assert parent.connections <= 2  # one per worker thread at most, not one per piece


def test_a_connection_the_parent_closed_while_idle_is_replaced(parent, data_file):
    parent.mode = "close-after"

    async def go(fetcher):
        for _ in range(3):
            assert await fetcher.fetch(request(parent, data_file), Landed()) == 1
    run(go)
    assert parent.connections >= 2


def test_a_seed_digest_is_trusted_and_a_peer_without_one_is_refused(parent, data_file):
    async def go(fetcher):
        landed = Landed()
        assert await fetcher.fetch(request(parent, data_file, seed=True), landed) == 1
        assert landed == [(0, piece_digest(PIECE))]
        with pytest.raises(PieceRefused, match="no trusted digest"):
            await fetcher.fetch(PieceRequest(parent.url, "x", 0, (len(PIECE),), data_file, 0, (None,), False), landed)
    run(go)


@pytest.mark.parametrize(("mode", "error", "message"), [
    ("corrupt", BadParent, "does not match"),
    ("lying-seed", BadParent, "does not match"),
    ("short", BadParent, "sent too few bytes"),
    ("missing", PieceRefused, "answered 404"),
])
def test_a_parent_that_misbehaves_is_named_for_it(parent, data_file, mode, error, message):
    parent.mode = mode

    async def go(fetcher):
        with pytest.raises(error, match=message):
            await fetcher.fetch(request(parent, data_file, seed=mode == "lying-seed"), Landed())
    run(go)


def test_an_unknown_digest_algorithm_is_the_parents_fault(parent, data_file):
    async def go(fetcher):
        with pytest.raises(BadParent, match="unknown piece digest algorithm"):
            await fetcher.fetch(request(parent, data_file, digest="md5:abc"), Landed())
    run(go)


def test_closing_the_fetcher_breaks_off_a_stalled_transfer_at_once(parent, data_file):
    parent.mode = "stall"

    async def go(fetcher):
        transfer = asyncio.ensure_future(fetcher.fetch(request(parent, data_file), Landed()))
        deadline = time.monotonic() + 10
        while parent.connections == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await fetcher.close()
        with pytest.raises(TransferFailed):
            await transfer
        return time.monotonic() - started
    assert run(go) < 5  # not the 10 s read timeout


@pytest.mark.parametrize("mode", ["trickle", "trickle-close"])
def test_a_parent_that_trickles_a_piece_is_given_up_on_after_the_piece_deadline(parent, data_file, mode):
    parent.mode = mode  # 80 KB/s: every read succeeds well within the read timeout

    async def go(fetcher):
        started = time.monotonic()
        with pytest.raises(TransferFailed, match="took over 1s"):
            await fetcher.fetch(request(parent, data_file), Landed())
        return time.monotonic() - started

    async def with_deadline():
        fetcher = PieceFetcher(2, read_timeout=10, piece_deadline=1)
        try:
            return await go(fetcher)
        finally:
            await fetcher.close()
    assert asyncio.run(with_deadline()) < 5  # not the 40 s the whole piece would take


def test_a_worker_keeps_a_bounded_number_of_idle_connections(data_file, monkeypatch):
    import damselfly.network.fetch as fetch

    monkeypatch.setattr(fetch, "CONNECTIONS_PER_WORKER", 2)
    parents = [Parent() for _ in range(4)]
    try:
        async def go(fetcher):
            for parent in parents:
                await fetcher.fetch(request(parent, data_file), Landed())
            return sum(c.sock is not None for c in fetcher._connections)
        assert run_with(go, workers=1) <= 2
    finally:
        for parent in parents:
            parent.server.stop()


@pytest.mark.parametrize("seed", [True, False], ids=["digests-from-the-seed", "digests-from-the-scheduler"])
def test_a_run_of_pieces_comes_in_one_request_each_checked_as_it_lands(parent, data_file, seed):
    landed = Landed()

    async def go(fetcher):
        return await fetcher.fetch(run_request(parent, data_file, seed=seed), landed)
    assert run(go) == 3
    assert landed == [(i, piece_digest(p)) for i, p in enumerate(RUN)]
    assert data_file.read_bytes()[:sum(map(len, RUN))] == b"".join(RUN)
    assert parent.requests == 1


def test_a_parent_sends_the_part_of_a_run_it_holds(parent, data_file):
    parent.holds = 2
    landed = Landed()
    assert run(lambda fetcher: fetcher.fetch(run_request(parent, data_file, first=1), landed)) == 1
    assert landed == [(1, piece_digest(RUN[1]))]


def test_a_corrupt_piece_in_a_run_keeps_the_ones_before_it(parent, data_file):
    parent.mode = "corrupt-second"
    landed = Landed()

    async def go(fetcher):
        with pytest.raises(PieceCorrupt, match="piece 1 of run"):
            await fetcher.fetch(run_request(parent, data_file), landed)
        return sum(c.sock is not None for c in fetcher._connections)
    assert run(go) == 0  # the rest of the body was not worth reading: the connection went
    assert landed == [(0, piece_digest(RUN[0]))]


def test_a_parent_announcing_more_pieces_than_asked_is_bad(parent, data_file):
    parent.mode = "too-many"
    landed = Landed()
    with pytest.raises(BadParent, match="announced 3 pieces"):
        run(lambda fetcher: fetcher.fetch(run_request(parent, data_file, count=2), landed))
    assert landed == []

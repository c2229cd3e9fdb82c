"""Attacks on the cut-through piece body (each piece followed by its digest trailer),
found in review:

- a parent that sends a piece at once and then drips its 72-byte trailer must not hold a
  fetch worker past the piece deadline;
- a seed whose origin is slow cuts its answer short: that is a refusal, not a bad parent
  (the asker must not drop and report an honest seed and go to the origin itself);
- a seed with no digest for a piece (a blob stored by an earlier version) sends a blank
  trailer: a refusal too.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time

import httpx
import pytest

from damselfly.core.pieces import piece_digest, piece_length_for
from damselfly.core.wire import piece_trailer
from damselfly.network.fetch import BadParent, PieceFetcher, PieceRefused, PieceRequest, TransferFailed
from testkit.cluster import SchedulerProcess, start_peer
from testkit.processes import QuietRequestHandler, ThreadedHTTPServer
from testkit.wait import free_port
from tests.support.fakes import GatedRegistryFake

KiB = 1024
PIECE = os.urandom(256 * KiB)


class LyingParent:
    """Answers every piece request with PIECE and a trailer, misbehaving by ``mode``:
    ``drip-trailer`` sends the piece at once and then its trailer a byte at a time;
    ``blank-trailer`` names no digest after the piece."""

    def __init__(self, mode: str, drip: float = 0.25) -> None:
        self.stop_dripping = threading.Event()
        parent = self

        class Handler(QuietRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                trailer = piece_trailer(None if mode == "blank-trailer" else piece_digest(PIECE))
                body = PIECE + trailer
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode != "drip-trailer":
                    self.wfile.write(body)
                    return
                self.wfile.write(PIECE)
                self.wfile.flush()
                for at in range(len(trailer)):
                    if parent.stop_dripping.wait(drip):
                        self.close_connection = True
                        return
                    self.wfile.write(trailer[at:at + 1])
                    self.wfile.flush()

        self.port = free_port()
        self.server = ThreadedHTTPServer(Handler, self.port)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.stop_dripping.set()
        self.server.stop()


def _fetch(parent: LyingParent, path, *, seed: bool, read_timeout: float, piece_deadline: float, within: float):
    """Fetch piece 0 from ``parent``: what came of it (an exception or the pieces landed),
    and how long it took; gives up after ``within`` seconds."""
    async def main():
        fetcher = PieceFetcher(1, read_timeout=read_timeout, piece_deadline=piece_deadline)
        landed: list[int] = []
        request = PieceRequest(parent.url, "sha256:" + "a" * 64, 0, (len(PIECE),), path, 0,
                               (None if seed else piece_digest(PIECE),), trust_sent_digest=seed)
        started = time.monotonic()
        try:
            await asyncio.wait_for(fetcher.fetch(request, lambda index, _: landed.append(index)), within)
            outcome: object = landed
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test looks at
            outcome = exc
        took = time.monotonic() - started
        parent.stop_dripping.set()  # a worker still reading ends now
        await fetcher.close()
        return outcome, took

    return asyncio.run(main())


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "task"
    path.write_bytes(b"\0" * len(PIECE))
    return path


def test_a_parent_that_drips_its_trailer_is_cut_off_at_the_piece_deadline(data_file):
    """Read timeout 0.3 s, piece deadline 1 s: a byte of trailer every 0.25 s keeps every
    read within the timeout, for 72 x 0.25 = 18 s. The deadline must cover the trailer too."""
    parent = LyingParent("drip-trailer")
    try:
        outcome, took = _fetch(parent, data_file, seed=False, read_timeout=0.3, piece_deadline=1.0, within=6)
    finally:
        parent.stop()
    assert not isinstance(outcome, asyncio.TimeoutError), f"the fetch still hung on the trailer after {took:.1f}s"
    assert isinstance(outcome, TransferFailed), outcome
    assert took < 3


def test_a_blank_trailer_from_a_seed_is_a_refusal_not_a_bad_parent(data_file):
    """A seed without a digest for a piece is not lying: it must not be dropped and reported."""
    parent = LyingParent("blank-trailer")
    try:
        outcome, _ = _fetch(parent, data_file, seed=True, read_timeout=5, piece_deadline=10, within=20)
    finally:
        parent.stop()
    assert isinstance(outcome, PieceRefused) and not isinstance(outcome, BadParent), outcome


def test_a_seed_whose_origin_is_slow_is_not_reported_as_a_bad_parent(tmp_path):
    """The seed's whole GET stalls inside piece 4 for 9 s (slow, not dead). The peer reading
    the blob asks the seed for a run from piece 0; the seed sends pieces 0-3, waits
    RELAY_WAIT for piece 4, and cuts the body. That must not make the peer drop the seed as
    bad, report it to the scheduler, and fetch the blob from the origin itself."""
    blob = os.urandom(8 * 1024 * KiB)
    piece = piece_length_for(len(blob))
    origin = GatedRegistryFake(blob, gate_at=4 * piece + 10 * KiB).start()
    scheduler = SchedulerProcess(tmp_path / "scheduler").start()
    mapping = ["--registry", f"{origin.host}=http://{origin.host}"]
    seed = start_peer(tmp_path / "seed", [scheduler.url], mapping, seed=True)
    peer = start_peer(tmp_path / "peer", [scheduler.url], mapping)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    got: dict[str, bytes] = {}

    def read() -> None:
        got["body"] = httpx.get(f"{peer.url}/v2/app/blobs/{digest}", params={"ns": origin.host}, timeout=120).content

    reader = threading.Thread(target=read)
    try:
        reader.start()
        time.sleep(9)
        reports = scheduler.metric("damselfly_scheduler_bad_parent_reports_total")
        origin.gate.set()
        reader.join(60)
        assert got.get("body") == blob
        dropped = [line for line in peer.log().splitlines() if "dropped parent" in line]
        assert reports == 0 and not dropped, f"an honest seed was reported bad: {dropped}"
        assert origin.blob_gets == 1, "the peer went to the origin itself"
    finally:
        origin.stop()
        peer.stop()
        seed.stop()
        scheduler.stop()

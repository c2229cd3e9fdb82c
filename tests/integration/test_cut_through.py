"""Cut-through: a seed sends the bytes of a piece on while they still arrive from the origin,
and names the piece's digest after them; an origin that dies mid-piece cuts the answer short."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from damselfly.core.pieces import piece_digest, piece_length_for
from damselfly.core.wire import PIECE_TRAILER_SIZE, parse_piece_trailer
from testkit.cluster import SchedulerProcess, start_peer
from testkit.wait import wait_until
from tests.support.fakes import GatedRegistryFake

KiB = 1024
BLOB = os.urandom(2 * 1024 * KiB)
PIECE = piece_length_for(len(BLOB))
GATE = PIECE + 64 * KiB + 10 * KiB  # the origin stalls inside piece 1, past one forwarded step of it


@pytest.fixture
def seed_behind_gate(tmp_path: Path, request):
    """A seed whose origin stalls at GATE, filling the blob by ranges for a peer's range read
    (as for nydus)."""
    origin = GatedRegistryFake(BLOB, gate_at=GATE, gate_ranges=True, cut=request.param == "cut").start()
    scheduler = SchedulerProcess(tmp_path / "scheduler").start()
    mapping = ["--registry", f"{origin.host}=http://{origin.host}"]
    seed = start_peer(tmp_path / "seed", [scheduler.url], mapping, seed=True)
    peer = start_peer(tmp_path / "peer", [scheduler.url], mapping)
    digest = "sha256:" + hashlib.sha256(BLOB).hexdigest()
    reader = httpx.Client(timeout=60)
    try:
        # The seed's first range (pieces 0 and 1) stops at the gate: piece 0 is whole.
        answer = reader.get(f"{peer.url}/v2/app/blobs/{digest}", params={"ns": origin.host},
                            headers={"Range": "bytes=0-99"})
        assert answer.status_code == 206 and answer.content == BLOB[:100]
        yield origin, seed, digest
    finally:
        reader.close()
        origin.stop()
        peer.stop()
        seed.stop()
        scheduler.stop()


def _ask(seed, digest: str, index: int) -> socket.socket:
    """Ask the seed's upload server for one piece; return the socket, its headers read."""
    address = urlsplit(seed.upload_url)
    asker = socket.create_connection((address.hostname, address.port), timeout=30)
    asker.sendall(f"GET /pieces/{digest}/{index} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += asker.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert f"Content-Length: {PIECE + PIECE_TRAILER_SIZE}".encode() in head
    return asker


def _read(asker: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = asker.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("seed_behind_gate", ["open"], indirect=True)
def test_a_seed_sends_a_piece_while_it_arrives_and_its_digest_after_it(seed_behind_gate):
    origin, seed, digest = seed_behind_gate
    with _ask(seed, digest, 1) as asker:
        # The origin has sent only part of piece 1, and waits: what the seed wrote of it comes on.
        first = _read(asker, 64 * KiB)
        assert first == BLOB[PIECE:PIECE + 64 * KiB]
        assert not origin.gate.is_set()
        origin.gate.set()
        rest = _read(asker, PIECE - 64 * KiB + PIECE_TRAILER_SIZE)
    assert first + rest[:-PIECE_TRAILER_SIZE] == BLOB[PIECE:2 * PIECE]
    assert parse_piece_trailer(rest[-PIECE_TRAILER_SIZE:]) == piece_digest(BLOB[PIECE:2 * PIECE])


@pytest.mark.parametrize("seed_behind_gate", ["cut"], indirect=True)
def test_an_origin_that_dies_mid_piece_cuts_the_answer_short(seed_behind_gate):
    origin, seed, digest = seed_behind_gate
    with _ask(seed, digest, 1) as asker:
        assert _read(asker, 64 * KiB) == BLOB[PIECE:PIECE + 64 * KiB]
        origin.gate.set()  # the origin hangs up
        rest = _read(asker, PIECE + PIECE_TRAILER_SIZE)
    assert len(rest) < PIECE - 64 * KiB + PIECE_TRAILER_SIZE, "a piece that never came was answered whole"
    wait_until(lambda: httpx.get(f"{seed.upload_url}/healthy", timeout=5).status_code == 200, 10, "the seed to serve")
    assert "Traceback" not in seed.log()

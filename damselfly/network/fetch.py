"""Piece transfers from parents, on worker threads.

A piece is a few MiB. Received through the event loop it costs dozens of socket reads,
each a Python callback holding the GIL, then a join, a hash and a write handed to other
threads: on a two-core node that caps a child at a fraction of what the parent sends.
Here each transfer runs on one worker thread with blocking keep-alive HTTP: the body
is read straight into a reusable 1 MiB buffer, hashed and written at its offset, all
calls that release the GIL, and the event loop hears once per piece.

Small pieces (256 KiB, so that a nydus read waits for little) would make that a request
per 256 KiB, and a request costs about a millisecond of both sides' CPU here. So one
request may ask for a run of consecutive pieces (``?count=N``): the parent sends as many
of them as it holds (``X-Piece-Count``) in one body, and each is checked and handed to
the event loop as it lands.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import os
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from damselfly.lib.blockinghttp import connection_for
from damselfly.core.pieces import PieceCheck
from damselfly.storage.writer import pwrite_all
from damselfly.core.wire import (COUNT_HEADER, ORIGIN_HEADER, PIECE_DIGEST_HEADER, PIECE_TRAILER_SIZE, RECEIVER_HEADER,
                            RELAY_HEADER, WireError, parse_piece_trailer, run_body_length)

BUFFER_SIZE = 1024 * 1024  # per worker thread, whatever the piece length
PIECE_READ_TIMEOUT = 30.0  # seconds an asker waits for a parent's answer, and between bytes
CONNECTIONS_PER_WORKER = 16  # kept-alive parents per thread: parents come and go, sockets must not pile up


class PieceRefused(Exception):
    """A parent could not give a piece (not held yet, no slot); not its fault."""


class ParentBusy(PieceRefused):
    """Every upload slot of the parent is taken (503): it will have one again soon."""


class PieceRelayed(ParentBusy):
    """A seed already sends this piece to others: get it (and the run's next pieces) from
    ``url``, checked against ``digests``."""

    def __init__(self, url: str, digests: tuple[str, ...]) -> None:
        super().__init__(f"relayed to {url}")
        self.url = url
        self.digests = digests


class BadParent(Exception):
    """A parent sent bytes that are wrong; it is dropped and reported."""


class RunCut(PieceRefused):
    """The parent ended the body before a piece (or its trailer) was whole: it will not
    send it after all (a seed's origin stalled or died, a relay's parent did). Not its fault."""


class PieceCorrupt(BadParent):
    """The bytes a parent sent do not match the piece's digest."""


class TransferFailed(ConnectionError):
    """The connection to a parent broke, timed out, or spoke broken HTTP."""


class PieceWriteFailed(Exception):
    """This node could not write a piece to its file (disk full, file gone): not the parent's fault."""


@dataclass(frozen=True)
class PieceRequest:
    """A run of one or more consecutive pieces of a task, asked of one parent."""

    parent_url: str  # http://host:port of the parent's upload server
    task: str  # the blob's digest
    index: int  # the run's first piece
    sizes: tuple[int, ...]  # each piece's length, in order
    file: Path  # the task's data file; the first piece goes at ``offset``, the rest right after
    offset: int
    digests: tuple[str | None, ...]  # the trusted digest of each piece, where the scheduler gave one
    trust_sent_digest: bool  # the parent is a seed: the digest it sends after each piece is trusted
    receiver: str | None = None  # this node's upload URL, sent to a seed that may relay the piece
    origin: str | None = None  # wire.origin_key of where this node's caller was confirmed: for protected blobs

    @property
    def headers(self) -> dict[str, str]:
        sent = {RECEIVER_HEADER: self.receiver} if self.receiver else {}
        return {**sent, ORIGIN_HEADER: self.origin} if self.origin else sent

    @property
    def path(self) -> str:
        run = f"?count={len(self.sizes)}" if len(self.sizes) > 1 else ""
        return f"/pieces/{self.task}/{self.index}{run}"


class Deadlines:
    """One thread that shuts down the sockets of transfers past their deadline. A read
    timeout alone cannot catch a parent that sends a little within every timeout, and a
    blocking read cannot look at the clock while it waits."""

    def __init__(self, interval: float = 0.25) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[float, socket.socket]] = {}
        self._keys = itertools.count()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, deadline: float) -> int:
        key = next(self._keys)
        with self._lock:
            self._watched[key] = (deadline, sock)
            if self._thread is None:  # started by the first transfer: a fetcher never used costs no thread
                self._thread = threading.Thread(target=self._run, name="piece-deadlines", daemon=True)
                self._thread.start()
        return key

    def release(self, key: int) -> bool:
        """Stop watching; True if the deadline passed first (the socket is shut down)."""
        with self._lock:
            return self._watched.pop(key, None) is None

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            now = time.monotonic()
            with self._lock:  # held while shutting down: once release() returns, the socket is safe
                for key in [key for key, (deadline, _) in self._watched.items() if deadline < now]:
                    with contextlib.suppress(OSError):
                        self._watched.pop(key)[1].shutdown(socket.SHUT_RDWR)


class PieceFetcher:
    """Runs piece transfers on ``workers`` threads, each keeping one connection per parent."""

    def __init__(self, workers: int, connect_timeout: float = 5.0, read_timeout: float = PIECE_READ_TIMEOUT,
                 piece_deadline: float | None = None, context: ssl.SSLContext | None = None) -> None:
        self._context = context  # a cluster member's client context, for https parents
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="piece-fetch")
        self._local = threading.local()
        self._connections: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        # A parent that sends a little within every read timeout would otherwise hold its
        # pieces (nobody else is asked for them) for as long as it likes.
        self._piece_deadline = piece_deadline if piece_deadline is not None else 2 * read_timeout
        self._deadlines = Deadlines()
        self._closed = False

    async def fetch(self, request: PieceRequest, on_piece: Callable[[int, str], None]) -> int:
        """Transfer, verify and write a run of pieces; return how many came.

        ``on_piece(index, digest)`` runs on the event loop as each piece is verified and
        written, before this returns or raises. Raises PieceRefused, BadParent or
        TransferFailed (the parent's side), or PieceWriteFailed (this node's); pieces
        delivered before the failure stay delivered.
        """
        loop = asyncio.get_running_loop()

        def deliver(index: int, digest: str) -> None:
            loop.call_soon_threadsafe(on_piece, index, digest)

        return await loop.run_in_executor(self._pool, self._fetch, request, deliver)

    def _fetch(self, request: PieceRequest, deliver: Callable[[int, str], None]) -> int:
        connection = self._connection(request.parent_url)
        response: http.client.HTTPResponse | None = None
        try:
            reused = connection.sock is not None
            try:
                response, sock = self._send(connection, request)
            except (ConnectionError, http.client.RemoteDisconnected):
                if not reused:
                    raise
                self._discard(connection)  # the parent closed it while idle: one more try on a new one
                connection = self._connection(request.parent_url)
                response, sock = self._send(connection, request)
            if response.status != 200:
                relay, sent_digests = response.getheader(RELAY_HEADER), response.getheader(PIECE_DIGEST_HEADER)
                _drain(response)
                if response.status == 503 and relay and sent_digests and request.trust_sent_digest:
                    raise PieceRelayed(relay, tuple(sent_digests.split(",")[: len(request.sizes)]))
                refusal = {404: PieceRefused, 503: ParentBusy}.get(response.status, BadParent)
                raise refusal(f"answered {response.status} for {request.path}")
            count = self._announced_count(response, request)
            try:
                fd = os.open(request.file, os.O_RDWR)
            except OSError as exc:
                raise PieceWriteFailed(f"{request.file}: {exc.strerror}") from None
            try:
                offset = request.offset
                for position, (size, mine) in enumerate(zip(request.sizes[:count], request.digests, strict=False)):
                    index = request.index + position
                    try:
                        check = PieceCheck(mine)
                    except ValueError as exc:
                        raise BadParent(str(exc)) from None
                    trailer = self._receive(response, sock, request, fd, offset, size, check)
                    digest = self._trusted_digest(mine, trailer, request, index)
                    if not check.matches(digest) and not (mine is None and _file_matches(fd, offset, size, digest)):
                        raise PieceCorrupt(f"piece {index} of {request.task} does not match its digest")
                    deliver(index, digest)
                    offset += size
            finally:
                os.close(fd)
            return count
        except (PieceRefused, BadParent, PieceWriteFailed):
            if response is None or not response.isclosed():
                self._discard(connection)  # whatever body is left is not worth reading
            raise
        except (http.client.HTTPException, OSError) as exc:  # file errors are PieceWriteFailed
            self._discard(connection)
            raise TransferFailed(f"{exc.__class__.__name__}: {exc}") from None

    @staticmethod
    def _announced_count(response: http.client.HTTPResponse, request: PieceRequest) -> int:
        """How many pieces the body carries, its length checked against them; PieceRefused
        before any byte is read when a piece has no digest this node could trust."""
        try:
            count = int(response.getheader(COUNT_HEADER) or 1)
        except ValueError:
            count = 0
        if not 1 <= count <= len(request.sizes):
            raise BadParent(f"announced {response.getheader(COUNT_HEADER)} pieces for {request.path}")
        if response.length != run_body_length(request.sizes[:count]):
            raise BadParent(f"announced {response.length} bytes for {count} pieces of {request.path}")
        if not request.trust_sent_digest and None in request.digests[:count]:
            raise PieceRefused(f"no trusted digest for piece {request.index + request.digests.index(None)} "
                               f"of {request.task} yet")
        return count

    @staticmethod
    def _trusted_digest(mine: str | None, theirs: str | None, request: PieceRequest, index: int) -> str:
        """The digest to check a piece against: the scheduler's, else a seed's trailer."""
        digest = mine or (theirs if request.trust_sent_digest else None)
        if digest is None and request.trust_sent_digest:
            raise PieceRefused(f"has no digest for piece {index} of {request.task}")
        if digest is None:
            raise BadParent(f"sent no digest for piece {index} of {request.task}")
        return digest

    def _receive(self, response: http.client.HTTPResponse, sock: socket.socket, request: PieceRequest,
                 fd: int, offset: int, size: int, check: PieceCheck) -> str | None:
        """Read one piece of the body through a reusable buffer into the file at ``fd``, hashing it on the way.

        The bytes land in the file before the piece is verified; that is safe because
        nothing reads a piece until it is marked present, which needs the check to pass.
        A piece that takes longer than the piece deadline is broken off (TransferFailed).
        """
        buffer: bytearray | None = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = bytearray(BUFFER_SIZE)
        view = memoryview(buffer)
        end = offset + size
        deadline = time.monotonic() + self._piece_deadline
        watched = self._deadlines.watch(sock, deadline)
        try:
            while offset < end:
                try:
                    count = response.readinto(view[: min(BUFFER_SIZE, end - offset)])
                except OSError:
                    if time.monotonic() > deadline:
                        raise self._late(request) from None
                    raise
                if not count:
                    if time.monotonic() > deadline:
                        raise self._late(request)
                    if self._closed:
                        raise TransferFailed("the daemon is shutting down")
                    raise _short(request)
                check.update(view[:count])
                try:
                    pwrite_all(fd, view[:count], offset)
                except OSError as exc:
                    raise PieceWriteFailed(f"{request.file}: {exc.strerror}") from None
                offset += count
            try:
                trailer = _read_trailer(response, request)  # under the same deadline as the piece
            except (OSError, RunCut, BadParent):
                if time.monotonic() > deadline:
                    raise self._late(request) from None
                raise
        except BaseException:
            self._deadlines.release(watched)
            raise
        if self._deadlines.release(watched):  # cut off right after the last byte: the connection is gone
            raise self._late(request)
        return trailer

    def _late(self, request: PieceRequest) -> TransferFailed:
        return TransferFailed(f"a piece of {request.path} took over {self._piece_deadline:g}s")

    @staticmethod
    def _send(connection: http.client.HTTPConnection, request: PieceRequest
              ) -> tuple[http.client.HTTPResponse, socket.socket]:
        """The response, and its socket: taken before the answer, since http.client drops the
        connection's reference to it when the parent answers ``Connection: close``."""
        connection.request("GET", request.path, headers=request.headers)
        sock = connection.sock
        assert sock is not None  # request() connected it
        return connection.getresponse(), sock

    def _connection(self, parent_url: str) -> http.client.HTTPConnection:
        """This thread's connection to the parent; the least recently used go beyond a few."""
        if self._closed:
            raise TransferFailed("the daemon is shutting down")
        connections: OrderedDict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("connections", OrderedDict())
        connection = connections.get(parent_url)
        if connection is not None:
            connections.move_to_end(parent_url)
            return connection
        while len(connections) >= CONNECTIONS_PER_WORKER:
            self._discard(next(iter(connections.values())))
        connection = connection_for(parent_url, self._connect_timeout, self._read_timeout, self._context)
        connections[parent_url] = connection
        with self._lock:
            self._connections.add(connection)
        return connection

    def _discard(self, connection: http.client.HTTPConnection) -> None:
        connection.close()
        connections: OrderedDict[str, http.client.HTTPConnection] = self._local.__dict__.get("connections", OrderedDict())
        for url, known in list(connections.items()):
            if known is connection:
                del connections[url]
        with self._lock:
            self._connections.discard(connection)

    async def close(self) -> None:
        """Break off transfers in progress (their threads wake at once) and stop the workers."""
        self._closed = True
        self._deadlines.stop()
        with self._lock:
            for connection in self._connections:
                if connection.sock is not None:
                    try:
                        connection.sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown, True)


def _read_trailer(response: http.client.HTTPResponse, request: PieceRequest) -> str | None:
    """The digest named after a piece (see wire.PIECE_TRAILER_SIZE)."""
    data = response.read(PIECE_TRAILER_SIZE)
    if len(data) < PIECE_TRAILER_SIZE:
        raise _short(request)
    try:
        return parse_piece_trailer(data)
    except WireError as exc:
        raise BadParent(f"{exc} in {request.path}") from None


def _short(request: PieceRequest) -> BadParent | RunCut:
    """A body that ended early: from a seed, its origin stalled or died mid-piece (cut-through
    cuts the answer short then); from a peer, as before, a bad parent."""
    message = f"sent too few bytes for {request.path}"
    return RunCut(message) if request.trust_sent_digest else BadParent(message)


def _file_matches(fd: int, offset: int, size: int, digest: str) -> bool:
    """Whether the piece written at ``offset`` has ``digest``: for a trailer naming an
    algorithm other than the one the piece was hashed with on the way (a parent's pieces
    stored by an earlier version). Read in buffer-sized steps: a piece may be 64 MiB."""
    try:
        check = PieceCheck(digest)
    except ValueError:
        return False
    for start in range(offset, offset + size, BUFFER_SIZE):
        check.update(os.pread(fd, min(BUFFER_SIZE, offset + size - start), start))
    return check.matches()


def _drain(response: http.client.HTTPResponse) -> None:
    """Read a short error body, so that the connection can carry the next request."""
    if response.length is not None and response.length <= 64 * 1024:
        response.read()


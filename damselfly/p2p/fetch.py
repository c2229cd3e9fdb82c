"""Piece transfers from parents, on worker threads.

A piece is a few MiB. Received through the event loop it costs dozens of socket reads,
each a Python callback holding the GIL, then a join, a hash and a write handed to other
threads: on a two-core node that caps a child at a fraction of what the parent sends.
Here each transfer runs on one worker thread with blocking keep-alive HTTP: the body
is read straight into a reusable 1 MiB buffer, hashed and written at its offset, all
calls that release the GIL, and the event loop hears once per piece.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from damselfly.lib.blockinghttp import connection_for
from damselfly.p2p.pieces import PieceCheck
from damselfly.p2p.writer import pwrite_all

PIECE_DIGEST_HEADER = "X-Piece-Digest"
RECEIVER_HEADER = "X-Piece-Receiver"  # the asker's upload URL: a seed may send later askers there
RELAY_HEADER = "X-Piece-Relay"  # a seed's answer: get the piece from this peer, which has or is getting it
BUFFER_SIZE = 1024 * 1024  # per worker thread, whatever the piece length
CONNECTIONS_PER_WORKER = 16  # kept-alive parents per thread: parents come and go, sockets must not pile up


class PieceRefused(Exception):
    """A parent could not give a piece (not held yet, no slot); not its fault."""


class ParentBusy(PieceRefused):
    """Every upload slot of the parent is taken (503): it will have one again soon."""


class PieceRelayed(ParentBusy):
    """A seed already sends this piece to others: get it from ``url``, checked against ``digest``."""

    def __init__(self, url: str, digest: str) -> None:
        super().__init__(f"relayed to {url}")
        self.url = url
        self.digest = digest


class BadParent(Exception):
    """A parent sent bytes that are wrong; it is dropped and reported."""


class PieceCorrupt(BadParent):
    """The bytes a parent sent do not match the piece's digest."""


class TransferFailed(ConnectionError):
    """The connection to a parent broke, timed out, or spoke broken HTTP."""


class PieceWriteFailed(Exception):
    """This node could not write a piece to its file (disk full, file gone): not the parent's fault."""


@dataclass(frozen=True)
class PieceRequest:
    parent_url: str  # http://host:port of the parent's upload server
    path: str  # /pieces/<digest>/<index>
    size: int
    file: Path  # the task's data file; the piece goes at ``offset``
    offset: int
    digest: str | None  # the trusted digest, if the scheduler gave one
    trust_sent_digest: bool  # the parent is a seed: its X-Piece-Digest is trusted
    receiver: str | None = None  # this node's upload URL, sent to a seed that may relay the piece


class PieceFetcher:
    """Runs piece transfers on ``workers`` threads, each keeping one connection per parent."""

    def __init__(self, workers: int, connect_timeout: float = 5.0, read_timeout: float = 30.0) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="piece-fetch")
        self._local = threading.local()
        self._connections: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._closed = False

    async def fetch(self, request: PieceRequest) -> str:
        """Transfer, verify and write one piece; return its digest.

        Raises PieceRefused, BadParent or TransferFailed (the parent's side), or
        PieceWriteFailed (this node's).
        """
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._fetch, request)

    def _fetch(self, request: PieceRequest) -> str:
        connection = self._connection(request.parent_url)
        response: http.client.HTTPResponse | None = None
        try:
            reused = connection.sock is not None
            try:
                response = self._send(connection, request)
            except (ConnectionError, http.client.RemoteDisconnected):
                if not reused:
                    raise
                self._discard(connection)  # the parent closed it while idle: one more try on a new one
                connection = self._connection(request.parent_url)
                response = self._send(connection, request)
            if response.status != 200:
                relay, sent_digest = response.getheader(RELAY_HEADER), response.getheader(PIECE_DIGEST_HEADER)
                _drain(response)
                if response.status == 503 and relay and sent_digest and request.trust_sent_digest:
                    raise PieceRelayed(relay, sent_digest)
                refusal = {404: PieceRefused, 503: ParentBusy}.get(response.status, BadParent)
                raise refusal(f"answered {response.status} for {request.path}")
            expected = request.digest or (response.getheader(PIECE_DIGEST_HEADER) if request.trust_sent_digest else None)
            if expected is None:
                raise PieceRefused(f"no trusted digest for {request.path} yet")
            if response.length != request.size:
                raise BadParent(f"announced {response.length} bytes for {request.path} of {request.size}")
            try:
                check = PieceCheck(expected)
            except ValueError as exc:
                raise BadParent(str(exc)) from None
            self._receive(response, request, check)
        except (PieceRefused, BadParent, PieceWriteFailed):
            if response is None or not response.isclosed():
                self._discard(connection)  # whatever body is left is not worth reading
            raise
        except (http.client.HTTPException, OSError) as exc:  # file errors are PieceWriteFailed
            self._discard(connection)
            raise TransferFailed(f"{exc.__class__.__name__}: {exc}") from None
        if not check.matches():
            raise PieceCorrupt(f"{request.path} does not match its digest")
        return expected

    def _receive(self, response: http.client.HTTPResponse, request: PieceRequest, check: PieceCheck) -> None:
        """Read the body through a reusable buffer into the file, hashing it on the way.

        The bytes land in the file before the piece is verified; that is safe because
        nothing reads a piece until it is marked present, which needs the check to pass.
        """
        buffer: bytearray | None = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = bytearray(BUFFER_SIZE)
        view = memoryview(buffer)
        try:
            fd = os.open(request.file, os.O_WRONLY)
        except OSError as exc:
            raise PieceWriteFailed(f"{request.file}: {exc.strerror}") from None
        try:
            offset, end = request.offset, request.offset + request.size
            while offset < end:
                count = response.readinto(view[: min(BUFFER_SIZE, end - offset)])
                if not count:
                    if self._closed:
                        raise TransferFailed("the daemon is shutting down")
                    raise BadParent(f"sent {offset - request.offset} of {request.size} bytes of {request.path}")
                check.update(view[:count])
                try:
                    pwrite_all(fd, view[:count], offset)
                except OSError as exc:
                    raise PieceWriteFailed(f"{request.file}: {exc.strerror}") from None
                offset += count
        finally:
            os.close(fd)

    @staticmethod
    def _send(connection: http.client.HTTPConnection, request: PieceRequest) -> http.client.HTTPResponse:
        connection.request("GET", request.path, headers={RECEIVER_HEADER: request.receiver} if request.receiver else {})
        return connection.getresponse()

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
        connection = connection_for(parent_url, self._connect_timeout, self._read_timeout)
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
        with self._lock:
            for connection in self._connections:
                if connection.sock is not None:
                    try:
                        connection.sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown, True)


def _drain(response: http.client.HTTPResponse) -> None:
    """Read a short error body, so that the connection can carry the next request."""
    if response.length is not None and response.length <= 64 * 1024:
        response.read()


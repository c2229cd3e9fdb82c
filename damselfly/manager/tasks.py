"""Where a blob is: the manager asks the active schedulers which peers hold it and how far
each got, and resolves an image reference to its blobs as a preheat does (images.py).

The scheduler answers ``GET /api/v1/tasks/{digest}/peers`` with
``[{host_id, upload_url, pieces, piece_count, done}]`` (404: it has no such task). A
scheduler that cannot be asked, or answers nonsense, is reported by name with the reason;
the others' answers still count.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import aiohttp

from damselfly.core.oci import Digest, OCIError
from damselfly.lib.tls import ClusterTLS, role_hostname
from damselfly.manager.errors import ApiError
from damselfly.manager.images import Credentials, host_platform, image_target, resolve_target
from damselfly.manager.models import BlobLocation, SchedulerReport, TaskPeer, TasksAnswer

log = logging.getLogger(__name__)
MAX_ANSWER_BYTES = 4 << 20
MAX_CONCURRENT_ASKS = 16
REGISTRY_TIMEOUT = 15.0


def parse_digest(text: str) -> str:
    try:
        return str(Digest.parse(text))
    except OCIError as error:
        raise ApiError(400, f"digest: {error.message}") from None


def peers_of_answer(document: Any, scheduler_url: str) -> list[TaskPeer]:
    """A scheduler's answer as TaskPeers; ValueError, saying what is wrong, if it is not one.
    ``pieces`` may be a count or the list of piece numbers held."""
    if not isinstance(document, list):
        raise ValueError("the answer is not a JSON array")
    peers = []
    for entry in document:
        if not isinstance(entry, dict) or not isinstance(entry.get("host_id"), str):
            raise ValueError("an entry has no host_id")
        pieces = entry.get("pieces", 0)
        count = len(pieces) if isinstance(pieces, list) else pieces
        piece_count = entry.get("piece_count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"peer {entry['host_id']}: pieces is not a count")
        if piece_count is not None and (not isinstance(piece_count, int) or isinstance(piece_count, bool)):
            raise ValueError(f"peer {entry['host_id']}: piece_count is not a count")
        upload_url = entry.get("upload_url")
        peers.append(TaskPeer(host_id=entry["host_id"], upload_url=upload_url if isinstance(upload_url, str) else None,
                              pieces=count, piece_count=piece_count, done=bool(entry.get("done", False)),
                              scheduler_url=scheduler_url))
    return peers


def furthest(peers: list[TaskPeer]) -> list[TaskPeer]:
    """One row per host: the one that got furthest. Schedulers sharing Redis may each tell of
    a holder (the owner from memory, the others from what Redis keeps)."""
    best: dict[str, TaskPeer] = {}
    for peer in peers:
        known = best.get(peer.host_id)
        if known is None or (peer.done, peer.pieces) > (known.done, known.pieces):
            best[peer.host_id] = peer
    return list(best.values())


Ask = Callable[[str, str], Awaitable[list[TaskPeer]]]


@dataclass
class _Outcome:
    url: str
    cluster_id: int | None
    error: str | None = None


async def locate(digests: list[str], schedulers: list[tuple[str, int | None]], ask: Ask, image: str | None = None
                 ) -> TasksAnswer:
    """Ask every scheduler about every digest, at most MAX_CONCURRENT_ASKS at once; a
    scheduler's first failure is its report, and its other answers are still used."""
    outcomes = {url: _Outcome(url, cluster_id) for url, cluster_id in schedulers}
    found: dict[str, list[TaskPeer]] = {digest: [] for digest in digests}
    gate = asyncio.Semaphore(MAX_CONCURRENT_ASKS)

    async def one(url: str, digest: str) -> None:
        async with gate:
            try:
                found[digest].extend(await ask(url, digest))
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                outcome = outcomes[url]
                if outcome.error is None:
                    outcome.error = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                    log.warning("scheduler %s gave no answer about %s: %s", url, digest, outcome.error)

    await asyncio.gather(*(one(url, digest) for url in outcomes for digest in digests))
    return TasksAnswer(image=image, blobs=[BlobLocation(digest=d, peers=furthest(found[d])) for d in digests],
                       schedulers=[SchedulerReport(url=o.url, cluster_id=o.cluster_id, error=o.error)
                                   for o in outcomes.values()])


class SchedulerAsker:
    """The HTTP side of ``locate``: one aiohttp session, over mutual TLS with a cluster identity."""

    def __init__(self, timeout: float, tls: ClusterTLS | None) -> None:
        self.timeout = timeout
        self._tls: dict[str, Any] = (
            {"ssl": tls.client_context("scheduler"), "server_hostname": role_hostname("scheduler")} if tls else {})
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __call__(self, url: str, digest: str) -> list[TaskPeer]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        tls = self._tls if url.startswith("https:") else {}
        async with self._session.get(f"{url}/api/v1/tasks/{digest}/peers", **tls) as response:
            if response.status == 404:
                return []  # no such task there
            if response.status != 200:
                raise ValueError(f"answered {response.status}")
            body = await response.content.read(MAX_ANSWER_BYTES + 1)
            if len(body) > MAX_ANSWER_BYTES:
                raise ValueError(f"answered more than {MAX_ANSWER_BYTES} bytes")
        try:
            document = json.loads(body)
        except ValueError:
            raise ValueError("the answer is not JSON") from None
        return peers_of_answer(document, url)


def image_digests(image: str, plain_http: bool, registries: Mapping[str, str], timeout: float = REGISTRY_TIMEOUT
                  ) -> list[str]:
    """The config and layer digests of ``image``'s manifest (an index resolved to this
    machine's platform), read as a preheat reads it (damselfly.manager.images): a bare
    reference at its registry's mapped URL, else over https, or over plain HTTP with
    ``plain_http``, which only a mapped or loopback registry allows. Blocking: run it in a
    thread. ApiError 400 for a bad reference, 502 when the registry cannot tell."""
    try:
        target = image_target(image, registries, "http" if plain_http else "https")
    except ValueError as error:
        raise ApiError(400, f"image: {error}") from None
    resolved = resolve_target(target, host_platform(), Credentials(), timeout)
    return [blob.digest for blob in resolved.blobs]

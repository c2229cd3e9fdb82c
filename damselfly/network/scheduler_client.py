"""The daemon's side of the scheduler API: announce the host, and talk about tasks.

Each task belongs to one scheduler on a consistent hash ring of the configured
schedulers; when it does not answer, the next one on the ring is tried. Every call has
a deadline; the caller decides what an unreachable ring means (back to source).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp

from damselfly.lib.hashring import HashRing
from damselfly.lib.tls import ClusterTLS, role_hostname
from damselfly.core.wire import HostAnnounce

log = logging.getLogger(__name__)


class SchedulerUnavailable(Exception):
    """No scheduler on the ring answered."""


class SchedulerClient:
    def __init__(self, urls: list[str], host: HostAnnounce, timeout: float = 5.0, tls: ClusterTLS | None = None) -> None:
        self.ring = HashRing([u.rstrip("/") for u in urls])
        # With a cluster identity, only a certificate of role scheduler may answer: the
        # handshake checks the role before a request (and what it tells) leaves this host.
        self._tls: dict[str, Any] = (
            {"ssl": tls.client_context("scheduler"), "server_hostname": role_hostname("scheduler")} if tls else {})
        self.host = host
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._down: set[str] = set()  # schedulers that failed the last call; tried last

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=self.timeout))
        return self._session

    async def start(self) -> None:
        self._keepalive = asyncio.create_task(self._announce_forever(), name="scheduler keepalive")

    async def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        if self._session is not None:
            for url in self.ring.members:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with self.session.delete(f"{url}/api/v1/hosts/{self.host.id}",
                                                   timeout=aiohttp.ClientTimeout(total=1), **self._tls_for(url)):
                        pass
            await self._session.close()

    async def announce(self) -> None:
        """Tell every scheduler about this host (each may own some of our tasks)."""
        async def one(url: str) -> None:
            try:
                async with self.session.post(f"{url}/api/v1/hosts", json=self.host.to_json(),
                                             timeout=aiohttp.ClientTimeout(total=self.timeout),
                                             **self._tls_for(url)) as response:
                    response.raise_for_status()
                if url in self._down:
                    log.info("scheduler %s answers again", url)
                self._down.discard(url)
            except (aiohttp.ClientError, TimeoutError) as exc:
                if url not in self._down:
                    log.warning("scheduler %s unreachable: %s", url, exc)
                self._down.add(url)

        await asyncio.gather(*(one(url) for url in self.ring.members))

    async def _announce_forever(self, interval: float = 2.0) -> None:
        while True:
            await self.announce()
            await asyncio.sleep(interval)

    def _tls_for(self, url: str) -> dict[str, Any]:
        return self._tls if url.startswith("https:") else {}

    def order(self, task_id: str) -> list[str]:
        owners = self.ring.owners(task_id)
        return [u for u in owners if u not in self._down] + [u for u in owners if u in self._down]

    async def call(self, task_id: str, method: str, path: str, *, json: Any = None,
                   params: dict[str, str] | None = None, timeout: float | None = None,
                   scheduler: str | None = None) -> tuple[str, dict[str, Any]]:
        """One request about a task to its scheduler, failing over along the ring.

        Returns (the scheduler that answered, its JSON). A 4xx answer is returned as is,
        with ``status`` added; only unreachable schedulers move on to the next.
        """
        candidates = [scheduler] if scheduler else self.order(task_id)
        last_error = "no scheduler configured"
        for url in candidates:
            try:
                async with self.session.request(method, f"{url}/api/v1/tasks/{task_id}/{path}", json=json,
                                                params=params, timeout=aiohttp.ClientTimeout(total=timeout or self.timeout),
                                                **self._tls_for(url)) as response:
                    body = await response.json(content_type=None)
                    if response.status >= 500:
                        raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)
                    self._down.discard(url)
                    body["status"] = response.status
                    return url, body
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                last_error = f"{url}: {exc or exc.__class__.__name__}"
                self._down.add(url)
        raise SchedulerUnavailable(last_error)

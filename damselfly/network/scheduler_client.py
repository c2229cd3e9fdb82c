"""The daemon's side of the scheduler API: announce the host, and talk about tasks.

Each task belongs to one scheduler on a consistent hash ring of the configured
schedulers; when it does not answer, the next one on the ring is tried. Every call has
a deadline; the caller decides what an unreachable ring means (back to source).

The list may change at run time (``set_schedulers``: a daemon that learns its schedulers
from the manager), and may be empty until the manager names one: every call then fails
as if no scheduler answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

import aiohttp

from damselfly.lib.hashring import HashRing
from damselfly.lib.tls import ClusterTLS, role_hostname
from damselfly.lib.waiting import wait_until_set
from damselfly.core.wire import HostAnnounce

log = logging.getLogger(__name__)
ANNOUNCE_INTERVAL = 2.0


class SchedulerUnavailable(Exception):
    """No scheduler on the ring answered."""


class SchedulerClient:
    def __init__(self, urls: list[str], host: HostAnnounce, timeout: float = 5.0, tls: ClusterTLS | None = None) -> None:
        self.ring: HashRing | None = HashRing([u.rstrip("/") for u in urls]) if urls else None
        # With a cluster identity, only a certificate of role scheduler may answer: the
        # handshake checks the role before a request (and what it tells) leaves this host.
        self._tls: dict[str, Any] = (
            {"ssl": tls.client_context("scheduler"), "server_hostname": role_hostname("scheduler")} if tls else {})
        self.host = host
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._down: set[str] = set()  # schedulers that failed the last call; tried last
        self._announce_now = asyncio.Event()  # the list or this host's announce changed

    @property
    def members(self) -> list[str]:
        """The schedulers on the ring (none until the manager names one)."""
        return list(self.ring.members) if self.ring is not None else []

    def set_schedulers(self, urls: list[str]) -> None:
        """Take a new scheduler list (from the manager): tasks move to their owners on the
        new ring, and this host is announced to the newcomers at once. Schedulers no longer
        listed forget this host when its keepalives stop."""
        before = self.members
        self.ring = HashRing([u.rstrip("/") for u in urls]) if urls else None
        self._down &= set(self.members)
        log.info("schedulers from the manager: %s (before: %s)", ", ".join(self.members) or "none",
                 ", ".join(before) or "none")
        self._announce_now.set()

    def set_upload_slots(self, slots: int) -> None:
        """Tell the schedulers this host's new upload slot count (they cap its children by it)."""
        if slots != self.host.upload_slots:
            self.host = dataclasses.replace(self.host, upload_slots=slots)
            self._announce_now.set()

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
            for url in self.members:
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

        await asyncio.gather(*(one(url) for url in self.members))

    async def _announce_forever(self, interval: float = ANNOUNCE_INTERVAL) -> None:
        while True:
            self._announce_now.clear()
            await self.announce()
            await wait_until_set(self._announce_now, interval)

    def _tls_for(self, url: str) -> dict[str, Any]:
        return self._tls if url.startswith("https:") else {}

    def order(self, task_id: str) -> list[str]:
        if self.ring is None:
            return []
        owners = self.ring.owners(task_id)
        return [u for u in owners if u not in self._down] + [u for u in owners if u in self._down]

    async def call(self, task_id: str, method: str, path: str, *, json: Any = None,
                   params: dict[str, str] | None = None, timeout: float | None = None,
                   scheduler: str | None = None) -> tuple[str, dict[str, Any]]:
        """One request about a task to its scheduler, failing over along the ring.

        Returns (the scheduler that answered, its JSON). A 4xx answer is returned as is,
        with ``status`` added; only unreachable schedulers move on to the next.
        """
        url, status, body = await self.request(task_id, method, f"tasks/{task_id}/{path}", json=json, params=params,
                                               timeout=timeout, scheduler=scheduler)
        body["status"] = status
        return url, body

    async def request(self, key: str, method: str, path: str, *, json: Any = None,
                      params: dict[str, str] | None = None, timeout: float | None = None,
                      scheduler: str | None = None) -> tuple[str, int, Any]:
        """One request to ``/api/v1/<path>`` of the scheduler that owns ``key`` on the ring,
        failing over along it: (the scheduler that answered, the status, its JSON). Only a
        scheduler that is unreachable or answers 5xx moves on to the next."""
        candidates = [scheduler] if scheduler else self.order(key)
        last_error = "no scheduler known yet (the manager has named none)"
        for url in candidates:
            try:
                async with self.session.request(method, f"{url}/api/v1/{path}", json=json,
                                                params=params, timeout=aiohttp.ClientTimeout(total=timeout or self.timeout),
                                                **self._tls_for(url)) as response:
                    body = await response.json(content_type=None)
                    if response.status >= 500:
                        raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)
                    self._down.discard(url)
                    return url, response.status, body
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                last_error = f"{url}: {exc or exc.__class__.__name__}"
                self._down.add(url)
        raise SchedulerUnavailable(last_error)

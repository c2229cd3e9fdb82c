"""Redis, as every part that shares state through it connects: short timeouts, so that a
Redis that is down costs a caller about a second and an error it can handle, never a hang;
and ``KV``, the few operations shared state uses, on Redis or in this process.

Nothing here keeps state: a part that must keep working while Redis is down (the
schedulers, the manager) catches ``KV_ERRORS`` and tries again later.
"""

from __future__ import annotations

import time
from typing import Callable, Protocol
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions

CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0
KV_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                                               redis.exceptions.BusyLoadingError, OSError, TimeoutError)
SCHEMES = ("redis", "rediss", "unix")


def check_url(url: str) -> str:
    """``url`` if Redis can be reached at it (``redis://HOST:PORT/DB``, ``rediss://`` for TLS,
    ``unix:///PATH``); ValueError saying why not."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{url}: a Redis URL starts with redis://, rediss:// or unix://")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"{url}: names no host")
    return url


def connect(url: str) -> aioredis.Redis:
    """A client for ``url`` (no connection is made until the first command)."""
    return aioredis.Redis.from_url(check_url(url), socket_connect_timeout=CONNECT_TIMEOUT,
                                   socket_timeout=COMMAND_TIMEOUT, decode_responses=False,
                                   health_check_interval=30)


class KV(Protocol):
    """The few operations shared state needs, so that one piece of code runs on Redis
    (``--redis``) and in one process (without it). Values are bytes; ``ttl`` in seconds."""

    async def get(self, key: str) -> bytes | None: ...
    async def put(self, key: str, value: bytes, ttl: float, only_if_absent: bool = False) -> bool: ...
    async def delete(self, *keys: str) -> None: ...
    async def add(self, group: str, member: str) -> None: ...
    async def members(self, group: str) -> set[str]: ...
    async def discard(self, group: str, member: str) -> None: ...


class RedisKV:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def get(self, key: str) -> bytes | None:
        value = await self.client.get(key)
        return value.encode() if isinstance(value, str) else value

    async def put(self, key: str, value: bytes, ttl: float, only_if_absent: bool = False) -> bool:
        return bool(await self.client.set(key, value, px=max(1, int(ttl * 1000)), nx=only_if_absent))

    async def delete(self, *keys: str) -> None:
        if keys:
            await self.client.delete(*keys)

    async def add(self, group: str, member: str) -> None:
        await self.client.sadd(group, member)

    async def members(self, group: str) -> set[str]:
        return {m.decode() if isinstance(m, bytes) else m for m in await self.client.smembers(group)}

    async def discard(self, group: str, member: str) -> None:
        await self.client.srem(group, member)


class MemoryKV:
    """KV in this process, with the same expiry (``clock`` is injected for tests). With
    ``max_values``, past that many values the least recently written go."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_values: int | None = None) -> None:
        self.clock = clock
        self.max_values = max_values
        self._values: dict[str, tuple[bytes, float]] = {}
        self._groups: dict[str, set[str]] = {}

    async def get(self, key: str) -> bytes | None:
        found = self._values.get(key)
        if found is None:
            return None
        if found[1] <= self.clock():
            del self._values[key]
            return None
        return found[0]

    async def put(self, key: str, value: bytes, ttl: float, only_if_absent: bool = False) -> bool:
        if only_if_absent and await self.get(key) is not None:
            return False
        self._values.pop(key, None)  # written again: the most recent
        self._values[key] = (value, self.clock() + ttl)
        if self.max_values is not None and len(self._values) > self.max_values:
            del self._values[next(iter(self._values))]
        return True

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self._values.pop(key, None)

    async def add(self, group: str, member: str) -> None:
        self._groups.setdefault(group, set()).add(member)

    async def members(self, group: str) -> set[str]:
        return set(self._groups.get(group, ()))

    async def discard(self, group: str, member: str) -> None:
        members = self._groups.get(group)
        if members is not None:
            members.discard(member)
            if not members:
                del self._groups[group]

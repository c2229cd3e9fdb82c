"""Redis, as every part that shares state through it connects: short timeouts, so that a
Redis that is down costs a caller about a second and an error it can handle, never a hang.

Nothing here keeps state: a part that must keep working while Redis is down (the
schedulers, the manager) catches ``KV_ERRORS`` and tries again later.
"""

from __future__ import annotations

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

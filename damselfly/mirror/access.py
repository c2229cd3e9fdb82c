"""Remembers, briefly, which credentials the registry accepted for which repository."""

from __future__ import annotations

import hashlib
import time
from typing import Callable

from damselfly.core.oci import Origin


class AccessCache:
    """Grants per (credential, registry, repository), each for at most ``ttl`` seconds.

    The registry and repository are those a blob came from (the mirror checks access
    there), never ones a caller names. Only successes are remembered: a refusal is asked
    again next time, so a caller who just obtained a token is not locked out.
    """

    def __init__(self, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic, max_entries: int = 10000) -> None:
        self.ttl = ttl
        self._clock = clock
        self._max_entries = max_entries
        self._grants: dict[tuple[str, str, str], float] = {}

    @staticmethod
    def _key(origin: Origin) -> tuple[str, str, str]:
        credential = hashlib.sha256((origin.authorization or "").encode()).hexdigest()
        return credential, origin.registry, origin.repository

    def allowed(self, origin: Origin) -> bool:
        key = self._key(origin)
        expires = self._grants.get(key)
        if expires is None:
            return False
        if expires <= self._clock():
            del self._grants[key]
            return False
        return True

    def grant(self, origin: Origin) -> None:
        now = self._clock()
        if len(self._grants) >= self._max_entries:
            self._grants = {k: v for k, v in self._grants.items() if v > now}
            if len(self._grants) >= self._max_entries:
                self._grants.clear()
        self._grants[self._key(origin)] = now + self.ttl

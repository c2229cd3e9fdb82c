"""A consistent hash ring: which scheduler owns a task, and which to try next (pure)."""

from __future__ import annotations

import bisect
import hashlib


def _point(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


class HashRing:
    """Members on a ring of 64-bit points, each with ``replicas`` virtual nodes.

    Adding or removing one member moves only the keys that it owned, so daemons that
    share a scheduler list agree on the owner of a task without talking to each other.
    """

    def __init__(self, members: list[str], replicas: int = 100) -> None:
        if not members:
            raise ValueError("a hash ring needs at least one member")
        self.members = list(dict.fromkeys(members))
        self._points: list[tuple[int, str]] = sorted(
            (_point(f"{member}#{i}"), member) for member in self.members for i in range(replicas))
        self._keys = [point for point, _ in self._points]

    def owners(self, key: str) -> list[str]:
        """Every member, in the order to try for ``key``: the owner first, then its successors."""
        start = bisect.bisect(self._keys, _point(key)) % len(self._points)
        order: list[str] = []
        for offset in range(len(self._points)):
            member = self._points[(start + offset) % len(self._points)][1]
            if member not in order:
                order.append(member)
                if len(order) == len(self.members):
                    break
        return order

"""What a cluster member takes from the manager's answers (pure): the cluster's dynamic
configuration, the upload limits a peer applies from it, and when a daemon that learns
its schedulers from the manager swaps its hash ring.

The manager answers every registration and keepalive with its cluster's configuration
and active schedulers (docs/manager.md). The answer comes over the network, so it is
parsed strictly here, and a member keeps the last good one when the manager is down or
answers nonsense: a cluster never loses its limits because its manager restarted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

DEFAULT_CANDIDATE_PARENT_LIMIT = 4
MAX_CANDIDATE_PARENT_LIMIT = 64
MAX_UPLOAD_SLOTS = 4096
MAX_BLOCK_LIST = 1000
MAX_BLOCK_ENTRY = 512
MAX_COUNT = (1 << 63) - 1


@dataclass(frozen=True)
class ClusterConfig:
    """A cluster's configuration, as its schedulers and daemons apply it.

    ``None`` for ``upload_rate`` and ``upload_slots`` leaves each peer its own flag
    (``--upload-rate``, none by default; ``--upload-slots``); for ``back_to_source`` it
    means no limit.
    """

    upload_rate: int | None = None  # bytes per second each peer uploads at most
    upload_slots: int | None = None  # pieces each peer uploads at once
    candidate_parent_limit: int = DEFAULT_CANDIDATE_PARENT_LIMIT  # parents a scheduler offers a peer at once
    back_to_source: int | None = None  # peers of one task a scheduler may send to the origin
    block_list: tuple[str, ...] = ()  # image references and digests the mirrors refuse (see core.blocklist)

    @classmethod
    def from_json(cls, obj: Any) -> "ClusterConfig":
        """The ``config`` of a registration or keepalive answer; ValueError, naming the key,
        for anything else. Unknown keys are ignored (a newer manager may send more)."""
        if not isinstance(obj, dict):
            raise ValueError("the cluster configuration is not a JSON object")
        block_list = obj.get("block_list", [])
        if not isinstance(block_list, list) or len(block_list) > MAX_BLOCK_LIST or not all(
                isinstance(entry, str) and 0 < len(entry) <= MAX_BLOCK_ENTRY for entry in block_list):
            raise ValueError(f"block_list: want a list of at most {MAX_BLOCK_LIST} references or digests")
        return cls(upload_rate=_count(obj, "upload_rate", 1, MAX_COUNT),
                   upload_slots=_count(obj, "upload_slots", 1, MAX_UPLOAD_SLOTS),
                   candidate_parent_limit=_required_count(obj, "candidate_parent_limit", 1, MAX_CANDIDATE_PARENT_LIMIT,
                                                          DEFAULT_CANDIDATE_PARENT_LIMIT),
                   back_to_source=_count(obj, "back_to_source", 0, MAX_COUNT),
                   block_list=tuple(dict.fromkeys(block_list)))


def _count(obj: dict[str, Any], key: str, low: int, high: int) -> int | None:
    """An integer from ``low`` to ``high``, or null (also when the key is missing)."""
    if obj.get(key) is None:
        return None
    return _required_count(obj, key, low, high, low, " or null")


def _required_count(obj: dict[str, Any], key: str, low: int, high: int, default: int, also: str = "") -> int:
    value = obj.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{key}: want an integer from {low} to {high}{also}")
    return value


def upload_limits(config: ClusterConfig, own_rate: int | None, own_slots: int) -> tuple[int | None, int]:
    """The upload rate and slots a peer applies: the cluster's where it sets one, else the
    peer's own flags."""
    return (config.upload_rate if config.upload_rate is not None else own_rate,
            config.upload_slots if config.upload_slots is not None else own_slots)


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return f"{len(value)} entries" if len(value) != 1 else "1 entry"
    return str(value)


def describe_changes(old: ClusterConfig | None, new: ClusterConfig) -> list[str]:
    """``key: old -> new`` for each key that changed, for the log; against None (the first
    answer), ``key: value`` for every key."""
    if old is None:
        return [f"{f.name}: {_shown(getattr(new, f.name))}" for f in fields(ClusterConfig)]
    return [f"{f.name}: {_shown(getattr(old, f.name))} -> {_shown(getattr(new, f.name))}"
            for f in fields(ClusterConfig) if getattr(old, f.name) != getattr(new, f.name)]


def _normalized(urls: list[str]) -> list[str]:
    return list(dict.fromkeys(url.rstrip("/") for url in urls if url.strip()))


def schedulers_to_use(current: list[str], answered: list[str], since_change: float,
                      refresh_interval: float) -> list[str] | None:
    """The scheduler list a daemon should switch to after a manager's answer, or None to
    keep ``current``.

    An empty answer never empties the ring (the schedulers may be between keepalives, or
    the manager just restarted): the daemon keeps the last list. An empty ring takes the
    first list at once. Otherwise a changed list is taken once ``refresh_interval``
    seconds have passed since the last change (``since_change``; ``math.inf`` for never),
    so that a scheduler flapping between active and inactive does not move tasks around
    the ring at every keepalive; one that is down meanwhile is tried last anyway.
    """
    wanted = _normalized(answered)
    if not wanted or set(wanted) == set(_normalized(current)):
        return None
    if not current or since_change >= refresh_interval or math.isinf(since_change):
        return wanted
    return None

"""A node's side of the cluster's tag and manifest records (see damselfly.scheduler.tags).

A node that resolved a tag at the registry asks a seed to resolve it too (the seed
publishes what it found, never what the node said); a seed does that step itself. In an
outage a node reads the records. Records of one repository belong to one scheduler on the
ring (all of them share them with --redis).
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, Awaitable, Callable

from damselfly.core.wire import ManifestRecord, SeedInfo, TagConfirm, TagPublication, TagRecord, WireError
from damselfly.network.scheduler_client import SchedulerUnavailable
from damselfly.network.swarm import Network

log = logging.getLogger(__name__)
CONFIRM_SPACING = 30.0  # seconds: a node asks for a tag's confirmation at most this often
MAX_SPACED = 10_000  # tags whose last confirmation this node remembers
SEED_TIMEOUT = 5.0


def ring_key(registry: str, repository: str) -> str:
    """Where on the scheduler ring a repository's records live."""
    return f"tags:{registry}/{repository}"


class ClusterTags:
    """Tag confirmations, publications and lookups, through the scheduler ring and the seeds."""

    def __init__(self, network: Network) -> None:
        self.network = network
        # A seed's own resolution (its mirror's), set when this node is a seed: it asks nobody.
        self.resolve_here: Callable[[TagConfirm], Awaitable[None]] | None = None
        self._asked: dict[tuple[str, str, str], float] = {}  # (registry, repository, tag): when

    def confirm(self, confirm: TagConfirm) -> None:
        """In the background, and at most once per CONFIRM_SPACING per tag: have a seed resolve
        the tag at its registry and publish it for the cluster."""
        now = time.monotonic()
        key = (confirm.registry, confirm.repository, confirm.tag)
        if now - self._asked.get(key, -CONFIRM_SPACING) < CONFIRM_SPACING:
            return
        if len(self._asked) >= MAX_SPACED:
            self._asked = {k: at for k, at in self._asked.items() if now - at < CONFIRM_SPACING}
            if len(self._asked) >= MAX_SPACED:
                return  # a flood of tags: the rest wait for the next pull
        self._asked[key] = now
        self.network.spawn(self.resolve_here(confirm) if self.resolve_here is not None else self._ask_a_seed(confirm))

    async def _ask_a_seed(self, confirm: TagConfirm) -> None:
        what = f"{confirm.registry}/{confirm.repository}:{confirm.tag}"
        try:
            _, status, answer = await self._request(confirm.registry, confirm.repository, "GET", "seeds")
            seeds = [SeedInfo.from_json(seed) for seed in answer] if status == 200 else []
        except (SchedulerUnavailable, WireError, TypeError) as exc:
            log.info("no seed asked to confirm %s: %s", what, exc)
            return
        random.shuffle(seeds)  # spread the confirmations over the seeds
        for seed in seeds:
            reason = await self.network.ask_seed(seed, "tags", confirm.to_json(), SEED_TIMEOUT)
            if reason is None:
                log.debug("seed %s confirms %s", seed.host_id, what)
                return
            log.warning("seed %s did not take the confirmation of %s: %s", seed.host_id, what, reason)
        log.info("no seed confirmed %s (%d asked)", what, len(seeds))

    async def publish(self, tag: TagRecord, manifests: tuple[ManifestRecord, ...]) -> None:
        """A seed's resolution, and the manifests it holds for it, to the repository's
        scheduler (SchedulerUnavailable, or ValueError with the scheduler's refusal)."""
        publication = TagPublication(self.network.host_id, tag, manifests)
        _, status, answer = await self._request(tag.manifest.registry, tag.manifest.repository, "POST", "tags",
                                                json=publication.to_json())
        if status != 200:
            raise ValueError(f"the scheduler answered {status}: {_error(answer)}")

    async def tag(self, registry: str, repository: str, tag: str) -> TagRecord | None:
        """What a seed last resolved the tag as; None if no seed did (SchedulerUnavailable)."""
        return await self._record(registry, repository, "tags", TagRecord.from_json,
                                  {"registry": registry, "repository": repository, "tag": tag})

    async def manifest(self, registry: str, repository: str, digest: str) -> ManifestRecord | None:
        """The record of a manifest a seed keeps; None if none does (SchedulerUnavailable)."""
        return await self._record(registry, repository, f"manifests/{digest}", ManifestRecord.from_json,
                                  {"registry": registry})

    async def _record(self, registry: str, repository: str, path: str, parse: Callable[[Any], Any],
                      params: dict[str, str]) -> Any:
        _, status, answer = await self._request(registry, repository, "GET", path, params=params)
        if status == 404:
            return None
        try:
            if status != 200:
                raise WireError(f"answered {status}: {_error(answer)}")
            return parse(answer)
        except WireError as exc:
            raise SchedulerUnavailable(f"no usable record: {exc}") from None

    def _request(self, registry: str, repository: str, method: str, path: str, **kwargs: Any
                 ) -> Awaitable[tuple[str, int, Any]]:
        return self.network.scheduler.request(ring_key(registry, repository), method, path, **kwargs)


def _error(answer: Any) -> str:
    return str(answer.get("error")) if isinstance(answer, dict) else str(answer)[:200]

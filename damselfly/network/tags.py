"""A node's side of the cluster's tag and manifest records (see damselfly.scheduler.tags).

A node that resolved a tag at the registry asks a seed to resolve it too (the seed
publishes what it found, never what the node said); a seed does that step itself. In an
outage a node reads the records. Records of one repository belong to one scheduler on the
ring (all of them share them with --redis).
"""

from __future__ import annotations

import logging
import random
from dataclasses import replace
import time
from typing import Any, Awaitable, Callable

from damselfly.core.wire import ManifestRecord, SeedInfo, TagConfirm, TagPublication, TagRecord, WireError
from damselfly.lib.sealed import SealError
from damselfly.lib.signed import Signature, Signer, Verifier
from damselfly.network.scheduler_client import SchedulerUnavailable
from damselfly.network.swarm import Network

log = logging.getLogger(__name__)
CONFIRM_SPACING = 30.0  # seconds: a node asks for a tag's confirmation at most this often
MAX_RESOLVING = 16  # confirmations under way at once on a node; more are dropped
MAX_SPACED = 10_000  # tags whose last confirmation this node remembers
SEED_TIMEOUT = 5.0


def ring_key(registry: str, repository: str) -> str:
    """Where on the scheduler ring a repository's records live."""
    return f"tags:{registry}/{repository}"


class ClusterTags:
    """Tag confirmations, publications and lookups, through the scheduler ring and the seeds."""

    def __init__(self, network: Network, signer: Signer | None = None, verifier: Verifier | None = None) -> None:
        """``signer``: a seed's, for what it publishes; ``verifier``: with a cluster identity,
        records are taken only if a seed's certificate signed them (without one, from the
        scheduler as they are: a loopback-only deployment)."""
        self.network = network
        self.signer = signer
        self.verifier = verifier
        self._resolving = 0
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
        if self._resolving >= MAX_RESOLVING:
            return  # a flood: the rest wait for the next pull
        self._asked[key] = now
        self._resolving += 1  # counted from now: a burst of confirms arrives before any starts
        self.network.spawn(self._counted(confirm))

    async def _counted(self, confirm: TagConfirm) -> None:
        try:
            await (self.resolve_here(confirm) if self.resolve_here is not None else self._ask_a_seed(confirm))
        finally:
            self._resolving -= 1

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
        if self.signer is not None:
            sign = self.signer.sign
            manifests = tuple(replace(m, signature=sign(m.signed_bytes())) for m in manifests)
            tag = replace(tag, manifest=replace(tag.manifest, signature=sign(tag.signed_bytes())))
        publication = TagPublication(self.network.host_id, tag, manifests)
        _, status, answer = await self._request(tag.manifest.registry, tag.manifest.repository, "POST", "tags",
                                                json=publication.to_json())
        if status != 200:
            raise ValueError(f"the scheduler answered {status}: {_error(answer)}")

    async def tag(self, registry: str, repository: str, tag: str) -> TagRecord | None:
        """What a seed last resolved the tag as; None if no seed did (SchedulerUnavailable)."""
        record: TagRecord | None = await self._record(registry, repository, "tags", TagRecord.from_json,
                                                      {"registry": registry, "repository": repository, "tag": tag})
        if record is not None:
            said = record.manifest
            self._check((said.registry, said.repository, record.tag), (registry, repository, tag),
                        record.signed_bytes(), said.signature)
        return record

    async def manifest(self, registry: str, repository: str, digest: str) -> ManifestRecord | None:
        """The record of a manifest a seed keeps; None if none does (SchedulerUnavailable)."""
        record: ManifestRecord | None = await self._record(registry, repository, f"manifests/{digest}",
                                                           ManifestRecord.from_json, {"registry": registry})
        if record is not None:
            self._check((record.registry, record.digest), (registry, digest), record.signed_bytes(), record.signature)
        return record

    def _check(self, said: tuple[str, ...], asked: tuple[str, ...], signed: bytes, signature: Signature | None
               ) -> None:
        """SchedulerUnavailable unless the record is about what was asked and, with a cluster
        identity, a seed signed it: neither Redis nor a scheduler can point a tag elsewhere."""
        if said != asked:
            raise SchedulerUnavailable(f"the record is about {'/'.join(said)}, not {'/'.join(asked)}")
        if self.verifier is None:
            return
        if signature is None:
            raise SchedulerUnavailable("the record carries no seed's signature")
        try:
            self.verifier.verify(signed, signature, role="seed")
        except SealError as exc:
            raise SchedulerUnavailable(f"the record is not a seed's: {exc}") from None

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

"""What the scheduler knows: hosts, tasks and the peers of each task (no I/O here)."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from damselfly.p2p.pieces import PieceBitmap, piece_count
from damselfly.scheduler.evaluator import Candidate, Child, rank_parents

KEEPALIVE_INTERVAL = 5.0
HOST_EXPIRY = 3 * KEEPALIVE_INTERVAL
SEED_FAILURE_MEMORY = 60.0  # seconds a seed that failed a trigger, or could not start a task, is asked last or not at all
COST_SAMPLES = 20
# A child keeps about one request at a time on each parent of a task, and a host serves
# several tasks: it may have this many children per upload slot.
CHILDREN_PER_SLOT = 4


@dataclass
class Host:
    id: str
    upload_url: str
    idc: str = ""
    location: str = ""
    is_seed: bool = False
    upload_slots: int = 16
    last_seen: float = 0.0
    successes: int = 0
    failures: int = 0
    piece_costs: deque[float] = field(default_factory=lambda: deque(maxlen=COST_SAMPLES))
    trigger_failed_at: float | None = None  # when asking this seed to fetch a task last failed


@dataclass
class Peer:
    host_id: str
    bitmap: PieceBitmap
    seeding: bool = False  # downloading from the origin: will hold every piece
    done: bool = False
    parents: set[str] = field(default_factory=set)
    bad_parents: set[str] = field(default_factory=set)


@dataclass
class Task:
    id: str
    length: int
    piece_length: int
    origin: dict[str, str | None]
    ranged: bool = False  # its first peer (since it last had none) reads it in ranges (nydus): a seed fetches waited-for pieces first
    digests: dict[int, str] = field(default_factory=dict)
    digests_at: dict[int, int] = field(default_factory=dict)  # the task version that brought each digest
    peers: dict[str, Peer] = field(default_factory=dict)
    failed: str | None = None
    # A seed peer stored the blob after checking its digest, and every piece digest here is
    # one it reported: a peer whose pieces all match them holds the right blob.
    verified: bool = False
    seed_conflict: bool = False
    failed_seeds: dict[str, float] = field(default_factory=dict)  # seed id: when it could not start this task
    version: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def bump(self) -> None:
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()


class SchedulerState:
    def __init__(self, clock: Callable[[], float] = time.monotonic, parents_per_peer: int = 4) -> None:
        self.clock = clock
        self.parents_per_peer = parents_per_peer
        self.hosts: dict[str, Host] = {}
        self.tasks: dict[str, Task] = {}
        # Versions count within one scheduler's life: a peer's ``since`` means something only
        # to the scheduler (and run) that gave it.
        self.epoch = secrets.token_hex(4)

    # -- hosts ---------------------------------------------------------------------

    def announce(self, host: Host) -> None:
        known = self.hosts.get(host.id)
        if known is not None:
            host.successes, host.failures, host.piece_costs = known.successes, known.failures, known.piece_costs
            host.trigger_failed_at = known.trigger_failed_at
        host.last_seen = self.clock()
        self.hosts[host.id] = host

    def leave(self, host_id: str) -> None:
        self.hosts.pop(host_id, None)
        for task in self.tasks.values():
            if task.peers.pop(host_id, None) is not None:
                task.bump()

    def alive(self, host_id: str) -> bool:
        host = self.hosts.get(host_id)
        return host is not None and self.clock() - host.last_seen <= HOST_EXPIRY

    def expire_hosts(self) -> list[str]:
        gone = [h for h in self.hosts if not self.alive(h)]
        for host_id in gone:
            self.leave(host_id)
        return gone

    def seeds(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.is_seed and self.alive(h.id)]

    # -- tasks ---------------------------------------------------------------------

    def task(self, task_id: str, length: int, piece_length: int, origin: dict[str, str | None],
             ranged: bool = False) -> Task:
        task = self.tasks.get(task_id)
        if task is None or task.length != length or task.piece_length != piece_length:
            task = Task(task_id, length, piece_length, origin, ranged)
            self.tasks[task_id] = task
        elif not task.peers:  # everyone who had it left: the next swarm reads it as its first peer does
            task.ranged = ranged
        return task

    def join(self, task: Task, host_id: str, pieces: list[int], seeding: bool = False) -> Peer:
        count = piece_count(task.length, task.piece_length)
        peer = task.peers.get(host_id)
        if peer is None:
            peer = Peer(host_id, PieceBitmap(count))
            task.peers[host_id] = peer
        for index in pieces:
            if 0 <= index < count:
                peer.bitmap.add(index)
        peer.seeding = peer.seeding or seeding
        peer.done = peer.bitmap.complete
        task.bump()
        return peer

    def report_pieces(self, task: Task, host_id: str, pieces: list[tuple[int, str | None, float | None, str | None]],
                      trusted: bool) -> list[int]:
        """Record pieces a peer holds. Returns indexes whose digest disagreed (ignored)."""
        peer = task.peers.get(host_id) or self.join(task, host_id, [])
        rejected, added = [], []
        for index, digest, cost, parent_id in pieces:
            known = task.digests.get(index)
            if digest is not None and known is not None and known != digest:
                rejected.append(index)
                if host_id in self.hosts and self.hosts[host_id].is_seed:
                    task.seed_conflict = True
                continue
            if digest is not None and known is None and trusted:
                task.digests[index] = digest
                added.append(index)
            if 0 <= index < peer.bitmap.count:
                peer.bitmap.add(index)
            if parent_id and parent_id in self.hosts:
                parent = self.hosts[parent_id]
                parent.successes += 1
                if cost is not None:
                    parent.piece_costs.append(cost)
        peer.done = peer.bitmap.complete
        if peer.done:
            peer.parents.clear()
            peer.seeding = False
        task.bump()
        task.digests_at.update(dict.fromkeys(added, task.version))
        return rejected

    def host_at(self, upload_url: str) -> str | None:
        """The id of the host that uploads at ``upload_url``."""
        return next((host.id for host in self.hosts.values() if host.upload_url == upload_url), None)

    def report_bad_parent(self, task: Task, host_id: str, parent_id: str) -> None:
        peer = task.peers.get(host_id)
        if peer is not None:
            peer.bad_parents.add(parent_id)
            peer.parents.discard(parent_id)
        if parent_id in self.hosts:
            self.hosts[parent_id].failures += 1
        task.bump()

    def finish(self, task: Task, host_id: str, success: bool, reason: str = "", could_not_start: bool = False) -> None:
        """A peer's task ended. A seed that ``could_not_start`` it (the origin refused it, or
        is out of reach) is not asked for it again for a while: its peers go to the next
        seed, or to the origin themselves, instead of waiting on a seed that has nothing.
        The report may come before the scheduler has recorded the seed's acceptance."""
        if could_not_start:
            task.failed_seeds[host_id] = self.clock()
        peer = task.peers.get(host_id)
        if peer is None:
            return
        if success:
            peer.done, peer.seeding = True, False
            peer.parents.clear()
            host = self.hosts.get(host_id)
            if host is not None and host.is_seed and not task.seed_conflict:
                task.verified = len(task.digests) == peer.bitmap.count
        else:
            del task.peers[host_id]
            if reason.startswith("digest mismatch"):
                task.failed = reason  # the origin itself sent a wrong blob: nobody will do better
        task.bump()

    # -- scheduling ----------------------------------------------------------------

    def seeds_to_ask(self, task: Task, exclude: str) -> list[Host]:
        """The live seeds that may fetch ``task``, in the order to ask them: those a trigger
        failed for lately last, then by load. Not ``exclude``, nor one that could not start
        this very task lately."""
        seeds = [h for h in self.seeds() if h.id != exclude and not self.seed_failed_lately(task, h.id)]
        return sorted(seeds, key=lambda h: (self._lately(h.trigger_failed_at), self.uploads_in_flight(h.id), h.id))

    def trigger_failed(self, host_id: str) -> None:
        host = self.hosts.get(host_id)
        if host is not None:
            host.trigger_failed_at = self.clock()

    def seed_failed_lately(self, task: Task, host_id: str) -> bool:
        return self._lately(task.failed_seeds.get(host_id))

    def _lately(self, stamp: float | None) -> bool:
        return stamp is not None and self.clock() - stamp < SEED_FAILURE_MEMORY

    def uploads_in_flight(self, host_id: str) -> int:
        return sum(1 for t in self.tasks.values() for p in t.peers.values() if not p.done and host_id in p.parents)

    def rank(self, task: Task, host_id: str) -> list[Host]:
        child_peer = task.peers[host_id]
        child_host = self.hosts.get(host_id) or Host(host_id, "")
        child = Child(host_id, child_host.idc, child_host.location, frozenset(child_peer.bad_parents))
        missing = {i for i in range(child_peer.bitmap.count) if not child_peer.bitmap.has(i)}
        candidates = []
        for peer in task.peers.values():
            host = self.hosts.get(peer.host_id)
            if host is None or not self.alive(host.id) or not host.upload_url:
                continue
            candidates.append(Candidate(
                host.id, pieces=sum(1 for i in missing if peer.bitmap.has(i)), total_pieces=max(1, len(missing)),
                upload_slots=host.upload_slots * CHILDREN_PER_SLOT, uploads_in_flight=self.uploads_in_flight(host.id)
                - (1 if host.id in child_peer.parents else 0),
                is_seed=host.is_seed, seeding=peer.seeding, idc=host.idc, location=host.location,
                successes=host.successes, failures=host.failures, piece_costs=list(host.piece_costs)))
        parents_of = {p.host_id: p.parents for p in task.peers.values() if not p.done and p.host_id != host_id}
        ranked = rank_parents(child, candidates, parents_of, self.parents_per_peer)
        child_peer.parents = {c.host_id for c in ranked}
        return [self.hosts[c.host_id] for c in ranked]

    def schedule(self, task: Task, host_id: str, since: int = -1) -> dict:
        """The answer to a peer: its parents with their pieces, the digests it lacks, what to do.

        A peer that polls with the ``since`` version of its last answer (from this ``epoch``)
        gets only the digests that came after it: a blob of 160 pieces has 12 KB of them,
        and every piece report wakes every poller.
        """
        if task.failed:
            return {"action": "fail", "reason": task.failed, "version": task.version, "epoch": self.epoch}
        if task.peers[host_id].done:
            return {"action": "done", "reason": "", "version": task.version, "epoch": self.epoch, "parents": [],
                    "digests": {}}
        parents = self.rank(task, host_id)
        seeding = any(p.seeding and self.alive(p.host_id) for p in task.peers.values() if p.host_id != host_id)
        if parents:
            action, reason = "download", ""
        elif seeding:
            action, reason = "wait", "a seed peer is starting the download"
        else:
            action, reason = "seed", "nobody holds the task"
        return {
            "action": action,
            "reason": reason,
            "version": task.version,
            "epoch": self.epoch,
            "verified": task.verified,
            # Peers still downloading this task, the asker included: they will trade pieces.
            "swarm": sum(1 for p in task.peers.values() if not p.done and not p.seeding),
            "digests": {str(i): d for i, d in task.digests.items() if task.digests_at[i] > since},
            "parents": [
                {"host_id": h.id, "upload_url": h.upload_url, "is_seed": h.is_seed,
                 "seeding": task.peers[h.id].seeding,
                 "bitmap": base64.b64encode(task.peers[h.id].bitmap.to_bytes()).decode()}
                for h in parents
            ],
        }

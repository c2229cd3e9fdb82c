"""What the scheduler knows: hosts, tasks and the peers of each task (pure: no I/O, an injected clock).

Piece sets are Python ints used as bitmaps (bit i is piece i, the wire's little-endian byte
order): what a child lacks that a parent can serve is one AND-NOT and a popcount, whatever
the piece count, and a host's uploads in flight are a counter kept as parents change, so
that a schedule costs O(parents) and never O(parents x pieces) or O(tasks).

A task is one (digest, length): hosts that say different lengths for a digest (one read a
registry that lied about it) are in different swarms, so a wrong length one host registers
cannot keep the others from P2P, and nobody is offered pieces of a blob of another length.
The blob's own digest check still decides which of them gets a blob.

Everything that comes from one host is bounded and forgotten: hosts are capped, tasks
nobody holds expire, a failure report ends only its reporter's download, and failures
(a seed that could not start, a digest mismatch) are remembered for a while only.

With Redis (damselfly.scheduler.holdings), what outlives this process is what ``changes``
collects (which hosts hold which tasks whole, the seeds' piece digests, the hosts'
announces), and ``restore`` takes a task back from such a record.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, NamedTuple, Sequence

from damselfly.core.pieces import piece_count
from damselfly.scheduler.evaluator import Candidate, Child, rank_parents
from damselfly.core.wire import MAX_SEEDS, Action, ParentInfo, PieceNews, Schedule, SeedInfo

KEEPALIVE_INTERVAL = 5.0
HOST_EXPIRY = 3 * KEEPALIVE_INTERVAL
STALE_AFTER = 1.5 * KEEPALIVE_INTERVAL  # a host that missed a keepalive may be gone: nobody waits for it
SEED_FAILURE_MEMORY = 60.0  # seconds a seed that failed a trigger, or could not start a task, is asked last or not at all
FAILURE_MEMORY = 600.0  # seconds a digest mismatch excludes the digests' sources
TASK_EXPIRY = 600.0  # seconds a task nobody holds is kept after its last peer left
TRIGGER_LEASE = 5.0  # seconds one peer has to ask the seeds before another is told to
MISMATCH_QUORUM = 2  # distinct hosts whose mismatch reports exclude a source for everyone
COST_SAMPLES = 20
DEFAULT_MAX_HOSTS = 10_000
DEFAULT_MAX_TASKS = 100_000
# A child keeps about one request at a time on each parent of a task, and a host serves
# several tasks: it may have this many children per upload slot.
CHILDREN_PER_SLOT = 4
# The source of digests restored from a record (no host has an empty id): the record is
# trusted as one source, so that two hosts whose blob mismatched drop all of it at once.
RESTORED = ""


class Refused(Exception):
    """A request the state will not take; the message is one line for the caller."""


class TooManyHosts(Refused):
    pass


class TooManyTasks(Refused):
    pass


class TaskConflict(Refused):
    """A register whose piece length disagrees with the task's current peers."""


TaskKey = tuple[str, int]  # (digest, length): the task's id on the wire, and the length its peers say


def mask_of(indexes: Iterable[int], count: int) -> int:
    """The bitmap of ``indexes`` (those outside 0..count-1 ignored), built in one pass."""
    bits = bytearray((count + 7) // 8)
    for index in indexes:
        if 0 <= index < count:
            bits[index >> 3] |= 1 << (index & 7)
    return int.from_bytes(bits, "little")


def bitmap_bytes(mask: int, count: int) -> bytes:
    return mask.to_bytes((count + 7) // 8, "little")


def _announced(host: "Host") -> tuple[str, str, str, bool, int]:
    """What a host says of itself in its announce (what a restored host is rebuilt from)."""
    return host.upload_url, host.idc, host.location, host.is_seed, host.upload_slots


def bit_indexes(mask: int) -> list[int]:
    """The indexes set in ``mask``, lowest first (for rare paths: a source's digests dropped)."""
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


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
    pieces: int = 0  # bitmap of the pieces it holds
    seeding: bool = False  # downloading from the origin: will hold every piece
    done: bool = False
    sent_to_source: bool = False  # told by this scheduler to read the origin itself
    parents: frozenset[str] = frozenset()
    bad_parents: set[str] = field(default_factory=set)  # reported bad, or unreachable, by this peer


@dataclass
class Task:
    id: str
    length: int
    piece_length: int
    ranged: bool = False  # its first peer (since it last had none) reads it in ranges (nydus): a seed fetches waited-for pieces first
    digests: dict[int, str] = field(default_factory=dict)  # in the order they came: digests_at ascends
    digests_at: dict[int, int] = field(default_factory=dict)  # the task version that brought each digest
    digest_source: dict[int, str] = field(default_factory=dict)  # the seed that reported each digest
    sources: dict[str, int] = field(default_factory=dict)  # seed id: bitmap of the digests it reported
    known: int = 0  # bitmap of the pieces whose digest is known
    peers: dict[str, Peer] = field(default_factory=dict)
    # A seed peer stored the blob after checking its digest, and every piece digest here is
    # one it reported: a peer whose pieces all match them holds the right blob.
    verified: bool = False
    seed_conflict: bool = False
    failed_seeds: dict[str, float] = field(default_factory=dict)  # seed id: when it could not start this task
    mismatches: dict[str, dict[str, float]] = field(default_factory=dict)  # source: reporter: when
    excluded_for: dict[str, dict[str, float]] = field(default_factory=dict)  # reporter: source: when
    excluded: dict[str, float] = field(default_factory=dict)  # source: when excluded for everyone
    lease: tuple[str, float] | None = None  # (peer asking the seeds, until when)
    version: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> TaskKey:
        return (self.id, self.length)

    @functools.cached_property
    def count(self) -> int:
        """Pieces (a task's length and piece length never change: another length is another task)."""
        return piece_count(self.length, self.piece_length)

    @functools.cached_property
    def full(self) -> int:
        """The bitmap of every piece, read on each join, report and ranking."""
        return (1 << self.count) - 1

    def bump(self) -> None:
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass(frozen=True)
class TaskRecord:
    """What a scheduler keeps of a task beyond its own life (in Redis): enough for another
    to hand out the task's holders as parents, with the digests their pieces are checked by."""

    length: int
    piece_length: int
    digests: dict[int, str]  # piece index: its digest, as seeds reported it
    verified: bool
    holders: frozenset[str]  # hosts that hold the whole blob


@dataclass
class Changes:
    """What changed since the holdings last took it: what they must write to Redis."""

    digests: set[TaskKey] = field(default_factory=set)  # trusted digests came, or the task's verification changed
    withdrawn: set[TaskKey] = field(default_factory=set)  # digests were dropped (a source excluded): write them anew
    holding: dict[tuple[TaskKey, str], bool] = field(default_factory=dict)  # (task, host): holds it whole now, or not
    hosts: set[str] = field(default_factory=set)  # hosts that came, changed their announce, or went


class Holder(NamedTuple):
    """A peer of a task as the manager's task search shows it."""

    host_id: str
    upload_url: str
    pieces: int  # pieces it holds
    piece_count: int
    done: bool


class Ranking(NamedTuple):
    parents: list[tuple[Host, Peer]]  # best first
    seed_starting: bool  # a seed the child may wait for is starting the download
    known: int  # bitmap of the pieces whose digest the child may use
    shunned: set[str]  # hosts that must not serve the child


class SchedulerState:
    def __init__(self, clock: Callable[[], float] = time.monotonic, parents_per_peer: int = 4,
                 max_hosts: int = DEFAULT_MAX_HOSTS, max_tasks: int = DEFAULT_MAX_TASKS,
                 back_to_source_limit: int | None = None, track_changes: bool = False) -> None:
        self.clock = clock
        # Both may change at run time: the cluster's candidate_parent_limit and back_to_source.
        self.parents_per_peer = parents_per_peer
        self.back_to_source_limit = back_to_source_limit  # None: no limit
        self.max_hosts = max_hosts
        self.max_tasks = max_tasks
        self.hosts: dict[str, Host] = {}
        self.tasks: dict[str, dict[int, Task]] = {}  # task id (digest): its tasks by length
        self.task_count = 0
        # host id: the tasks it is a peer of (announced or not), each id with the one length it said
        self.host_tasks: dict[str, dict[str, int]] = {}
        self.uploads: dict[str, int] = {}  # host id: children that count it among their parents
        self.empty_since: dict[TaskKey, float] = {}  # when each task's last peer left (oldest first)
        self._by_url: dict[str, str] = {}
        # Kept only for holdings that take them (with Redis): nothing grows without a reader.
        self.changes: Changes | None = Changes() if track_changes else None
        # host id: tasks a restored record says it holds whole, and until when it is waited
        # for: it joins them as a done peer when it announces (a restart outlived its host record).
        self.awaited: dict[str, dict[TaskKey, float]] = {}
        # Versions count within one scheduler's life: a peer's ``since`` means something only
        # to the scheduler (and run) that gave it.
        self.epoch = secrets.token_hex(4)

    # -- hosts ---------------------------------------------------------------------

    def announce(self, host: Host) -> None:
        known = self.hosts.get(host.id)
        if known is None and len(self.hosts) >= self.max_hosts:
            self.expire_hosts()  # room held by hosts that stopped announcing
            if len(self.hosts) >= self.max_hosts:
                raise TooManyHosts(f"this scheduler serves at most {self.max_hosts} hosts")
        if known is not None:
            host.successes, host.failures, host.piece_costs = known.successes, known.failures, known.piece_costs
            host.trigger_failed_at = known.trigger_failed_at
            if self._by_url.get(known.upload_url) == host.id:
                del self._by_url[known.upload_url]
        if self.changes is not None and (known is None or _announced(known) != _announced(host)):
            self.changes.hosts.add(host.id)
        host.last_seen = self.clock()
        self.hosts[host.id] = host
        self._by_url[host.upload_url] = host.id
        self._hold_awaited(host.id)

    def leave(self, host_id: str) -> None:
        host = self.hosts.pop(host_id, None)
        if host is not None and self._by_url.get(host.upload_url) == host_id:
            del self._by_url[host.upload_url]
        if host is not None and self.changes is not None:
            self.changes.hosts.add(host_id)
        self.awaited.pop(host_id, None)
        for task_id, length in self.host_tasks.pop(host_id, {}).items():
            self._drop_peer(self.tasks[task_id][length], host_id)

    def alive(self, host_id: str) -> bool:
        host = self.hosts.get(host_id)
        return host is not None and self.clock() - host.last_seen <= HOST_EXPIRY

    def fresh(self, host: Host) -> bool:
        return self.clock() - host.last_seen <= STALE_AFTER

    def expire_hosts(self) -> list[str]:
        """Hosts that missed their keepalives, and peers of hosts that never announced;
        restored holders waited for in vain are forgotten too."""
        gone = [h for h in [*self.hosts, *(h for h in self.host_tasks if h not in self.hosts)] if not self.alive(h)]
        for host_id in gone:
            self.leave(host_id)
        now = self.clock()
        for host_id in [h for h, keys in self.awaited.items() if all(until < now for until in keys.values())]:
            del self.awaited[host_id]
        return gone

    def seeds(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.is_seed and self.alive(h.id)]

    def host_at(self, upload_url: str) -> str | None:
        """The id of the host that uploads at ``upload_url``."""
        return self._by_url.get(upload_url)

    # -- tasks ---------------------------------------------------------------------

    def task(self, task_id: str, length: int, piece_length: int, ranged: bool = False) -> Task:
        """The task of ``task_id`` with ``length``, created on its first register. Another
        length is another task: a register never touches the swarm of a length it did not say."""
        task = self.tasks.get(task_id, {}).get(length)
        if task is not None and task.piece_length != piece_length:
            if task.peers:
                raise TaskConflict(f"task {task_id} of length {length} has pieces of {task.piece_length} bytes, "
                                   f"not {piece_length}")
            self._forget(task.key)
            task = None
        if task is None:
            if self.task_count >= self.max_tasks and self.empty_since:
                self._forget(next(iter(self.empty_since)))  # the oldest task nobody holds
            if self.task_count >= self.max_tasks:
                raise TooManyTasks(f"this scheduler holds at most {self.max_tasks} tasks")
            task = Task(task_id, length, piece_length, ranged)
            self.tasks.setdefault(task_id, {})[length] = task
            self.task_count += 1
            self.empty_since[task.key] = self.clock()
        elif not task.peers:  # everyone who had it left: the next swarm reads it as its first peer does
            task.ranged = ranged
        return task

    def find(self, task_id: str, host_id: str, length: int | None = None) -> list[Task]:
        """The tasks a call about ``task_id`` from ``host_id`` is about: the one of ``length``
        if it says one, else the one the host is a peer of, else every length of the digest
        (a report from a host that never registered, such as a seed that could not start)."""
        lengths = self.tasks.get(task_id, {})
        if length is None:
            length = self.host_tasks.get(host_id, {}).get(task_id)
        if length is not None:
            return [lengths[length]] if length in lengths else []
        return list(lengths.values())

    def holders(self, task_id: str) -> list[Holder]:
        """Every peer of every length of ``task_id``, with how far it got."""
        out = []
        for task in self.tasks.get(task_id, {}).values():
            for peer in task.peers.values():
                host = self.hosts.get(peer.host_id)
                out.append(Holder(peer.host_id, host.upload_url if host is not None else "",
                                  task.count if peer.done else peer.pieces.bit_count(), task.count, peer.done))
        return out

    def take_changes(self) -> Changes:
        """What changed since the last call (the holdings write it); nothing without tracking."""
        taken = self.changes or Changes()
        if self.changes is not None:
            self.changes = Changes()
        return taken

    def restore(self, task_id: str, record: TaskRecord, hosts: Iterable[tuple[Host, float]] = ()) -> Task | None:
        """Take back a task from ``record`` (another scheduler's, or an earlier run's), with
        ``hosts`` as (announce, seconds since it was made): its seeds' digests, and its
        holders as done peers. None if this state refuses the task (full, or its peers
        say another piece length).

        Nothing here is trusted more than a piece report: a host restored is never a seed
        (only its own announce, and with TLS its certificate, makes one), and digests only
        check pieces; every node still checks the whole blob's SHA-256 before it keeps or
        serves it. A wrong record costs downloads that fail, never a wrong blob: its digests
        are one source (RESTORED), excluded like a lying seed once two hosts' blobs mismatch.
        Holders whose host is not alive are waited for until HOST_EXPIRY: they join when they
        announce.
        """
        try:
            task = self.task(task_id, record.length, record.piece_length)
        except Refused:
            return None
        now = self.clock()
        for host, age in hosts:
            if host.id not in self.hosts and len(self.hosts) < self.max_hosts and 0 <= age <= HOST_EXPIRY:
                restored = replace(host, is_seed=False, last_seen=now - age)
                self.hosts[host.id] = restored
                self._by_url.setdefault(host.upload_url, host.id)
        added = []
        if not self._within(task.excluded.get(RESTORED), FAILURE_MEMORY):
            for index, digest in sorted(record.digests.items()):
                if 0 <= index < task.count and index not in task.digests:
                    task.digests[index] = digest
                    task.digest_source[index] = RESTORED
                    added.append(index)
        fresh = mask_of(added, task.count)
        task.known |= fresh
        if fresh:
            task.sources[RESTORED] = task.sources.get(RESTORED, 0) | fresh
        for host_id in record.holders:
            if self.alive(host_id):
                self._hold(task, host_id)
            else:
                self.awaited.setdefault(host_id, {})[task.key] = now + HOST_EXPIRY
        task.verified = task.verified or (record.verified and task.known == task.full and not task.seed_conflict)
        task.bump()
        task.digests_at.update(dict.fromkeys(added, task.version))
        return task

    def _hold(self, task: Task, host_id: str) -> None:
        """Make ``host_id`` a done peer of ``task``, unless it takes part in the digest already
        (a register of its own says more than a record)."""
        if task.id not in self.host_tasks.get(host_id, {}):
            self._join(task, host_id, task.full)

    def _hold_awaited(self, host_id: str) -> None:
        now = self.clock()
        for (task_id, length), until in self.awaited.pop(host_id, {}).items():
            task = self.tasks.get(task_id, {}).get(length)
            if task is not None and now <= until:
                self._hold(task, host_id)

    def recorded_holders(self, records: Iterable[TaskRecord], hosts: dict[str, Host]) -> list[Holder]:
        """The holders of a task this scheduler does not hold, as records say (for the
        manager's task search): those whose host is alive here or has an announce in ``hosts``."""
        out = []
        for record in records:
            count = piece_count(record.length, record.piece_length)
            for host_id in sorted(record.holders):
                host = self.hosts.get(host_id) if self.alive(host_id) else hosts.get(host_id)
                if host is not None:
                    out.append(Holder(host_id, host.upload_url, count, count, True))
        return out

    def expire_tasks(self) -> list[TaskKey]:
        """Forget the tasks nobody has held for TASK_EXPIRY."""
        now = self.clock()
        gone = []
        for key, since in self.empty_since.items():  # oldest first
            if now - since < TASK_EXPIRY:
                break
            gone.append(key)
        for key in gone:
            self._forget(key)
        return gone

    def _forget(self, key: TaskKey) -> None:
        task_id, length = key
        lengths = self.tasks[task_id]
        del lengths[length]
        if not lengths:
            del self.tasks[task_id]
        self.task_count -= 1
        self.empty_since.pop(key, None)

    def join(self, task: Task, host_id: str, pieces: Iterable[int], seeding: bool = False) -> Peer:
        """Make ``host_id`` a peer of ``task``; a host that said another length for the digest
        before (one download per digest) leaves that task."""
        return self._join(task, host_id, mask_of(pieces, task.count), seeding)

    def _join(self, task: Task, host_id: str, held: int, seeding: bool = False) -> Peer:
        peer = task.peers.get(host_id)
        if peer is not None and peer.done and held != task.full:
            # It registers again without the whole blob: it lost it (evicted), whatever a
            # record restored from Redis says. It downloads like any newcomer.
            self._drop_peer(task, host_id)
            peer = None
        if peer is None:
            said = self.host_tasks.get(host_id, {}).get(task.id)
            if said is not None:
                self._drop_peer(self.tasks[task.id][said], host_id)
            peer = task.peers[host_id] = Peer(host_id)
            self.host_tasks.setdefault(host_id, {})[task.id] = task.length
            self.empty_since.pop(task.key, None)
        peer.pieces |= held
        peer.seeding = peer.seeding or seeding
        if peer.pieces == task.full:
            self._complete(task, peer)
        task.bump()
        return peer

    def _drop_peer(self, task: Task, host_id: str) -> None:
        peer = task.peers.pop(host_id, None)
        if peer is None:
            return
        if peer.done and self.changes is not None:
            self.changes.holding[(task.key, host_id)] = False
        self._set_parents(peer, frozenset())
        tasks = self.host_tasks.get(host_id)
        if tasks is not None and tasks.get(task.id) == task.length:
            del tasks[task.id]
            if not tasks:
                del self.host_tasks[host_id]
        if task.lease is not None and task.lease[0] == host_id:
            task.lease = None
        if not task.peers:
            self.empty_since[task.key] = self.clock()
        task.bump()

    def _set_parents(self, peer: Peer, parents: frozenset[str]) -> None:
        """Keep ``uploads`` (each host's children, over every task) as a peer's parents change."""
        for gone in peer.parents - parents:
            left = self.uploads[gone] - 1
            if left:
                self.uploads[gone] = left
            else:
                del self.uploads[gone]
        for new in parents - peer.parents:
            self.uploads[new] = self.uploads.get(new, 0) + 1
        peer.parents = parents

    def _complete(self, task: Task, peer: Peer) -> None:
        peer.done, peer.seeding = True, False
        self._set_parents(peer, frozenset())
        if self.changes is not None:
            self.changes.holding[(task.key, peer.host_id)] = True

    def report_pieces(self, task: Task, host_id: str, pieces: Sequence[PieceNews], trusted: bool) -> list[int]:
        """Record pieces a peer holds, and their digests when ``trusted`` (a seed that read the
        origin, not excluded from the task). Returns indexes whose digest disagreed (ignored)."""
        peer = task.peers.get(host_id) or self.join(task, host_id, ())
        trusted = trusted and not self._within(task.excluded.get(host_id), FAILURE_MEMORY)
        host = self.hosts.get(host_id)
        rejected, added, held = [], [], []
        for news in pieces:
            index, digest = news.index, news.digest
            if index >= task.count:
                continue
            known = task.digests.get(index)
            if digest is not None and known is not None and known != digest:
                rejected.append(index)
                if host is not None and host.is_seed:
                    task.seed_conflict = True
                continue
            if digest is not None and known is None and trusted:
                task.digests[index] = digest
                task.digest_source[index] = host_id
                added.append(index)
            held.append(index)
            parent = self.hosts.get(news.parent) if news.parent else None
            if parent is not None:
                parent.successes += 1
                if news.cost is not None:
                    parent.piece_costs.append(news.cost)
        peer.pieces |= mask_of(held, task.count)
        if added:
            fresh = mask_of(added, task.count)
            task.known |= fresh
            task.sources[host_id] = task.sources.get(host_id, 0) | fresh
            if self.changes is not None:
                self.changes.digests.add(task.key)
        if not peer.done and peer.pieces == task.full:
            self._complete(task, peer)
        task.bump()
        task.digests_at.update(dict.fromkeys(added, task.version))
        return rejected

    def report_bad_parent(self, task: Task, host_id: str, parent_id: str) -> None:
        peer = task.peers.get(host_id)
        if peer is not None:
            peer.bad_parents.add(parent_id)
            self._set_parents(peer, peer.parents - {parent_id})
        if parent_id in self.hosts:
            self.hosts[parent_id].failures += 1
        task.bump()

    def trigger_failed(self, seed_id: str) -> None:
        """A peer holding the lease could not get ``seed_id`` to take a task: ask it last for a while."""
        host = self.hosts.get(seed_id)
        if host is not None:
            host.trigger_failed_at = self.clock()

    def finish(self, task: Task, host_id: str, success: bool, reason: str = "", could_not_start: bool = False,
               digest_mismatch: bool = False) -> list[str]:
        """A peer's task ended; a failure ends it for that peer only. Returns the sources this
        report excluded from the task for everyone.

        A seed that ``could_not_start`` it (the origin refused it, or is out of reach) is not
        asked for it again for a while: its peers go to the next seed, or to the origin
        themselves, instead of waiting on a seed that has nothing. The report may come
        before the seed registered. ``digest_mismatch``: see ``_mismatch``.
        """
        now = self.clock()
        host = self.hosts.get(host_id)
        if could_not_start or (digest_mismatch and host is not None and host.is_seed):
            task.failed_seeds[host_id] = now  # asked again, it would read the same origin
        excluded = self._mismatch(task, host_id, now) if digest_mismatch and not success else []
        peer = task.peers.get(host_id)
        if peer is None:
            if excluded:
                task.bump()
            return excluded
        if success:
            self._complete(task, peer)
            if host is not None and host.is_seed and not task.seed_conflict:
                task.verified = task.known == task.full
                if self.changes is not None:
                    self.changes.digests.add(task.key)
            task.bump()
        else:
            self._drop_peer(task, host_id)
        return excluded

    def _mismatch(self, task: Task, reporter: str, now: float) -> list[str]:
        """``reporter`` assembled the blob from pieces that matched the task's digests, and the
        blob's digest did not match: the digests' sources lied (or read a lying origin).
        They are excluded for the reporter; a source two hosts report is excluded for everyone
        and its digests are dropped. Both are forgotten after FAILURE_MEMORY. A source that
        reports its own blob wrong (a seed that read a lying origin) withdraws its digests at once."""
        excluded = []
        for source in list(task.sources):
            if source == reporter:
                self._exclude(task, source, now)
                excluded.append(source)
                continue
            task.excluded_for.setdefault(reporter, {})[source] = now
            reporters = task.mismatches.setdefault(source, {})
            reporters[reporter] = now
            if sum(1 for at in reporters.values() if now - at < FAILURE_MEMORY) >= MISMATCH_QUORUM:
                self._exclude(task, source, now)
                excluded.append(source)
        return excluded

    def _exclude(self, task: Task, source: str, now: float) -> None:
        task.excluded[source] = now
        task.failed_seeds[source] = now
        mask = task.sources.pop(source, 0)
        task.known &= ~mask
        for index in bit_indexes(mask):
            del task.digests[index], task.digests_at[index], task.digest_source[index]
        task.verified = False
        if self.changes is not None:
            self.changes.withdrawn.add(task.key)

    # -- scheduling ----------------------------------------------------------------

    def _within(self, stamp: float | None, memory: float) -> bool:
        return stamp is not None and self.clock() - stamp < memory

    def seed_failed_lately(self, task: Task, host_id: str) -> bool:
        return self._within(task.failed_seeds.get(host_id), SEED_FAILURE_MEMORY)

    def shunned(self, task: Task, host_id: str) -> set[str]:
        """Hosts that must not serve ``host_id`` this task: reported bad by it, or excluded
        for it (its digest mismatches) or for everyone."""
        peer = task.peers.get(host_id)
        out = set(peer.bad_parents) if peer is not None else set()
        out.update(s for s, at in task.excluded_for.get(host_id, {}).items() if self._within(at, FAILURE_MEMORY))
        out.update(s for s, at in task.excluded.items() if self._within(at, FAILURE_MEMORY))
        return out

    def seeds_to_ask(self, task: Task, asker: str) -> list[Host]:
        """The live seeds the lease holder may ask to fetch ``task``, in order: those that missed
        a keepalive last, then those a trigger failed for lately, then by load. Not the asker, nor one that could not start
        this task lately, nor one it shuns."""
        shunned = self.shunned(task, asker)
        seeds = [h for h in self.seeds()
                 if h.id != asker and h.id not in shunned and not self.seed_failed_lately(task, h.id)]
        seeds.sort(key=lambda h: (not self.fresh(h), self._within(h.trigger_failed_at, SEED_FAILURE_MEMORY),
                                  self.uploads.get(h.id, 0), h.id))
        return seeds[:MAX_SEEDS]

    def rank(self, task: Task, host_id: str) -> Ranking:
        """The parents of ``host_id``, best first, and what the rest of its answer needs.

        A parent counts only the pieces whose digest is known (to this child): it cannot
        serve the others. A host the child shuns neither serves it nor keeps it waiting.
        """
        child_peer = task.peers[host_id]
        child_host = self.hosts.get(host_id) or Host(host_id, "")
        shunned = self.shunned(task, host_id)
        known = task.known & ~self._sources_mask(task, shunned)
        missing = task.full & ~child_peer.pieces
        servable = missing & known
        total = max(1, missing.bit_count())
        child = Child(host_id, child_host.idc, child_host.location, frozenset(shunned))
        candidates, peers, seed_starting = [], {}, False
        for peer in task.peers.values():
            host = self.hosts.get(peer.host_id)
            if (peer.host_id == host_id or peer.host_id in shunned or host is None or not host.upload_url
                    or not self.alive(host.id)):
                continue
            # A seed that will hold every piece, and is heard from: one killed mid-download must
            # not be offered, nor waited for, until its keepalives run out.
            seeding = (peer.seeding and host.is_seed and self.fresh(host)
                       and not self.seed_failed_lately(task, host.id))
            seed_starting = seed_starting or seeding
            peers[host.id] = peer
            candidates.append(Candidate(
                host.id, pieces=(peer.pieces & servable).bit_count(), total_pieces=total,
                upload_slots=host.upload_slots * CHILDREN_PER_SLOT,
                uploads_in_flight=self.uploads.get(host.id, 0) - (host.id in child_peer.parents),
                is_seed=host.is_seed, seeding=seeding, idc=host.idc, location=host.location,
                successes=host.successes, failures=host.failures, piece_costs=list(host.piece_costs)))
        parents_of = {p.host_id: set(p.parents) for p in task.peers.values() if p.parents and p.host_id != host_id}
        ranked = rank_parents(child, candidates, parents_of, self.parents_per_peer)
        self._set_parents(child_peer, frozenset(c.host_id for c in ranked))
        return Ranking([(self.hosts[c.host_id], peers[c.host_id]) for c in ranked], seed_starting, known, shunned)

    def _to_source(self, task: Task, peer: Peer) -> tuple[Action, str]:
        """Nobody can serve ``peer`` and no seed can take the task: it reads the origin
        itself, unless the cluster's back-to-source allowance for the task is used up by
        its other peers (then it fails: its pieces would be no use to the swarm anyway,
        since only seeds' piece digests are trusted)."""
        limit = self.back_to_source_limit
        if limit is not None and not peer.sent_to_source:
            sent = sum(1 for p in task.peers.values() if p.sent_to_source)
            if sent >= limit:
                return "fail", (f"no peer or seed peer can serve the task, and the cluster lets at most {limit} "
                                f"peers of a task read the origin ({sent} do)")
        peer.sent_to_source = True
        return "back_to_source", "no seed peer can take the task"

    def _sources_mask(self, task: Task, hosts: set[str]) -> int:
        mask = 0
        for host_id in hosts:
            mask |= task.sources.get(host_id, 0)
        return mask

    def _digests_since(self, task: Task, since: int, shunned: set[str]) -> dict[int, str]:
        """The digests that came after version ``since``, not from sources the peer shuns:
        newest first until the first older one (they are kept in the order they came)."""
        out = {}
        for index in reversed(task.digests):
            if task.digests_at[index] <= since:
                break
            if task.digest_source[index] not in shunned:
                out[index] = task.digests[index]
        return out

    def schedule(self, task: Task, host_id: str, since: int = -1) -> Schedule:
        """The answer to a peer: its parents with the pieces they can serve, the digests it
        lacks, what to do.

        A peer that polls with the ``since`` version of its last answer (from this ``epoch``)
        gets only the digests that came after it: a blob of 160 pieces has 12 KB of them,
        and every piece report wakes every poller. When nobody can serve it and no seed is
        starting, one peer at a time holds the trigger lease: it asks the seeds itself.
        """
        version, epoch, verified = task.version, self.epoch, task.verified
        if task.peers[host_id].done:
            return Schedule("done", version=version, epoch=epoch, verified=verified)
        ranking = self.rank(task, host_id)
        now = self.clock()
        action: Action
        seeds: tuple[SeedInfo, ...] = ()
        if ranking.parents:
            action, reason = "download", ""
        elif task.peers[host_id].seeding:  # it reads the origin already: no lease, nobody to wait for
            action, reason = "back_to_source", "this host reads the origin"
        elif ranking.seed_starting:
            action, reason = "wait", "a seed peer is starting the download"
        elif task.lease is not None and task.lease[0] != host_id and now < task.lease[1]:
            action, reason = "wait", "another peer is asking a seed peer to fetch the task"
        elif found := self.seeds_to_ask(task, host_id):
            if task.lease is None or now >= task.lease[1]:  # asking again does not stretch one's lease
                task.lease = (host_id, now + TRIGGER_LEASE)
            action, reason = "seed", "nobody holds the task: ask these seed peers"
            seeds = tuple(SeedInfo(h.id, h.upload_url) for h in found)
        else:
            action, reason = self._to_source(task, task.peers[host_id])
        return Schedule(
            action, reason, version=version, epoch=epoch, verified=verified,
            # Peers still downloading this task, the asker included: they will trade pieces.
            swarm=sum(1 for p in task.peers.values() if not p.done and not p.seeding),
            digests=self._digests_since(task, since, ranking.shunned),
            parents=tuple(ParentInfo(h.id, h.upload_url, h.is_seed, p.seeding and h.is_seed,
                                     bitmap_bytes(p.pieces & ranking.known, task.count)) for h, p in ranking.parents),
            seeds=seeds)

"""What outlives a scheduler, in Redis: which hosts hold which blobs whole, the seeds' piece
digests of each, and each live host's announce. A restarted scheduler, or one new to the
ring, takes a task back from it at the task's first register (``restore``), so that a peer
that asks right after a restart gets the holders as parents instead of the seed; the
manager's task search reads it for tasks a scheduler does not hold.

Redis never sits on a schedule: writes go out behind the answers, every FLUSH_INTERVAL
(one pipeline, with what the state's ``changes`` collected), and a restore that Redis does
not answer within RESTORE_WAIT is skipped (the task starts afresh, as without Redis). One
write waits: a piece report that brought trusted digests is answered once they are in
Redis (at most DURABLE_WAIT, not at all while Redis is down). A seed serves a piece only
after that answer (damselfly.network.swarm.Reporter.confirm), so a scheduler killed at any
moment loses no digest of a piece in the swarm: the next one restores it, or the seed's
unanswered report goes to it.

While Redis is down nothing waits for it and nothing piles up: changes are dropped, and
once it answers again everything this scheduler holds is written anew (a catch-up). A
marker key of this scheduler's run, read back on every write, tells a Redis that came back
empty (restarted without persistence) from one that kept everything. Every key has a TTL:
hosts' announces live as long as the host would here (HOST_EXPIRY since it announced), tasks
TASK_TTL after the last scheduler that held them refreshed them.

Nothing read here is trusted more than a piece report (see SchedulerState.restore): a
poisoned Redis can make downloads fail, never give a wrong blob; like a lying seed, it can
show a range reader (nydus) wrong pieces until two hosts' blobs mismatch (docs/security.md).

Layout (``{d}`` a blob's digest, ``{L}`` a length it was registered with)::

    damselfly:holdings:task:{d}           hash    {L}: piece length, {L}/v: "1" once verified
    damselfly:holdings:digests:{d}:{L}    string  piece i's BLAKE3 digest at bytes 32i..32i+31
                                                  (zeros: unknown), written a run at a time
    damselfly:holdings:holders:{d}        set     "{L} <host id>" for each host holding it whole
    damselfly:holdings:host:{id}          JSON    the host's announce (damselfly.core.wire.HostAnnounce)
    damselfly:holdings:scheduler:{epoch}          this run's marker

Digests are packed (32 bytes a piece, where a hash field took about 150) and carry no
source: a restored task trusts them as one (see SchedulerState.restore).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Iterable

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from damselfly.core.pieces import piece_count, piece_length_for
from damselfly.core.wire import MAX_ID, MAX_PIECES, HostAnnounce
from damselfly.lib.kv import KV_ERRORS
from damselfly.lib.waiting import wait_until_set
from damselfly.scheduler.state import (HOST_EXPIRY, KEEPALIVE_INTERVAL, Changes, Holder, Host, SchedulerState, Task,
                                       TaskKey, TaskRecord)

if TYPE_CHECKING:
    from damselfly.scheduler.app import SchedulerMetrics

log = logging.getLogger(__name__)
PREFIX = "damselfly:holdings:"
FLUSH_INTERVAL = 0.5  # seconds between writes: what a scheduler killed with -9 may lose of holders
DURABLE_WAIT = 0.5  # the most a piece report with new trusted digests waits for Redis
RESTORE_WAIT = 0.5  # the most a register or a task search waits for Redis
FINAL_WAIT = 2.0  # the most a scheduler that stops waits for its last write
TASK_TTL = 3600.0  # seconds a task's keys outlive the last scheduler that held it
TASK_REFRESH = TASK_TTL / 6  # how often a scheduler renews the TTL of every task it holds
HOST_REFRESH = KEEPALIVE_INTERVAL  # how often it writes the announce of every live host again
MARKER_TTL = 60.0
CHUNK = 500  # tasks or hosts per pipeline in a catch-up or a refresh
# Holders read back at once, a random sample of them when there are more: enough parents
# for thousands of children, and a read that stays within RESTORE_WAIT (1000 took 0.2 s).
MAX_READ_HOLDERS = 256
BLAKE3 = "blake3:"
DIGEST_SIZE = 32
UNKNOWN = bytes(DIGEST_SIZE)
# Redis down, hanging, or refusing a command (out of memory, a key of another type): the
# writes wait for the next catch-up, a read is skipped.
FAILURES = (*KV_ERRORS, RedisError)


def task_key(task_id: str) -> str:
    return f"{PREFIX}task:{task_id}"


def digests_key(task_id: str, length: int) -> str:
    return f"{PREFIX}digests:{task_id}:{length}"


def holders_key(task_id: str) -> str:
    return f"{PREFIX}holders:{task_id}"


def host_key(host_id: str) -> str:
    return f"{PREFIX}host:{host_id}"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def pack_digest(digest: str) -> bytes | None:
    """A piece digest as stored (None: not a BLAKE3 digest, not kept)."""
    if not digest.startswith(BLAKE3):
        return None
    try:
        packed = bytes.fromhex(digest[len(BLAKE3):])
    except ValueError:
        return None
    return packed if len(packed) == DIGEST_SIZE and packed != UNKNOWN else None


def parse_digests(value: bytes | None, count: int) -> dict[int, str]:
    """The digests packed in ``value``, by piece index (the first ``count`` at most)."""
    if not value:
        return {}
    return {i: BLAKE3 + packed.hex() for i in range(min(count, len(value) // DIGEST_SIZE))
            if (packed := value[i * DIGEST_SIZE:(i + 1) * DIGEST_SIZE]) != UNKNOWN}


def parse_task(fields: dict[Any, Any], members: Iterable[Any]) -> dict[int, TaskRecord]:
    """The records of a task hash and its holder set, by length, without digests (see
    ``parse_digests``). What does not parse (a length whose piece length is not the one every
    node uses, a holder id out of shape) is left out, never raised."""
    piece_lengths: dict[int, int] = {}
    verified: set[int] = set()
    for raw_field, raw_value in fields.items():
        length_text, slash, name = _text(raw_field).partition("/")
        value = _text(raw_value)
        if not length_text.isdigit() or not 0 < len(length_text) < 20:
            continue
        length = int(length_text)
        if not slash:
            if (length > 0 and value.isdigit() and int(value) == piece_length_for(length)
                    and piece_count(length, int(value)) <= MAX_PIECES):
                piece_lengths[length] = int(value)
        elif name == "v":
            verified.add(length)
    holders: dict[int, set[str]] = {}
    for member in members:
        length_text, _, host_id = _text(member).partition(" ")
        if length_text.isdigit() and 0 < len(host_id) <= MAX_ID and host_id.isprintable():
            holders.setdefault(int(length_text), set()).add(host_id)
    return {length: TaskRecord(length, piece_length, {}, length in verified, frozenset(holders.get(length, ())))
            for length, piece_length in piece_lengths.items()}


def parse_host(value: bytes | None) -> Host | None:
    """A host from its recorded announce (never a seed: see SchedulerState.restore); None if
    it does not parse."""
    if value is None:
        return None
    try:
        announce = HostAnnounce.from_json(json.loads(value))
    except (ValueError, UnicodeDecodeError):  # WireError and JSONDecodeError are ValueErrors
        return None
    return Host(announce.id, announce.upload_url, idc=announce.idc, location=announce.location,
                upload_slots=announce.upload_slots)


def _announce(host: Host) -> str:
    return json.dumps(HostAnnounce(host.id, host.upload_url, host.idc, host.location, host.is_seed,
                                   host.upload_slots).to_json())


class Holdings:
    """A scheduler's side of Redis: writes what changed, catches up, restores (see the module)."""

    def __init__(self, kv: Redis, state: SchedulerState, metrics: SchedulerMetrics) -> None:
        self.kv = kv
        self.state = state
        self.metrics = metrics
        self.up = True  # the last command answered: restores and durable writes may wait for Redis
        self.behind = True  # writes were lost, or Redis may have lost them: write everything anew
        self.marker = f"{PREFIX}scheduler:{state.epoch}"
        self.written: dict[TaskKey, int] = {}  # the task version up to which its digests are in Redis
        self._restoring: dict[TaskKey, asyncio.Future[None]] = {}
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._flushes_started = 0
        self._flushes_done = 0
        self._runner: asyncio.Task[None] | None = None
        metrics.holdings_pending.set_function(lambda: self.pending)
        metrics.holdings_behind.set_function(lambda: int(self.behind))

    @property
    def pending(self) -> int:
        """Changes not written yet."""
        changes = self.state.changes
        if changes is None:
            return 0
        return len(changes.digests) + len(changes.withdrawn) + len(changes.holding) + len(changes.hosts)

    # -- running -------------------------------------------------------------------

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="holdings")

    async def close(self) -> None:
        """Stop writing, after one last write of what changed (at most FINAL_WAIT)."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self.up and not self.behind:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FINAL_WAIT):
                    await self.flush()
        await self.kv.connection_pool.disconnect()  # the node closed the client already; the write reopened it

    async def _run(self) -> None:
        hosts_due = tasks_due = time.monotonic()
        while True:
            await wait_until_set(self._wake, FLUSH_INTERVAL)
            self._wake = asyncio.Event()
            await self.flush()
            now = time.monotonic()
            if self.up and not self.behind and now >= hosts_due:
                hosts_due = now + HOST_REFRESH
                await self._guarded(self._write_hosts(list(self.state.hosts.values())))
            if self.up and not self.behind and now >= tasks_due:
                tasks_due = now + TASK_REFRESH
                await self._guarded(self._refresh_tasks())

    async def flush(self) -> None:
        """Write what changed; everything, when Redis missed writes or lost what it had."""
        self._flushes_started += 1
        try:
            changes = self.state.take_changes()
            was_up = self.up
            if self.behind:
                await self._guarded(self._catch_up())
                if not self.behind and not was_up:
                    log.info("Redis answers again: everything this scheduler holds was written anew")
            elif await self._guarded(self._write(changes)) is False:  # the marker was gone: Redis lost its data
                log.warning("Redis lost what this scheduler wrote (restarted without persistence?): writing "
                            "everything anew")
                await self._guarded(self._catch_up())
        finally:
            self._flushes_done += 1
            self._flushed.set()
            self._flushed = asyncio.Event()

    async def _guarded(self, work: Any) -> Any:
        """``work``'s result; None when Redis failed it (the next flush catches up)."""
        try:
            result = await work
        except FAILURES as exc:
            if self.up:
                log.warning("Redis unreachable: holders and digests wait in memory, and are written anew once "
                            "it answers (%s)", exc or exc.__class__.__name__)
            self.up, self.behind = False, True
            self.metrics.holdings_write_failures.inc()
            return None
        self.up = True
        return result

    async def saved(self, timeout: float = DURABLE_WAIT) -> bool:
        """Wait until what changed so far is in Redis, at most ``timeout`` seconds, and not at
        all while Redis is down; whether it is."""
        if not self.up:
            return False
        target = self._flushes_started + 1  # a write in flight may have taken the changes before this one
        self._wake.set()
        deadline = time.monotonic() + timeout
        while self._flushes_done < target and self.up:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await wait_until_set(self._flushed, left)
        return self.up and not self.behind

    # -- writing -------------------------------------------------------------------

    async def _write(self, changes: Changes) -> bool:
        """One pipeline with ``changes`` behind this run's marker; False if the marker was gone."""
        async with self.kv.pipeline(transaction=False) as pipe:
            pipe.set(self.marker, b"1", ex=int(MARKER_TTL), get=True)
            for key in changes.withdrawn:
                pipe.delete(digests_key(*key))
                pipe.hdel(task_key(key[0]), f"{key[1]}/v")
                self.written[key] = -1
            for key in changes.digests | changes.withdrawn:
                task = self._task(key)
                if task is not None:
                    self._write_task(pipe, task)
            added: dict[str, list[str]] = {}
            removed: dict[str, list[str]] = {}
            for ((task_id, length), host_id), holds in changes.holding.items():
                (added if holds else removed).setdefault(task_id, []).append(f"{length} {host_id}")
            for task_id, members in removed.items():
                pipe.srem(holders_key(task_id), *members)
            for task_id, members in added.items():
                pipe.sadd(holders_key(task_id), *members)
                pipe.expire(holders_key(task_id), int(TASK_TTL))
            for host_id in changes.hosts:
                host = self.state.hosts.get(host_id)
                if host is None:
                    pipe.delete(host_key(host_id))
                else:
                    self._write_host(pipe, host)
            answers = await pipe.execute()
        return answers[0] is not None

    def _task(self, key: TaskKey) -> Task | None:
        return self.state.tasks.get(key[0], {}).get(key[1])

    def _write_task(self, pipe: Pipeline, task: Task) -> None:
        """The task's digests that came since the last write (a SETRANGE per run of
        consecutive pieces), its piece length and verification."""
        since = self.written.get(task.key, -1)
        run: list[bytes] = []
        start = previous = -2
        for index in sorted(i for i in task.digests if task.digests_at[i] > since):
            packed = pack_digest(task.digests[index])
            if packed is None:
                continue
            if index != previous + 1 and run:
                pipe.setrange(digests_key(*task.key), start * DIGEST_SIZE, b"".join(run))
                run = []
            if not run:
                start = index
            run.append(packed)
            previous = index
        if run:
            pipe.setrange(digests_key(*task.key), start * DIGEST_SIZE, b"".join(run))
        fields = {f"{task.length}": task.piece_length}
        if task.verified:  # only a withdrawal unverifies a task, and it deletes the flag
            fields[f"{task.length}/v"] = 1
        pipe.hset(task_key(task.id), mapping=fields)
        pipe.expire(task_key(task.id), int(TASK_TTL))
        pipe.expire(digests_key(*task.key), int(TASK_TTL))
        self.written[task.key] = task.version

    def _write_host(self, pipe: Pipeline, host: Host) -> None:
        """The host's announce, kept as long as it lives here: another scheduler takes it for
        alive no longer than this one would."""
        left = HOST_EXPIRY - (self.state.clock() - host.last_seen)
        if left > 0.001:
            pipe.set(host_key(host.id), _announce(host), px=int(left * 1000))

    async def _write_hosts(self, hosts: list[Host]) -> None:
        for start in range(0, len(hosts), CHUNK):
            async with self.kv.pipeline(transaction=False) as pipe:
                for host in hosts[start:start + CHUNK]:
                    self._write_host(pipe, host)
                await pipe.execute()

    async def _catch_up(self) -> None:
        """Write everything this scheduler holds (after an outage, or a Redis that lost it)."""
        await self.kv.set(self.marker, b"1", ex=int(MARKER_TTL))
        self.written.clear()
        tasks = [task for lengths in self.state.tasks.values() for task in lengths.values()]
        for start in range(0, len(tasks), CHUNK):
            async with self.kv.pipeline(transaction=False) as pipe:
                for task in tasks[start:start + CHUNK]:
                    if self._task(task.key) is not task:
                        continue  # forgotten meanwhile
                    self._write_task(pipe, task)
                    if holders := [f"{task.length} {p.host_id}" for p in task.peers.values() if p.done]:
                        pipe.sadd(holders_key(task.id), *holders)
                        pipe.expire(holders_key(task.id), int(TASK_TTL))
                await pipe.execute()
        await self._write_hosts(list(self.state.hosts.values()))
        self.behind = False
        self.metrics.holdings_catch_ups.inc()

    async def _refresh_tasks(self) -> None:
        """Renew the TTL of every task held here, and forget what is written of tasks gone."""
        self.written = {key: version for key, version in self.written.items() if self._task(key) is not None}
        keys = [key for task_id, lengths in self.state.tasks.items() for key in
                (task_key(task_id), holders_key(task_id), *(digests_key(task_id, length) for length in lengths))]
        for start in range(0, len(keys), CHUNK):
            async with self.kv.pipeline(transaction=False) as pipe:
                for key in keys[start:start + CHUNK]:
                    pipe.expire(key, int(TASK_TTL))
                await pipe.execute()

    # -- reading -------------------------------------------------------------------

    async def _load(self, task_id: str, length: int | None = None
                    ) -> tuple[dict[int, TaskRecord], dict[str, tuple[Host, float]]]:
        """The records of ``task_id`` by length (with its digests for ``length``), and the
        recorded announces of their holders with their age (two round trips)."""
        async with self.kv.pipeline(transaction=False) as pipe:
            pipe.hgetall(task_key(task_id))
            pipe.srandmember(holders_key(task_id), MAX_READ_HOLDERS)
            if length is not None:
                pipe.get(digests_key(task_id, length))
            fields, members, *packed = await pipe.execute()
        records = parse_task(fields, members)
        record = records.get(length) if length is not None else None
        if record is not None:
            records[record.length] = replace(record, digests=parse_digests(
                packed[0], piece_count(record.length, record.piece_length)))
        holders = sorted({host_id for record in records.values() for host_id in record.holders})
        hosts: dict[str, tuple[Host, float]] = {}
        if holders:
            async with self.kv.pipeline(transaction=False) as pipe:
                for host_id in holders:
                    pipe.get(host_key(host_id))
                    pipe.pttl(host_key(host_id))
                answers = await pipe.execute()
            for host_id, value, ttl in zip(holders, answers[::2], answers[1::2], strict=True):
                host = parse_host(value)
                if host is not None and host.id == host_id and isinstance(ttl, int) and ttl > 0:
                    hosts[host_id] = (host, max(0.0, HOST_EXPIRY - ttl / 1000))
        return records, hosts

    async def _load_in_time(self, task_id: str, length: int | None = None
                            ) -> tuple[dict[int, TaskRecord], dict[str, tuple[Host, float]]] | None:
        if not self.up:
            return None
        try:
            async with asyncio.timeout(RESTORE_WAIT):
                return await self._load(task_id, length)
        except FAILURES as exc:  # TimeoutError included: a Redis that hangs is down too
            if self.up:
                log.warning("Redis did not answer about %s: the task starts afresh (%s)", task_id,
                            exc or exc.__class__.__name__)
            self.up, self.behind = False, True
            return None

    async def restore(self, task_id: str, length: int) -> None:
        """Take the task back from Redis if this scheduler does not hold it (one read for any
        number of registers at once); nothing if Redis has no record or does not answer."""
        key = (task_id, length)
        pending = self._restoring.get(key)
        if pending is None:
            pending = self._restoring[key] = asyncio.ensure_future(self._restore(task_id, length))
            pending.add_done_callback(lambda _: self._restoring.pop(key, None))
        await asyncio.shield(pending)

    async def _restore(self, task_id: str, length: int) -> None:
        loaded = await self._load_in_time(task_id, length)
        if loaded is None:
            self.metrics.holdings_restores.labels("unavailable").inc()
            return
        records, hosts = loaded
        record = records.get(length)
        if record is None:
            self.metrics.holdings_restores.labels("absent").inc()
            return
        fresh = (task_id, length) not in self.written and self._task((task_id, length)) is None
        task = self.state.restore(task_id, record, hosts.values())
        if task is None:
            return
        if fresh:  # its digests came from Redis: nothing to write back
            self.written[task.key] = task.version
        self.metrics.holdings_restores.labels("restored").inc()
        log.info("restored %s from Redis: %d digests, %d of %d holders alive", task_id, len(record.digests),
                 sum(1 for p in task.peers.values() if p.done), len(record.holders))

    async def holders(self, task_id: str) -> list[Holder]:
        """The holders of a task this scheduler does not hold, as Redis records them (for the
        manager's task search); none while Redis is down."""
        loaded = await self._load_in_time(task_id)
        if loaded is None:
            return []
        records, hosts = loaded
        return self.state.recorded_holders(records.values(), {h: host for h, (host, _) in hosts.items()})

"""The scheduler's state with an injected clock: leases, trust, exclusions, bounds, expiry."""

from __future__ import annotations

import pytest

from damselfly.scheduler.state import (
    FAILURE_MEMORY,
    HOST_EXPIRY,
    SEED_FAILURE_MEMORY,
    STALE_AFTER,
    TASK_EXPIRY,
    TRIGGER_LEASE,
    Host,
    SchedulerState,
    Task,
    TaskConflict,
    TooManyHosts,
    TooManyTasks,
    bit_indexes,
    bitmap_bytes,
    mask_of,
)
from damselfly.core.wire import PieceNews

TASK = "sha256:" + "a" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_state(*seeds: str, peers: tuple[str, ...] = ("p1", "p2"), **kw: int) -> tuple[SchedulerState, Clock]:
    clock = Clock()
    state = SchedulerState(clock=clock, **kw)
    for host_id in seeds or ("seed",):
        state.announce(Host(host_id, f"http://{host_id}:65002", is_seed=True))
    for host_id in peers:
        state.announce(Host(host_id, f"http://{host_id}:65002"))
    return state, clock


def keepalive(state: SchedulerState, *host_ids: str) -> None:
    for host_id in host_ids:
        known = state.hosts[host_id]
        state.announce(Host(host_id, known.upload_url, is_seed=known.is_seed))


def news(*indexes: int, digest: str | None = None, parent: str | None = None, cost: float | None = None
         ) -> list[PieceNews]:
    return [PieceNews(i, digest if digest is None else f"{digest}{i}", cost, parent) for i in indexes]


def uploads_recounted(state: SchedulerState) -> dict[str, int]:
    counts: dict[str, int] = {}
    for task in (t for lengths in state.tasks.values() for t in lengths.values()):
        for peer in task.peers.values():
            for parent in peer.parents:
                counts[parent] = counts.get(parent, 0) + 1
    return counts


def test_bitmaps_are_the_wire_byte_order():
    assert mask_of([0, 9, 99], 10) == 0b10_0000_0001
    assert bitmap_bytes(mask_of([0, 9], 10), 10) == b"\x01\x02"
    assert bit_indexes(mask_of([3, 0, 7], 8)) == [0, 3, 7]


def test_one_peer_holds_the_trigger_lease_and_the_others_wait_until_a_seed_starts():
    state, clock = make_state("seed", "seed2")
    task = state.task(TASK, length=10, piece_length=4)
    state.join(task, "p1", [])
    first = state.schedule(task, "p1")
    assert first.action == "seed" and [s.host_id for s in first.seeds] == ["seed", "seed2"]
    assert first.seeds[0].upload_url == "http://seed:65002"
    state.join(task, "p2", [])
    assert state.schedule(task, "p2").action == "wait"
    clock.advance(TRIGGER_LEASE / 2)
    assert state.schedule(task, "p1").action == "seed"  # the holder asks again: still its turn
    clock.advance(TRIGGER_LEASE / 2)  # but its lease is not stretched
    keepalive(state, "seed", "seed2", "p1", "p2")
    assert state.schedule(task, "p2").action == "seed"  # the holder went quiet: the lease passed on
    state.join(task, "seed", [], seeding=True)  # a seed accepted and registered
    assert state.schedule(task, "seed").action == "back_to_source"  # it reads the origin: it takes no lease
    for host_id in ("p1", "p2"):
        answer = state.schedule(task, host_id)
        assert answer.action == "download" and [(p.host_id, p.seeding) for p in answer.parents] == [("seed", True)]


def test_without_seeds_a_peer_goes_back_to_source_and_a_holder_that_leaves_frees_the_lease():
    state, _ = make_state("seed")
    task = state.task(TASK, length=10, piece_length=4)
    state.join(task, "p1", [])
    state.join(task, "p2", [])
    assert state.schedule(task, "p1").action == "seed"
    state.leave("p1")
    assert state.schedule(task, "p2").action == "seed"
    state.leave("seed")
    answer = state.schedule(task, "p2")
    assert answer.action == "back_to_source" and "no seed peer" in answer.reason


def test_digests_come_only_from_trusted_reports_and_must_agree():
    state, _ = make_state()
    task = state.task(TASK, length=10, piece_length=4)
    state.report_pieces(task, "p1", news(0, digest="forged"), trusted=False)
    assert task.digests == {} and task.known == 0
    state.report_pieces(task, "seed", news(0, 1, digest="d"), trusted=True)
    assert task.digests == {0: "d0", 1: "d1"} and task.known == 0b11 and task.sources == {"seed": 0b11}
    assert state.report_pieces(task, "p2", [PieceNews(0, "other", 0.1, "seed")], trusted=False) == [0]
    state.report_pieces(task, "p2", [PieceNews(1, "d1", 0.1, "seed")], trusted=False)
    assert state.hosts["seed"].successes == 1 and list(state.hosts["seed"].piece_costs) == [0.1]
    assert task.peers["p2"].pieces == 0b10  # the disagreeing piece is not counted as held


def test_a_parent_serves_only_pieces_whose_digest_is_known_and_bad_parents_are_skipped():
    state, clock = make_state()
    task = state.task(TASK, length=12, piece_length=4)
    state.report_pieces(task, "seed", news(0, digest="d"), trusted=True)
    state.join(task, "p1", [0, 1, 2])  # pieces 1 and 2: nobody knows their digest
    state.join(task, "p2", [])
    answer = {p.host_id: p for p in state.schedule(task, "p2").parents}
    assert set(answer) == {"p1", "seed"}
    assert answer["p1"].bitmap == b"\x01"  # what p1 can serve verifiably
    state.join(task, "p2", [0])
    after = state.schedule(task, "p2")  # p1 holds nothing p2 can check: not a parent
    assert after.parents == () and after.action == "seed"
    state.report_pieces(task, "seed", news(1, digest="d"), trusted=True)
    assert {p.host_id for p in state.schedule(task, "p2").parents} == {"p1", "seed"}
    state.report_bad_parent(task, "p2", "p1")
    assert [p.host_id for p in state.schedule(task, "p2").parents] == ["seed"]
    clock.advance(HOST_EXPIRY + 1)
    keepalive(state, "p2")
    assert state.expire_hosts() == ["seed", "p1"]
    assert set(task.peers) == {"p2"}


def test_a_child_that_reported_a_starting_seed_bad_is_not_kept_waiting_for_it():
    """A seed killed mid-download: its children must get another seed, or the origin, at once,
    not wait for its keepalives to run out."""
    state, _ = make_state("seed", "seed2")
    task = state.task(TASK, length=12, piece_length=4)
    state.join(task, "p1", [])
    state.join(task, "p2", [])
    state.join(task, "seed", [], seeding=True)
    assert state.schedule(task, "p1").action == "download"
    state.report_bad_parent(task, "p1", "seed")
    answer = state.schedule(task, "p1")
    assert answer.action == "seed" and [s.host_id for s in answer.seeds] == ["seed2"]
    state.report_bad_parent(task, "p1", "seed2")
    assert state.schedule(task, "p1").action == "back_to_source"
    # p2 never reported the seed: for p2 it is still starting.
    assert [p.host_id for p in state.schedule(task, "p2").parents] == ["seed"]


def test_a_starting_seed_that_missed_a_keepalive_keeps_nobody_waiting():
    """Killed mid-download, before it held anything: its children ask another seed at once."""
    state, clock = make_state("seed", "seed2")
    task = state.task(TASK, length=12, piece_length=4)
    state.join(task, "seed", [], seeding=True)
    state.join(task, "p1", [])
    assert state.schedule(task, "p1").action == "download"
    clock.advance(STALE_AFTER + 1)
    keepalive(state, "p1", "seed2")
    assert state.alive("seed")  # its keepalives have not run out yet
    answer = state.schedule(task, "p1")
    assert answer.action == "seed" and [s.host_id for s in answer.seeds] == ["seed2", "seed"]


def test_a_peer_reading_the_origin_keeps_nobody_waiting_and_its_digests_are_not_taken():
    state, _ = make_state()
    task = state.task(TASK, length=8, piece_length=4)
    state.join(task, "p1", [], seeding=True)  # a peer sent back to source
    state.report_pieces(task, "p1", news(0, digest="d"), trusted=False)
    state.join(task, "p2", [])
    answer = state.schedule(task, "p2")
    assert answer.action == "seed" and answer.parents == () and answer.digests == {}


def test_one_failure_report_fails_the_task_for_nobody_else():
    state, _ = make_state()
    task = state.task(TASK, length=12, piece_length=4)
    state.join(task, "seed", [], seeding=True)
    state.join(task, "p1", [])
    state.join(task, "p2", [])
    state.finish(task, "p1", success=False, reason="digest mismatch: source sent sha256:y")
    assert "p1" not in task.peers and state.schedule(task, "p2").action == "download"
    state.finish(task, "seed", success=False, reason="digest mismatch: source sent sha256:y")
    assert state.schedule(task, "p2").action in ("seed", "back_to_source")
    state.join(task, "p1", [])
    assert state.schedule(task, "p1").action != "fail"


def test_a_digest_mismatch_excludes_its_sources_for_the_reporter_then_for_everyone():
    state, clock = make_state("liar", "honest", peers=("p1", "p2", "p3"))
    task = state.task(TASK, length=8, piece_length=4)
    state.join(task, "liar", [0, 1])
    state.report_pieces(task, "liar", news(0, 1, digest="bad"), trusted=True)
    for host_id in ("p1", "p2", "p3"):
        state.join(task, host_id, [])
    assert [p.host_id for p in state.schedule(task, "p1").parents] == ["liar"]
    assert state.finish(task, "p1", success=False, digest_mismatch=True) == []
    state.join(task, "p1", [])
    again = state.schedule(task, "p1")
    assert again.parents == () and again.digests == {}  # neither the liar nor its digests
    assert again.action == "seed" and [s.host_id for s in again.seeds] == ["honest"]
    assert [p.host_id for p in state.schedule(task, "p3").parents] == ["liar"]  # others are not told yet
    assert state.finish(task, "p2", success=False, digest_mismatch=True) == ["liar"]
    assert task.digests == {} and task.known == 0 and "liar" not in task.sources
    assert state.schedule(task, "p3").parents == ()
    state.report_pieces(task, "liar", news(0, digest="bad"), trusted=True)
    assert task.digests == {}  # an excluded source's digests are not taken
    task.lease = None  # p1 asked the seeds meanwhile
    assert "liar" not in [s.host_id for s in state.schedule(task, "p3").seeds]
    clock.advance(FAILURE_MEMORY + 1)
    keepalive(state, "liar", "honest", "p1", "p2", "p3")
    state.report_pieces(task, "liar", news(0, digest="bad"), trusted=True)
    assert task.digests == {0: "bad0"}  # failures expire


def test_a_seed_whose_own_blob_mismatched_withdraws_its_digests_at_once():
    state, _ = make_state("seed", "seed2")
    task = state.task(TASK, length=8, piece_length=4)
    state.join(task, "seed", [], seeding=True)
    state.report_pieces(task, "seed", news(0, digest="d"), trusted=True)
    state.join(task, "p1", [0])
    assert state.finish(task, "seed", success=False, digest_mismatch=True) == ["seed"]
    assert task.digests == {} and state.seed_failed_lately(task, "seed")
    state.join(task, "p2", [])
    answer = state.schedule(task, "p2")
    assert answer.parents == () and [s.host_id for s in answer.seeds] == ["seed2"]


def test_a_finished_peer_gets_done_and_its_parents_are_released():
    state, _ = make_state()
    task = state.task(TASK, length=8, piece_length=4)
    state.join(task, "seed", [], seeding=True)
    state.join(task, "p1", [])
    state.schedule(task, "p1")
    assert state.uploads == {"seed": 1}
    state.report_pieces(task, "p1", news(0, 1), trusted=False)
    assert state.uploads == {} and state.schedule(task, "p1").action == "done"


def test_upload_counters_follow_parents_through_ranks_reports_and_leaves():
    state, _ = make_state(peers=tuple(f"p{i}" for i in range(6)))
    task = state.task(TASK, length=16, piece_length=4)
    state.join(task, "seed", [], seeding=True)
    state.report_pieces(task, "seed", news(0, 1, 2, 3, digest="d"), trusted=True)
    for i in range(6):
        state.join(task, f"p{i}", [i % 4])
    for i in range(6):
        state.schedule(task, f"p{i}")
    assert state.uploads == uploads_recounted(state) and state.uploads["seed"] == 6
    state.report_bad_parent(task, "p0", "seed")
    state.finish(task, "p1", success=False)
    state.leave("p2")
    state.report_pieces(task, "p3", news(0, 1, 2, 3), trusted=False)
    assert state.uploads == uploads_recounted(state) and state.uploads["seed"] == 2


def test_swarm_counts_peers_still_downloading():
    state, _ = make_state()
    task = state.task(TASK, length=8, piece_length=4)
    state.join(task, "seed", [], seeding=True)
    state.join(task, "p1", [])
    state.join(task, "p2", [0])
    assert state.schedule(task, "p1").swarm == 2


def test_a_task_is_verified_only_by_a_seed_that_stored_it_with_agreeing_digests():
    state, _ = make_state()
    task = state.task(TASK, length=8, piece_length=4)
    state.join(task, "seed", [], seeding=True)
    state.report_pieces(task, "p1", [PieceNews(0, "d0"), PieceNews(1, "d1")], trusted=True)
    state.join(task, "p1", [0, 1])
    state.finish(task, "p1", success=True)
    assert not task.verified  # a normal peer cannot vouch for a blob
    state.report_pieces(task, "seed", [PieceNews(0, "d0"), PieceNews(1, "other")], trusted=True)
    state.finish(task, "seed", success=True)
    assert not task.verified  # the seed disagreed with a digest it did not report
    clean = state.task("sha256:" + "b" * 64, length=8, piece_length=4)
    state.join(clean, "seed", [], seeding=True)
    state.report_pieces(clean, "seed", news(0, 1, digest="d"), trusted=True)
    state.finish(clean, "seed", success=True)
    assert clean.verified and state.schedule(clean, "seed").action == "done"


def test_a_poll_gets_only_the_digests_that_came_since_its_last_answer():
    state, _ = make_state()
    task = state.task(TASK, length=16, piece_length=4)
    state.join(task, "p1", [])
    state.join(task, "seed", [], seeding=True)
    state.report_pieces(task, "seed", news(0, 1, digest="d"), trusted=True)
    first = state.schedule(task, "p1")
    assert first.digests == {0: "d0", 1: "d1"}
    state.report_pieces(task, "seed", news(2, digest="d"), trusted=True)
    state.report_pieces(task, "p2", news(0, parent="seed", cost=0.1), trusted=False)  # no new digest
    later = state.schedule(task, "p1", since=first.version)
    assert later.digests == {2: "d2"} and later.version > first.version
    assert len(state.schedule(task, "p1").digests) == 3
    assert state.schedule(task, "p1", since=later.version).digests == {}


def test_a_seed_that_could_not_start_a_task_is_not_asked_for_it_for_a_while():
    state, clock = make_state()
    task = state.task(TASK, length=10, piece_length=4)
    state.join(task, "p1", [])
    state.join(task, "seed", [], seeding=True)
    state.finish(task, "seed", success=False, reason="mid-download failure")
    assert not state.seed_failed_lately(task, "seed")  # a seed that failed after starting may be asked again
    state.join(task, "seed", [], seeding=True)
    state.finish(task, "seed", success=False, reason="seed could not start: 429", could_not_start=True)
    assert state.seed_failed_lately(task, "seed") and "seed" not in task.peers
    assert state.schedule(task, "p1").action == "back_to_source"
    clock.advance(SEED_FAILURE_MEMORY + 1)  # a 429 passes: the seed may be asked again
    keepalive(state, "seed", "p1")
    assert state.schedule(task, "p1").action == "seed"
    # The report may overtake the seed's registration.
    other = state.task("sha256:" + "b" * 64, length=10, piece_length=4)
    state.finish(other, "seed", success=False, reason="seed could not start", could_not_start=True)
    assert state.seed_failed_lately(other, "seed")


def test_a_seed_a_trigger_failed_for_is_asked_last_for_a_while():
    state, clock = make_state("seed", "seed2")
    task = state.task(TASK, length=10, piece_length=4)
    state.join(task, "p1", [])
    assert [h.id for h in state.seeds_to_ask(task, "p1")] == ["seed", "seed2"]
    state.trigger_failed("seed")
    keepalive(state, "seed")  # a keepalive keeps the memory
    assert [h.id for h in state.seeds_to_ask(task, "p1")] == ["seed2", "seed"]
    assert [h.id for h in state.seeds_to_ask(task, "seed2")] == ["seed"]
    clock.advance(SEED_FAILURE_MEMORY + 1)
    keepalive(state, "seed", "seed2")
    assert [h.id for h in state.seeds_to_ask(task, "p1")] == ["seed", "seed2"]


def test_seeds_are_asked_by_load():
    state, _ = make_state("busy", "idle", peers=("p1", "p2"))
    other = state.task("sha256:" + "b" * 64, length=8, piece_length=4)
    state.join(other, "busy", [], seeding=True)
    state.join(other, "p2", [])
    state.schedule(other, "p2")
    task = state.task(TASK, length=8, piece_length=4)
    state.join(task, "p1", [])
    assert [s.host_id for s in state.schedule(task, "p1").seeds] == ["idle", "busy"]


def test_a_task_whose_peers_all_left_takes_the_next_first_peers_way_of_reading_then_expires():
    """A nydus blob first fetched whole (a preheat), then read lazily by daemons that restarted
    empty: the seed must fill it by ranges, or a read at its end waits for the stream."""
    state, clock = make_state()
    task = state.task(TASK, length=10, piece_length=4)
    state.join(task, "p1", [])
    assert state.task(TASK, length=10, piece_length=4, ranged=True).ranged is False  # p1 still reads
    state.leave("p1")
    assert state.task(TASK, length=10, piece_length=4, ranged=True).ranged is True
    clock.advance(TASK_EXPIRY - 1)
    assert state.expire_tasks() == []
    clock.advance(2)
    assert state.expire_tasks() == [(TASK, 10)] and state.tasks == {} and state.task_count == 0


def test_a_register_with_another_piece_length_cannot_wipe_a_swarm():
    state, _ = make_state()
    task = state.task(TASK, length=10, piece_length=4)
    state.join(task, "p1", [0])
    with pytest.raises(TaskConflict):
        state.task(TASK, length=10, piece_length=8)
    assert state.tasks[TASK] == {10: task} and "p1" in task.peers
    state.finish(task, "p1", success=False)
    assert state.task(TASK, length=10, piece_length=8).piece_length == 8  # nobody held it: taken as said


def test_a_squatted_length_is_its_own_task_and_the_true_length_swarm_goes_on():
    """A host that read a lying registry registers the digest at 100 MiB first; an honest
    peer, then a seed, register its true length: they are scheduled together, apart from it."""
    state, _ = make_state("seed", peers=("squatter", "honest"))
    squatted = state.task(TASK, length=100 << 20, piece_length=512 << 10)
    state.join(squatted, "squatter", [], seeding=True)
    task = state.task(TASK, length=8 << 20, piece_length=256 << 10)
    assert task is not squatted and task.length == 8 << 20
    state.join(task, "honest", [])
    assert state.schedule(task, "honest").action == "seed"  # nobody holds the true blob: ask a seed
    state.join(task, "seed", [], seeding=True)
    answer = state.schedule(task, "honest")
    assert answer.action == "download" and [p.host_id for p in answer.parents] == ["seed"]
    assert "squatter" not in task.peers and set(squatted.peers) == {"squatter"}
    assert state.find(TASK, "honest") == [task] and state.find(TASK, "squatter") == [squatted]
    assert state.find(TASK, "stranger") == [squatted, task] and state.task_count == 2

    state.join(task, "squatter", [])  # the squatter's next download says the true length: it moves
    assert squatted.peers == {} and state.find(TASK, "squatter") == [task]
    assert state.host_tasks["squatter"] == {TASK: 8 << 20}
    state.leave("squatter")
    assert set(task.peers) == {"honest", "seed"} and "squatter" not in state.host_tasks


def test_hosts_and_tasks_are_capped_and_expired_hosts_make_room():
    state, clock = make_state(peers=("p1",), max_hosts=2, max_tasks=2)
    with pytest.raises(TooManyHosts, match="at most 2 hosts"):
        state.announce(Host("p2", "http://p2:1"))
    keepalive(state, "p1")  # a known host always may
    clock.advance(HOST_EXPIRY + 1)
    keepalive(state, "p1")
    state.announce(Host("p2", "http://p2:1"))  # the seed stopped announcing: its room is taken
    assert set(state.hosts) == {"p1", "p2"}
    first = state.task("sha256:" + "1" * 64, 4, 4)
    state.join(first, "p1", [])
    state.task("sha256:" + "2" * 64, 4, 4)  # nobody joined it: the first to go
    state.task("sha256:" + "3" * 64, 4, 4)
    assert set(state.tasks) == {first.id, "sha256:" + "3" * 64} and state.task_count == 2
    state.join(state.tasks["sha256:" + "3" * 64][4], "p2", [])
    with pytest.raises(TooManyTasks):
        state.task("sha256:" + "4" * 64, 4, 4)


def test_peers_of_hosts_that_never_announced_expire():
    state, _ = make_state()
    task = state.task(TASK, length=8, piece_length=4)
    state.join(task, "ghost", [])
    assert state.expire_hosts() == ["ghost"] and "ghost" not in task.peers and isinstance(task, Task)


def test_a_done_peer_that_registers_again_without_the_blob_downloads_it_again():
    """It lost the blob (evicted): answered "done", it would wait 15 s and read the origin."""
    state, _ = make_state()
    task = state.task(TASK, length=8, piece_length=4)
    state.join(task, "seed", [0, 1])
    state.report_pieces(task, "seed", news(0, 1, digest="d"), trusted=True)
    state.join(task, "p1", [0, 1])
    assert state.schedule(task, "p1").action == "done"
    state.join(task, "p1", [])
    answer = state.schedule(task, "p1")
    assert answer.action == "download" and [p.host_id for p in answer.parents] == ["seed"]
    state.join(task, "p1", [0, 1])  # a register with every piece changes nothing
    assert state.schedule(task, "p1").action == "done"

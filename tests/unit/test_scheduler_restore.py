"""What a scheduler keeps beyond its life, without Redis: the changes the state collects for
it, a task restored from a record (pure, with an injected clock), and records read back
from whatever Redis holds."""

from __future__ import annotations

from damselfly.scheduler.holdings import pack_digest, parse_digests, parse_host, parse_task
from damselfly.scheduler.state import HOST_EXPIRY, RESTORED, Changes, Host, SchedulerState, TaskRecord
from tests.unit.test_scheduler_state import TASK, Clock, make_state, news

LENGTH, PIECE = 8, 4  # two pieces


def record(holders: tuple[str, ...] = ("p1", "p2"), verified: bool = True) -> TaskRecord:
    return TaskRecord(LENGTH, PIECE, {0: "d0", 1: "d1"}, verified, frozenset(holders))


def restored_state(*hosts: str) -> tuple[SchedulerState, Clock]:
    return make_state("seed", peers=hosts, track_changes=True)


def test_without_tracking_nothing_is_collected() -> None:
    state, _ = make_state()
    task = state.task(TASK, length=LENGTH, piece_length=PIECE)
    state.join(task, "p1", [0, 1])
    assert state.changes is None and state.take_changes() == Changes()


def test_the_state_collects_holders_digests_and_hosts_as_they_change() -> None:
    state, _ = restored_state("p1", "p2")
    assert state.take_changes().hosts == {"seed", "p1", "p2"}
    state.announce(Host("p1", "http://p1:65002"))  # a keepalive that changes nothing
    state.announce(Host("p2", "http://p2:65003"))  # a new upload address
    task = state.task(TASK, length=LENGTH, piece_length=PIECE)
    state.join(task, "seed", [], seeding=True)
    state.report_pieces(task, "seed", news(0, 1, digest="d"), trusted=True)
    state.join(task, "p1", [])
    state.report_pieces(task, "p1", news(0, 1), trusted=False)
    state.finish(task, "seed", success=True)
    changes = state.take_changes()
    assert changes.hosts == {"p2"} and changes.digests == {task.key} and changes.withdrawn == set()
    assert changes.holding == {(task.key, "seed"): True, (task.key, "p1"): True}
    assert task.verified

    state.leave("p1")
    state.finish(task, "seed", success=False, digest_mismatch=True)  # a source withdrawn
    changes = state.take_changes()
    assert changes.holding == {(task.key, "p1"): False, (task.key, "seed"): False}
    assert changes.hosts == {"p1"} and changes.withdrawn == {task.key}
    assert state.take_changes() == Changes()


def test_a_restored_task_hands_out_its_holders_with_the_seeds_digests() -> None:
    state, _ = restored_state("p1", "p2", "p3")
    task = state.restore(TASK, record())
    assert task is not None and task.verified
    assert task.digests == {0: "d0", 1: "d1"} and task.digest_source == {0: RESTORED, 1: RESTORED}
    state.join(task, "p3", [])
    answer = state.schedule(task, "p3")
    assert answer.action == "download" and {p.host_id for p in answer.parents} == {"p1", "p2"}
    assert answer.digests == {0: "d0", 1: "d1"}
    assert state.holders(TASK)[0].done


def test_a_restored_digest_that_proves_wrong_excludes_its_source_as_any_other() -> None:
    state, _ = restored_state("p1", "p2", "p3", "p4")
    task = state.restore(TASK, record())
    assert task is not None
    for reporter in ("p3", "p4"):
        state.join(task, reporter, [])
        state.finish(task, reporter, success=False, digest_mismatch=True)
    assert task.digests == {} and not task.verified and RESTORED in task.excluded
    assert state.restore(TASK, record()) is task and task.digests == {}  # not taken back while excluded


def test_hosts_come_back_from_their_records_never_as_seeds_and_only_while_they_would_be_alive() -> None:
    state, clock = make_state("seed", peers=(), track_changes=True)
    state.take_changes()
    clock.advance(100)
    old = Host("p1", "http://p1:65002", idc="east", is_seed=True, upload_slots=3)
    task = state.restore(TASK, record(), [(old, HOST_EXPIRY - 1), (Host("p2", "http://p2:65002"), HOST_EXPIRY + 1)])
    assert task is not None
    p1 = state.hosts["p1"]
    assert not p1.is_seed and p1.idc == "east" and p1.upload_slots == 3 and state.alive("p1")
    assert "p2" not in state.hosts and state.awaited == {"p2": {task.key: 100 + HOST_EXPIRY}}
    assert {p for p, peer in task.peers.items() if peer.done} == {"p1"}
    assert state.take_changes().hosts == set()  # what came from Redis is not written back
    clock.advance(2)
    assert not state.alive("p1")  # as long as it would have lived where it announced


def test_a_holder_waited_for_joins_when_it_announces_and_is_forgotten_after_host_expiry() -> None:
    state, clock = make_state("seed", peers=(), track_changes=True)
    task = state.restore(TASK, record(holders=("p1", "p2")))
    assert task is not None and not task.peers
    state.announce(Host("p1", "http://p1:65002"))
    assert task.peers["p1"].done and "p1" not in state.awaited
    clock.advance(HOST_EXPIRY + 1)
    state.announce(Host("seed", "http://seed:65002", is_seed=True))
    state.expire_hosts()
    assert state.awaited == {}
    state.announce(Host("p2", "http://p2:65002"))
    assert "p2" not in task.peers


def test_a_record_never_overrides_what_a_host_said_itself() -> None:
    state, _ = restored_state("p1", "p2")
    task = state.task(TASK, length=LENGTH, piece_length=PIECE)
    state.join(task, "p1", [0])  # downloading
    assert state.restore(TASK, record()) is task
    assert not task.peers["p1"].done and task.peers["p2"].done
    # A holder that registers again without the blob lost it: it downloads like a newcomer.
    assert state.schedule(task, "p2").action == "done"
    state.join(task, "p2", [])
    answer = state.schedule(task, "p2")
    assert not task.peers["p2"].done and answer.action != "done"


def test_a_record_of_another_piece_length_or_past_the_task_cap_restores_nothing() -> None:
    state, _ = make_state("seed", peers=("p1",), track_changes=True, max_tasks=1)
    task = state.task(TASK, length=LENGTH, piece_length=PIECE)
    state.join(task, "p1", [])
    assert state.restore(TASK, TaskRecord(LENGTH, 2, {}, False, frozenset({"p1"}))) is None
    assert state.restore("sha256:" + "e" * 64, record()) is None


def test_records_read_back_skip_whatever_is_out_of_shape() -> None:
    fields = {b"1048576": b"262144", b"1048576/v": b"1",
              b"junk": b"1", b"99": b"7",  # not the piece length nodes use
              b"0": b"262144", b"99999999999999999999": b"1", b"\xff": b"\xff"}
    members = [b"1048576 p1", b"1048576 ", b"x p2", b"1048576 p3", b"77 p4", b"1048576 \x01"]
    records = parse_task(fields, members)
    assert list(records) == [1048576]
    kept = records[1048576]
    assert kept.piece_length == 262144 and kept.verified and kept.digests == {}
    assert kept.holders == frozenset({"p1", "p3"})
    assert parse_host(b'{"id": "p1", "upload_url": "http://p1:65002", "seed": true}') == Host(
        "p1", "http://p1:65002")
    for junk in (None, b"{", b"[]", b'{"id": "p1"}', b"\xff"):
        assert parse_host(junk) is None


def test_digests_are_packed_32_bytes_a_piece_zeros_for_unknown() -> None:
    first, third = f"blake3:{'a' * 64}", f"blake3:{'0' * 63}1"
    packed = pack_digest(first)
    assert packed == bytes.fromhex("a" * 64)
    for unkept in (f"{'a' * 64}", "blake3:" + "0" * 64, "blake3:xyz", "blake3:" + "a" * 62):
        assert pack_digest(unkept) is None  # SHA-256 of earlier versions, the unknown marker, junk
    value = packed + bytes(32) + pack_digest(third) + b"trailing"  # type: ignore[operator]
    assert parse_digests(value, count=4) == {0: first, 2: third}
    assert parse_digests(value, count=1) == {0: first}  # never past the task's pieces
    assert parse_digests(None, count=4) == {}

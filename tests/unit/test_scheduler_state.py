import asyncio

from damselfly.scheduler.state import HOST_EXPIRY, Host, SchedulerState


def make_state():
    now = [0.0]
    state = SchedulerState(clock=lambda: now[0])
    for host_id, seed in [("seed", True), ("p1", False), ("p2", False)]:
        state.announce(Host(host_id, f"http://{host_id}:65002", is_seed=seed))
    return state, now


def test_empty_task_asks_for_a_seed_then_the_seeding_seed_is_a_parent():
    async def scenario():
        state, _ = make_state()
        task = state.task("sha256:x", length=10, piece_length=4, origin={})
        state.join(task, "p1", [])
        assert state.schedule(task, "p1")["action"] == "seed"
        state.join(task, "seed", [], seeding=True)
        answer = state.schedule(task, "p1")
        assert answer["action"] == "download" and [p["host_id"] for p in answer["parents"]] == ["seed"]
        assert answer["parents"][0]["seeding"] is True

    asyncio.run(scenario())


def test_digests_come_only_from_the_origin_side_and_must_agree():
    async def scenario():
        state, _ = make_state()
        task = state.task("sha256:x", length=10, piece_length=4, origin={})
        state.report_pieces(task, "p1", [(0, "forged", None, None)], trusted=False)
        assert task.digests == {}
        state.report_pieces(task, "seed", [(0, "d0", None, None), (1, "d1", None, None)], trusted=True)
        assert task.digests == {0: "d0", 1: "d1"}
        assert state.report_pieces(task, "p2", [(0, "other", 0.1, "seed")], trusted=False) == [0]
        state.report_pieces(task, "p2", [(1, "d1", 0.1, "seed")], trusted=False)
        assert state.hosts["seed"].successes == 1 and list(state.hosts["seed"].piece_costs) == [0.1]

    asyncio.run(scenario())


def test_peers_become_parents_bad_parents_are_skipped_and_hosts_expire():
    async def scenario():
        state, now = make_state()
        task = state.task("sha256:x", length=12, piece_length=4, origin={})
        state.join(task, "p1", [0, 1, 2])
        state.join(task, "p2", [])
        assert [p["host_id"] for p in state.schedule(task, "p2")["parents"]] == ["p1"]
        state.report_bad_parent(task, "p2", "p1")
        assert state.schedule(task, "p2")["action"] == "seed"
        now[0] += HOST_EXPIRY + 1
        state.announce(Host("p2", "http://p2:65002"))
        assert state.expire_hosts() == ["seed", "p1"]
        assert set(task.peers) == {"p2"}

    asyncio.run(scenario())


def test_a_failed_origin_digest_fails_the_task():
    async def scenario():
        state, _ = make_state()
        task = state.task("sha256:x", length=12, piece_length=4, origin={})
        state.join(task, "seed", [], seeding=True)
        state.join(task, "p1", [])
        state.finish(task, "seed", success=False, reason="digest mismatch: source sent sha256:y")
        assert state.schedule(task, "p1") == {"action": "fail", "reason": "digest mismatch: source sent sha256:y",
                                              "version": task.version, "epoch": state.epoch}

    asyncio.run(scenario())


def test_a_finished_peer_triggers_nothing():
    async def scenario():
        state, _ = make_state()
        task = state.task("sha256:x", length=4, piece_length=4, origin={})
        state.join(task, "p1", [0])
        assert state.schedule(task, "p1")["action"] == "done"
        other = state.schedule(state.task("sha256:x", 4, 4, {}), "p1")
        assert other["action"] == "done" and other["parents"] == []

    asyncio.run(scenario())


def test_swarm_counts_peers_still_downloading():
    async def scenario():
        state, _ = make_state()
        task = state.task("sha256:x", length=8, piece_length=4, origin={})
        state.join(task, "seed", [], seeding=True)
        state.join(task, "p1", [])
        state.join(task, "p2", [0])
        assert state.schedule(task, "p1")["swarm"] == 2

    asyncio.run(scenario())


def test_a_task_is_verified_only_by_a_seed_that_stored_it_with_agreeing_digests():
    async def scenario():
        state, _ = make_state()
        task = state.task("sha256:x", length=8, piece_length=4, origin={})
        state.join(task, "seed", [], seeding=True)
        state.report_pieces(task, "p1", [(0, "d0", None, None), (1, "d1", None, None)], trusted=True)
        state.join(task, "p1", [0, 1])
        state.finish(task, "p1", success=True)
        assert not task.verified  # a normal peer cannot vouch for a blob
        state.report_pieces(task, "seed", [(0, "d0", None, None), (1, "other", None, None)], trusted=True)
        state.finish(task, "seed", success=True)
        assert not task.verified  # the seed disagreed with a digest it did not report
        clean = state.task("sha256:y", length=8, piece_length=4, origin={})
        state.join(clean, "seed", [], seeding=True)
        state.report_pieces(clean, "seed", [(0, "d0", None, None), (1, "d1", None, None)], trusted=True)
        state.finish(clean, "seed", success=True)
        assert clean.verified and state.schedule(clean, "seed")["action"] == "done"

    asyncio.run(scenario())


def test_a_poll_gets_only_the_digests_that_came_since_its_last_answer():
    async def scenario():
        state, _ = make_state()
        task = state.task("sha256:x", length=16, piece_length=4, origin={})
        state.join(task, "p1", [])
        state.join(task, "seed", [], seeding=True)
        state.report_pieces(task, "seed", [(0, "d0", None, None), (1, "d1", None, None)], trusted=True)
        first = state.schedule(task, "p1")
        assert first["digests"] == {"0": "d0", "1": "d1"}
        state.report_pieces(task, "seed", [(2, "d2", None, None)], trusted=True)
        state.report_pieces(task, "p2", [(0, None, 0.1, "seed")], trusted=False)  # no new digest
        later = state.schedule(task, "p1", since=first["version"])
        assert later["digests"] == {"2": "d2"} and later["version"] > first["version"]
        assert len(state.schedule(task, "p1")["digests"]) == 3
        assert state.schedule(task, "p1", since=later["version"])["digests"] == {}

    asyncio.run(scenario())


def test_a_seed_that_could_not_start_a_task_is_not_asked_for_it_for_a_while():
    async def scenario():
        state, now = make_state()
        task = state.task("sha256:x", length=10, piece_length=4, origin={})
        state.join(task, "p1", [])
        state.join(task, "seed", [], seeding=True)
        state.finish(task, "seed", success=False, reason="mid-download failure")
        assert not state.seed_failed_lately(task, "seed")  # a seed that failed after starting may be asked again
        state.join(task, "seed", [], seeding=True)
        state.finish(task, "seed", success=False, reason="seed could not start: 429", could_not_start=True)
        assert state.seed_failed_lately(task, "seed")
        assert "seed" not in task.peers
        assert state.schedule(task, "p1")["action"] == "seed"  # the app then finds no seed left to ask
        now[0] += 61  # a 429 passes: the seed may be asked again
        assert not state.seed_failed_lately(task, "seed")
        # The report may overtake the scheduler's record of the seed's acceptance.
        other = state.task("sha256:y", length=10, piece_length=4, origin={})
        state.finish(other, "seed", success=False, reason="seed could not start", could_not_start=True)
        assert state.seed_failed_lately(other, "seed")

    asyncio.run(scenario())


def test_a_seed_a_trigger_failed_for_is_asked_last_for_a_while():
    async def scenario():
        state, now = make_state()
        state.announce(Host("seed2", "http://seed2:65002", is_seed=True))
        task = state.task("sha256:x", length=10, piece_length=4, origin={})
        assert [h.id for h in state.seeds_to_ask(task, exclude="p1")] == ["seed", "seed2"]
        state.trigger_failed("seed")
        state.announce(Host("seed", "http://seed:65002", is_seed=True))  # a keepalive keeps the memory
        assert [h.id for h in state.seeds_to_ask(task, exclude="p1")] == ["seed2", "seed"]
        assert [h.id for h in state.seeds_to_ask(task, exclude="seed2")] == ["seed"]
        now[0] += 61
        for seed in ("seed", "seed2"):  # their keepalives went on meanwhile
            state.announce(Host(seed, f"http://{seed}:65002", is_seed=True))
        assert [h.id for h in state.seeds_to_ask(task, exclude="p1")] == ["seed", "seed2"]

    asyncio.run(scenario())


def test_a_task_whose_peers_all_left_takes_the_next_first_peers_way_of_reading():
    """A nydus blob first fetched whole (a preheat), then read lazily by daemons that restarted
    empty: the seed must fill it by ranges, or a read at its end waits for the stream."""
    state, _ = make_state()
    task = state.task("sha256:x", length=10, piece_length=4, origin={})
    state.join(task, "p1", [])
    assert state.task("sha256:x", length=10, piece_length=4, origin={}, ranged=True).ranged is False  # p1 still reads
    state.leave("p1")
    state.leave("seed")
    assert state.task("sha256:x", length=10, piece_length=4, origin={}, ranged=True).ranged is True

"""The choice rules of a peer's download, on plain data: which piece comes next (readers'
first, then the rarest among peers, then a window of a seed's), of which parent, how many
at once, and when a parent is worth waiting for."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

import pytest

from damselfly.core.pieces import PieceBitmap
from damselfly.network.policy import (SEED_REQUESTS, DownloadState, Parent, Request, least_busy, may_give,
                                      next_request, run_limit_for)

COUNT = 12
PIECE = 256 * 1024  # a run holds 4 such pieces when it is small, 64 when it is not
EVERY = range(COUNT)


def peer(name: str, held: Iterable[int], in_flight: int = 0) -> Parent:
    bitmap = PieceBitmap(COUNT)
    for index in held:
        bitmap.add(index)
    return Parent(name, f"http://{name}", is_seed=False, seeding=False, bitmap=bitmap, in_flight=in_flight)


def seed(name: str = "seed", in_flight: int = 0, seeding: bool = True) -> Parent:
    return Parent(name, f"http://{name}", is_seed=True, seeding=seeding, bitmap=PieceBitmap(COUNT),
                  in_flight=in_flight)


def state(*parents: Parent, needed: Iterable[int] = EVERY, waited_for: Mapping[int, int] | None = None,
          rest: bool = True, digests: Iterable[int] = EVERY, swarm: int = 1, ranged: bool = False) -> DownloadState:
    return DownloadState(needed=frozenset(needed), waited_for=waited_for or {}, rest_may_follow=rest,
                         parents=parents, digests=set(digests), swarm=swarm, concurrency=4, piece_length=PIECE,
                         ranged=ranged)


def choose(download: DownloadState, seed_value: int = 0) -> Request | None:
    return next_request(download, random.Random(seed_value))


def test_nothing_needed_or_no_parent_means_no_request():
    assert choose(state(seed(), needed=())) is None
    assert choose(state()) is None


def test_a_waited_for_piece_comes_first_with_the_pieces_up_to_its_readers_end():
    holder = peer("p", EVERY)
    assert choose(state(holder, waited_for={5: 7})) == Request(5, 3, holder)
    assert choose(state(holder, waited_for={9: 9, 5: 5})).run == range(5, 6), "the lowest waited-for piece first"


def test_a_waited_for_piece_comes_from_a_seed_when_no_peer_can_give_it_even_past_the_seeds_share():
    busy_seed = seed(in_flight=SEED_REQUESTS)
    holder = peer("p", [5])
    assert choose(state(holder, busy_seed, waited_for={5: 5}, digests=[])).parent is busy_seed, \
        "a peer's piece without a known digest is not taken from the peer"
    assert choose(state(holder, busy_seed, waited_for={2: 2}, swarm=3)) == Request(2, 1, busy_seed)


def test_a_run_from_a_seed_others_need_too_is_small_even_for_a_reader():
    assert choose(state(seed(), waited_for={0: 11}, swarm=3)).run == range(0, 4)
    assert choose(state(seed(), waited_for={0: 11}, swarm=1)).run == range(0, 12)


def test_pieces_no_reader_waits_for_wait_while_the_rest_may_not_follow():
    assert choose(state(peer("p", EVERY), seed(), rest=False)) is None


def test_peers_give_their_rarest_piece_then_the_ones_after_it_that_the_same_peer_holds():
    rare = peer("rare", [6, 7, 8, 10])
    common = peer("common", [1, 2, 3, 4, 5, 6])
    other = peer("other", [1, 2, 3, 4, 5])
    download = state(common, other, rare, needed=set(EVERY) - {9})
    chosen = {(r.index, r.count, r.parent.host_id) for r in (choose(download, value) for value in range(40)) if r}
    assert chosen == {(7, 2, "rare"), (8, 1, "rare"), (10, 1, "rare")}, "one of the rarest, at random"


def test_a_run_stops_at_a_piece_not_needed_or_whose_digest_is_unknown():
    holder = peer("p", EVERY)
    assert choose(state(holder, needed=[3, 4, 6], waited_for={3: 11})).run == range(3, 5)
    assert choose(state(holder, digests=[3, 4, 6], waited_for={3: 11})).run == range(3, 5)


def test_a_peer_in_a_crowd_takes_a_random_piece_of_a_window_from_a_seed():
    chosen = {r.index for r in (choose(state(seed(), swarm=3), value) for value in range(60)) if r}
    assert chosen == set(range(6)), "one of the first 2 x crowd missing pieces"


def test_the_seed_window_starts_at_the_first_piece_readers_wait_for():
    on_its_way_to_a_reader = state(seed(), swarm=2, needed=set(EVERY) - {5}, waited_for={5: 5})
    chosen = {r.index for r in (choose(on_its_way_to_a_reader, value) for value in range(60)) if r}
    assert chosen == {6, 7, 8, 9}


def test_a_peer_in_a_crowd_asks_a_seed_for_at_most_its_share_alone_it_streams_in_order():
    assert choose(state(seed(in_flight=SEED_REQUESTS), swarm=3)) is None
    alone = seed(in_flight=3)
    assert choose(state(alone)) == Request(0, COUNT, alone), "up to the peer's concurrency, in order"
    assert choose(state(seed(in_flight=4))) is None


def test_a_seed_that_has_not_the_chosen_piece_is_not_asked():
    finished = seed(seeding=False)
    assert choose(state(finished)) is None
    finished.bitmap.add(0)
    assert choose(state(finished)) == Request(0, 1, finished)


@pytest.mark.parametrize(("parent", "swarm", "ranged", "waited_for", "pieces"), [
    (peer("p", EVERY), 3, False, False, 64),
    (seed(), 1, False, False, 64),
    (seed(), 3, False, True, 4),
    (peer("p", EVERY), 1, True, False, 4),
    (peer("p", EVERY), 1, True, True, 64),
], ids=["peer", "seed-alone", "seed-in-a-crowd", "ranged-background", "ranged-for-a-reader"])
def test_runs_are_small_where_a_long_one_would_be_in_the_way(parent, swarm, ranged, waited_for, pieces):
    download = state(parent, swarm=swarm, ranged=ranged)
    assert run_limit_for(download, parent, crowd=swarm, waited_for=waited_for) == pieces


def test_the_least_busy_parent_is_asked():
    idle, busy = peer("idle", EVERY), peer("busy", EVERY, in_flight=2)
    assert {least_busy([busy, idle], random.Random(value)).host_id for value in range(10)} == {"idle"}
    assert choose(state(busy, idle, waited_for={0: 0})).parent is idle


def test_a_seed_still_fetching_is_asked_again_after_not_here_anyone_else_is_dropped():
    assert seed(seeding=True).refused_wait() is not None
    assert seed(seeding=False).refused_wait() is None
    assert peer("p", EVERY).refused_wait() is None


@pytest.mark.parametrize(("parent", "digests", "refusing", "gives"), [
    (peer("p", EVERY), (), False, False),
    (peer("p", EVERY), (1,), False, True),
    (seed(), (), False, True),
    (seed(), (), True, False),
], ids=["peer-without-digests", "peer-with-a-digest", "busy-or-slow-seed", "seed-that-says-not-here"])
def test_a_parent_may_give_a_missing_piece_unless_it_refuses_or_nobody_could_check_it(
        parent, digests, refusing, gives):
    refused = {parent.host_id} if refusing else set()
    assert may_give(parent, lacking=[1, 2], digests=set(digests), refusing=refused) is gives
    assert not may_give(parent, lacking=[], digests=set(digests), refusing=set())

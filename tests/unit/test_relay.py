"""Where a seed sends a peer that asks for a piece it already sends to others."""

from __future__ import annotations

from damselfly.network.relay import DIRECT, FANOUT, REMEMBER_SECONDS, RelayBook


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_first_askers_are_served_then_later_ones_go_to_them_in_turn():
    book = RelayBook(Clock())
    assert [book.route("t", range(0, 1), f"p{i}") for i in range(DIRECT)] == [None] * DIRECT
    assert book.route("t", range(0, 1), "x") == "p0"
    assert book.route("t", range(0, 1), "y") in {f"p{i}" for i in range(DIRECT)} | {"x"}


def test_a_holder_takes_at_most_fanout_askers_and_askers_become_holders():
    book = RelayBook(Clock())
    book.route("t", range(0, 1), "a")
    book.route("t", range(0, 1), "b")
    sent = [book.route("t", range(0, 1), f"x{i}") for i in range(20)]
    assert None not in sent, "later askers are holders too, so there is always one with room"
    assert max(sent.count(url) for url in set(sent)) <= FANOUT


def test_pieces_and_tasks_are_apart_and_old_holders_are_forgotten():
    clock = Clock()
    book = RelayBook(clock)
    book.route("t", range(0, 1), "a")
    book.route("t", range(0, 1), "b")
    assert book.route("t", range(1, 2), "c") is None, "another piece"
    assert book.route("u", range(0, 1), "c") is None, "another task"
    clock.now += REMEMBER_SECONDS + 1
    assert book.route("t", range(0, 1), "c") is None, "a and b may have dropped the blob by now"


def test_an_asker_that_asks_again_is_served_so_that_no_two_peers_wait_on_each_other():
    book = RelayBook(Clock())
    book.route("t", range(0, 1), "a")
    book.route("t", range(0, 1), "b")
    assert book.route("t", range(0, 1), "c") in {"a", "b"}
    assert book.route("t", range(0, 1), "c") is None, "c may be waited on by later askers: never sent on again"
    assert book.route("t", range(0, 1), "a") is None


def test_an_asker_holds_its_whole_run_so_askers_of_later_pieces_go_to_it_too():
    book = RelayBook(Clock())
    for asker in ("a", "b")[:DIRECT]:
        book.route("t", range(0, 4), asker)
    assert book.route("t", range(2, 6), "c") in {"a", "b"}, "a is getting piece 2 in its run"
    assert book.route("t", range(6, 8), "d") is None, "nobody has asked for piece 6"
    assert book.route("t", range(7, 8), "e") == "d"


def test_a_seed_takes_a_receiver_url_only_on_the_askers_own_address():
    from damselfly.upload.server import _from_asker

    assert _from_asker("http://10.0.0.4:65002", "10.0.0.4")
    assert _from_asker("http://[::1]:65002", "::1")
    assert not _from_asker("http://10.0.0.9:65002", "10.0.0.4"), "someone else's address"
    assert not _from_asker("not a url", "10.0.0.4")
    assert not _from_asker("http://10.0.0.4:65002", None)

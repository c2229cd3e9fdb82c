from damselfly.scheduler.evaluator import (
    Candidate,
    Child,
    affinity,
    downstream,
    rank_parents,
    score,
    slow_outliers,
)


def cand(host_id: str, **kw) -> Candidate:
    base = dict(pieces=5, total_pieces=10, upload_slots=4, uploads_in_flight=0)
    base.update(kw)
    return Candidate(host_id, **base)


def test_more_pieces_free_slots_and_success_rank_higher():
    child = Child("me")
    assert score(child, cand("a", pieces=10)) > score(child, cand("b", pieces=2))
    assert score(child, cand("a", uploads_in_flight=0)) > score(child, cand("b", uploads_in_flight=3))
    assert score(child, cand("a", successes=10)) > score(child, cand("b", successes=2, failures=8))
    assert score(child, cand("a", is_seed=True)) > score(child, cand("b"))


def test_affinity_prefers_same_idc_then_shared_location():
    child = Child("me", idc="idc1", location="cn|hz|z1")
    assert affinity(child, cand("a", idc="idc1")) == 1.0
    assert affinity(child, cand("b", location="cn|hz|z2")) == 2 / 3
    assert affinity(child, cand("c", location="us|ny")) == 0.0
    ranked = rank_parents(child, [cand("far", location="us"), cand("near", idc="idc1")], {})
    assert [c.host_id for c in ranked] == ["near", "far"]


def test_filters_self_full_bad_empty_and_slow_parents():
    child = Child("me", bad_parents=frozenset({"reported"}))
    candidates = [
        cand("me"), cand("reported"), cand("full", uploads_in_flight=4), cand("empty", pieces=0),
        cand("seeding", pieces=0, seeding=True), cand("slow", piece_costs=[5.0, 5.0, 5.0]),
        cand("fast1", piece_costs=[0.1, 0.1, 0.1]), cand("fast2", piece_costs=[0.2, 0.1, 0.1]),
    ]
    assert slow_outliers(candidates) == {"slow"}
    assert {c.host_id for c in rank_parents(child, candidates, {}, limit=10)} == {"seeding", "fast1", "fast2"}


def test_a_slow_parent_is_kept_when_nobody_else_can_serve_and_seeds_are_never_slow_outliers():
    slow = cand("slow", piece_costs=[5.0, 5.0, 5.0])
    empty_fast = cand("fast", pieces=0, piece_costs=[0.1, 0.1, 0.1])
    assert [c.host_id for c in rank_parents(Child("me"), [slow, empty_fast], {})] == ["slow"]
    seed = cand("seed", is_seed=True, piece_costs=[5.0, 5.0, 5.0])
    assert slow_outliers([seed, cand("fast1", piece_costs=[0.1] * 3)]) == set()


def test_never_a_cycle():
    parents_of = {"a": {"b"}, "b": {"me"}}
    assert downstream("me", parents_of) == {"a", "b"}
    assert downstream("c", parents_of) == set()
    ranked = rank_parents(Child("me"), [cand("a"), cand("b"), cand("c")], parents_of)
    assert [c.host_id for c in ranked] == ["c"]


def test_limit_and_deterministic_order():
    ranked = rank_parents(Child("me"), [cand(f"h{i}") for i in range(10)], {}, limit=3)
    assert [c.host_id for c in ranked] == ["h0", "h1", "h2"]


def test_the_median_a_slow_outlier_is_measured_against_leaves_the_candidate_out():
    costs = [0.1, 0.2, 0.3, 0.4]
    peers = [cand(f"p{i}", piece_costs=[c] * 3) for i, c in enumerate(costs)]
    # p3 against 0.1, 0.2, 0.3: median 0.2; 5 times that is 1.0, and 0.4 is under it.
    assert slow_outliers(peers) == set()
    outlier = cand("x", piece_costs=[1.3] * 3)  # against 0.1..0.4: median 0.25, 5x = 1.25
    assert slow_outliers([*peers, outlier]) == {"x"}
    assert slow_outliers([*peers, cand("y", piece_costs=[1.2] * 3)]) == set()
    assert slow_outliers([outlier]) == set()  # nobody to compare with

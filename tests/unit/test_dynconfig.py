"""A member's reading of the manager's answers: the cluster configuration parsed strictly,
the upload limits a peer applies, the log of changes, and when the scheduler ring changes."""

from __future__ import annotations

import math

import pytest

from damselfly.core.dynconfig import ClusterConfig, describe_changes, schedulers_to_use, upload_limits

A, B, C = "http://10.0.0.1:8002", "http://10.0.0.2:8002", "http://10.0.0.3:8002"


def test_the_managers_config_parses_and_defaults_the_missing_keys() -> None:
    config = ClusterConfig.from_json({"upload_rate": 1000, "upload_slots": 2, "candidate_parent_limit": 3,
                                      "back_to_source": 0, "block_list": ["nginx", "nginx"], "future_key": 1})
    assert config == ClusterConfig(1000, 2, 3, 0, ("nginx",))
    assert ClusterConfig.from_json({}) == ClusterConfig()
    assert ClusterConfig.from_json({"upload_rate": None, "back_to_source": None}) == ClusterConfig()


@pytest.mark.parametrize(("document", "key"), [
    ([], "JSON object"),
    ({"upload_rate": 0}, "upload_rate"),
    ({"upload_rate": "1MB"}, "upload_rate"),
    ({"upload_slots": 5000}, "upload_slots"),
    ({"candidate_parent_limit": None}, "candidate_parent_limit"),
    ({"candidate_parent_limit": True}, "candidate_parent_limit"),
    ({"back_to_source": -1}, "back_to_source"),
    ({"block_list": "nginx"}, "block_list"),
    ({"block_list": [1]}, "block_list"),
])
def test_nonsense_is_refused_naming_the_key(document: object, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        ClusterConfig.from_json(document)


def test_a_peer_takes_the_clusters_upload_limits_and_else_its_own() -> None:
    assert upload_limits(ClusterConfig(), None, 16) == (None, 16)
    assert upload_limits(ClusterConfig(), 5000, 8) == (5000, 8)
    assert upload_limits(ClusterConfig(upload_rate=1000, upload_slots=2), 5000, 8) == (1000, 2)


def test_changes_are_described_key_by_key() -> None:
    old = ClusterConfig()
    new = ClusterConfig(upload_rate=1000, block_list=("a", "b"))
    assert describe_changes(old, new) == ["upload_rate: none -> 1000", "block_list: 0 entries -> 2 entries"]
    assert describe_changes(new, new) == []
    assert describe_changes(None, new) == ["upload_rate: 1000", "upload_slots: none", "candidate_parent_limit: 4",
                                           "back_to_source: none", "block_list: 2 entries"]  # the first answer


def test_an_empty_ring_takes_the_first_list_at_once() -> None:
    assert schedulers_to_use([], [A, B + "/"], 0.0, 60.0) == [A, B]


def test_an_empty_answer_keeps_the_last_list() -> None:
    assert schedulers_to_use([A, B], [], math.inf, 60.0) is None
    assert schedulers_to_use([], [], math.inf, 60.0) is None


def test_a_changed_list_waits_for_the_refresh_interval() -> None:
    assert schedulers_to_use([A, B], [A, C], 10.0, 60.0) is None
    assert schedulers_to_use([A, B], [A, C], 60.0, 60.0) == [A, C]
    assert schedulers_to_use([A, B], [B, A], 600.0, 60.0) is None  # the same schedulers in another order

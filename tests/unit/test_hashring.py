from collections import Counter

import pytest

from damselfly.lib.hashring import HashRing


def test_every_member_once_owner_first_and_stable():
    ring = HashRing(["http://a:8002", "http://b:8002", "http://c:8002"])
    order = ring.owners("sha256:abc")
    assert sorted(order) == sorted(ring.members) and len(order) == 3
    assert HashRing(list(reversed(ring.members))).owners("sha256:abc") == order


def test_keys_spread_and_removing_a_member_moves_only_its_keys():
    members = [f"http://s{i}:8002" for i in range(4)]
    ring = HashRing(members)
    keys = [f"task-{i}" for i in range(2000)]
    owners = {k: ring.owners(k)[0] for k in keys}
    counts = Counter(owners.values())
    assert min(counts.values()) > 2000 / 4 * 0.6
    smaller = HashRing(members[:3])
    for key in keys:
        if owners[key] != members[3]:
            assert smaller.owners(key)[0] == owners[key]
        else:
            assert smaller.owners(key)[0] == ring.owners(key)[1]  # its successor takes over


def test_empty_ring_is_refused():
    with pytest.raises(ValueError):
        HashRing([])

import pytest

from damselfly.lib.netaddr import parse_listen
from damselfly.core.oci import Origin
from damselfly.lib.units import format_size, parse_size
from damselfly.mirror.access import AccessCache


@pytest.mark.parametrize("text,expected", [("1024", 1024), ("1KiB", 1024), ("2MiB", 2 << 20), ("1.5GiB", 3 << 29),
                                           ("20GB", 20 * 10**9), ("3kb", 3000), ("1Gi", 1 << 30), (512, 512)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "-1GiB", "1 parsec"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_size():
    assert format_size(512) == "512 B" and format_size(3 << 20) == "3.0 MiB"


@pytest.mark.parametrize("text,expected", [("127.0.0.1:65001", ("127.0.0.1", 65001)), ("[::1]:80", ("::1", 80)),
                                           (":8080", ("0.0.0.0", 8080))])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", "host:0", "host:70000", "::1:80", "host:x"])
def test_parse_listen_rejects(text):
    with pytest.raises(ValueError):
        parse_listen(text)


def test_access_cache_grants_expire_and_are_per_credential_and_repository():
    now = [100.0]
    cache = AccessCache(ttl=60, clock=lambda: now[0])
    alice = Origin("https://r", "private/app", "Bearer alice")
    assert not cache.allowed(alice)
    cache.grant(alice)
    assert cache.allowed(alice)
    assert not cache.allowed(Origin("https://r", "private/app", "Bearer bob"))
    assert not cache.allowed(Origin("https://r", "private/other", "Bearer alice"))
    assert not cache.allowed(Origin("https://other", "private/app", "Bearer alice"))
    assert not cache.allowed(Origin("https://r", "private/app", None))
    now[0] += 59.9
    assert cache.allowed(alice)
    now[0] += 0.2
    assert not cache.allowed(alice)


def test_access_cache_stays_bounded():
    cache = AccessCache(ttl=60, max_entries=10)
    for i in range(25):
        cache.grant(Origin("https://r", f"repo{i}", "Bearer x"))
    assert cache.allowed(Origin("https://r", "repo24", "Bearer x"))
    assert len(cache._grants) <= 10


def test_tc_rates_and_the_distribution_bound():
    from benchmarks.cluster.report import distribution_bound, rate_bytes_per_second

    assert rate_bytes_per_second("240mbit") == 30e6 and rate_bytes_per_second("1gbit") == 125e6
    with pytest.raises(ValueError):
        rate_bytes_per_second("fast")
    # 100 MB to 4 peers, all at 10 MB/s: the swarm's upload (50 MB/s) carries 400 MB in 8 s,
    # but each peer needs 10 s to download it: 10 s.
    assert distribution_bound(100_000_000, 4, 10e6, 10e6, 10e6) == 10.0
    assert distribution_bound(100_000_000, 40, 10e6, 1e6, 10e6) == 40 * 100e6 / (10e6 + 40e6)

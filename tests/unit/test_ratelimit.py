import pytest

from damselfly.lib.ratelimit import TokenBucket


def test_burst_then_rate():
    now = [0.0]
    bucket = TokenBucket(rate=100, burst=50, clock=lambda: now[0])
    assert bucket.reserve(50) == 0.0
    assert bucket.reserve(100) == pytest.approx(1.0)  # in debt by 100 at 100/s
    now[0] += 1.0
    assert bucket.reserve(100) == pytest.approx(1.0)  # the debt is paid, a new one taken
    now[0] += 10.0
    assert bucket.reserve(50) == 0.0  # refilled to the burst, no further


def test_bad_parameters():
    with pytest.raises(ValueError):
        TokenBucket(0, 10)


def test_backlog_is_the_wait_for_those_already_queued():
    now = [0.0]
    bucket = TokenBucket(rate=100, burst=50, clock=lambda: now[0])
    assert bucket.backlog() == 0.0
    bucket.reserve(250)  # 200 in debt: 2 s
    assert bucket.backlog() == pytest.approx(2.0)
    now[0] += 1.5
    assert bucket.backlog() == pytest.approx(0.5)
    now[0] += 1.0
    assert bucket.backlog() == 0.0

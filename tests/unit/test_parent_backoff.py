import pytest

from damselfly.network.policy import MAX_BUSY_WAIT, RETRY_BUSY_PARENT, Parent
from damselfly.core.pieces import PieceBitmap


def test_a_busy_parent_is_asked_again_after_waits_that_double_up_to_a_cap():
    parent = Parent("seed-1", "http://127.0.0.1:1", is_seed=True, seeding=False, bitmap=PieceBitmap(4))
    waits = [parent.busy_wait() for _ in range(6)]
    assert waits == pytest.approx([RETRY_BUSY_PARENT, 2 * RETRY_BUSY_PARENT, 4 * RETRY_BUSY_PARENT,
                                   MAX_BUSY_WAIT, MAX_BUSY_WAIT, MAX_BUSY_WAIT])
    parent.busy_answers = 0  # what a served piece does
    assert parent.busy_wait() == pytest.approx(RETRY_BUSY_PARENT)

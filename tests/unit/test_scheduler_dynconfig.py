"""The scheduler's share of a cluster's dynamic configuration (candidate parent limit,
back-to-source allowance) and the manager's task search, on the state and the app."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from damselfly.core.dynconfig import ClusterConfig
from damselfly.scheduler.app import Scheduler
from damselfly.scheduler.state import Holder, Host, SchedulerState
from tests.unit.test_scheduler_state import TASK, make_state, news


def _held_by_seeds(count: int, limit: int) -> SchedulerState:
    """``count`` seeds hold every piece of TASK, digests known; p1 lacks them all."""
    seeds = tuple(f"seed{i}" for i in range(count))
    state, _ = make_state(*seeds, parents_per_peer=limit)
    task = state.task(TASK, length=8, piece_length=4)
    for seed in seeds:
        state.report_pieces(task, seed, news(0, 1, digest="d"), trusted=True)
    state.join(task, "p1", [])
    return state


def test_the_candidate_parent_limit_caps_the_parents_of_a_schedule_and_may_change() -> None:
    state = _held_by_seeds(5, limit=4)
    task = state.tasks[TASK][8]
    assert len(state.schedule(task, "p1").parents) == 4
    state.parents_per_peer = 2
    assert len(state.schedule(task, "p1").parents) == 2


def test_the_back_to_source_allowance_fails_peers_past_it_and_no_limit_lets_all_go() -> None:
    state, _ = make_state("seed", peers=("p1", "p2", "p3"), back_to_source_limit=1)
    state.leave("seed")
    task = state.task(TASK, length=10, piece_length=4)
    for host_id in ("p1", "p2", "p3"):
        state.join(task, host_id, [])
    assert state.schedule(task, "p1").action == "back_to_source"
    assert state.schedule(task, "p1").action == "back_to_source"  # asking again is not a second peer
    refused = state.schedule(task, "p2")
    assert refused.action == "fail" and "at most 1 peers" in refused.reason
    state.leave("p1")  # its allowance goes with it
    assert state.schedule(task, "p2").action == "back_to_source"
    state.back_to_source_limit = 0
    assert state.schedule(task, "p3").action == "fail"
    state.back_to_source_limit = None
    assert state.schedule(task, "p3").action == "back_to_source"


def test_a_seed_reading_the_origin_is_not_counted_against_the_allowance() -> None:
    state, _ = make_state("seed", back_to_source_limit=0)
    task = state.task(TASK, length=10, piece_length=4)
    state.join(task, "seed", [], seeding=True)
    assert state.schedule(task, "seed").action == "back_to_source"
    state.join(task, "p1", [])
    assert state.schedule(task, "p1").action == "download"


def test_holders_lists_every_peer_with_how_far_it_got() -> None:
    state, _ = make_state("seed")
    task = state.task(TASK, length=10, piece_length=4)
    state.report_pieces(task, "seed", news(0, 1, 2, digest="d"), trusted=True)
    state.join(task, "p1", [0])
    assert sorted(state.holders(TASK)) == [Holder("p1", "http://p1:65002", 1, 3, False),
                                           Holder("seed", "http://seed:65002", 3, 3, True)]
    assert state.holders("sha256:" + "f" * 64) == []


def _call(app: web.Application, method: str, path: str) -> web.Response:
    async def answer() -> web.Response:
        match = await app.router.resolve(make_mocked_request(method, path, app=app))
        request = make_mocked_request(method, path, app=app, match_info=dict(match))
        try:
            response = await match.handler(request)
        except web.HTTPException as error:
            return web.Response(status=error.status, text=error.text)
        assert isinstance(response, web.Response)
        return response

    return asyncio.run(answer())


def test_the_scheduler_applies_the_clusters_config_and_answers_the_task_search() -> None:
    scheduler = Scheduler()
    scheduler.apply_config(ClusterConfig(candidate_parent_limit=2, back_to_source=3))
    assert (scheduler.state.parents_per_peer, scheduler.state.back_to_source_limit) == (2, 3)
    scheduler.state.announce(Host("p1", "http://p1:65002"))
    task = scheduler.state.task(TASK, length=10, piece_length=4)
    scheduler.state.join(task, "p1", [0, 1])
    app = scheduler.application()
    found = _call(app, "GET", f"/api/v1/tasks/{TASK}/peers")
    assert found.status == 200 and json.loads(found.text or "") == [
        {"host_id": "p1", "upload_url": "http://p1:65002", "pieces": 2, "piece_count": 3, "done": False}]
    assert _call(app, "GET", f"/api/v1/tasks/sha256:{'e' * 64}/peers").status == 404
    assert _call(app, "GET", "/api/v1/tasks/nonsense/peers").status == 400

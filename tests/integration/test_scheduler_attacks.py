"""Attackers against a scheduler process that speaks mutual TLS: cluster members (certificates of
the cluster's CA) that speak for other hosts, claim a role they do not have, send malformed or
huge tasks, or report failures to poison a task for everyone else."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from aiohttp.test_utils import TestClient, TestServer

from damselfly.lib.tls import ClusterTLS
from damselfly.core.pieces import piece_length_for
from damselfly.scheduler.app import Scheduler
from damselfly.settings import SchedulerSettings
from damselfly.core.wire import Schedule
from testkit.cluster import SchedulerProcess
from testkit.tls import tls_dir

TASK = "sha256:" + "c" * 64
PIECE = piece_length_for(4 * 256 * 1024)
LENGTH = 4 * PIECE  # four pieces
TiB = 1 << 40


def digest(index: int, salt: int = 0) -> str:
    return f"blake3:{salt:032x}{index:032x}"


class Member:
    """A cluster member's calls to the scheduler API, under its own certificate."""

    def __init__(self, scheduler: SchedulerProcess, name: str, role: str) -> None:
        self.name = name
        self.http = httpx.Client(base_url=f"{scheduler.url}/api/v1", timeout=10,
                                 verify=ClusterTLS.load(tls_dir(name, role)).client_context())

    def announce(self, host_id: str | None = None, seed: bool = False, url: str | None = None) -> httpx.Response:
        return self.http.post("/hosts", json={"id": host_id or self.name, "seed": seed,
                                              "upload_url": url or f"https://{self.name}.test:65002"})

    def register(self, host_id: str | None = None, task: str = TASK, **fields: Any) -> httpx.Response:
        body = {"host_id": host_id or self.name, "length": LENGTH, "piece_length": PIECE, **fields}
        return self.http.post(f"/tasks/{task}/register", json=body)

    def post(self, path: str, **body: Any) -> httpx.Response:
        return self.http.post(f"/tasks/{TASK}/{path}", json={"host_id": self.name, **body})

    def poll(self, host_id: str | None = None) -> httpx.Response:
        return self.http.get(f"/tasks/{TASK}/schedule", params={"host_id": host_id or self.name})


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[SchedulerProcess]:
    process = SchedulerProcess(tmp_path / "scheduler", tls=True).start()
    yield process
    process.stop()


def joined(scheduler: SchedulerProcess, name: str, role: str = "peer") -> Member:
    member = Member(scheduler, name, role)
    assert member.announce(seed=role == "seed").status_code == 200
    return member


def test_a_member_speaks_only_for_itself(scheduler: SchedulerProcess) -> None:
    victim, mallory = joined(scheduler, "victim"), joined(scheduler, "mallory")
    seed = joined(scheduler, "seed-1", "seed")
    hijack = mallory.announce("victim", url="https://mallory.test:1")
    assert hijack.status_code == 403 and "may not speak for host victim" in hijack.json()["error"]
    # The victim's upload URL is still its own: a third peer is sent to it for a piece it holds.
    assert seed.register(seeding=True).json()["action"] == "back_to_source"  # it reads the origin
    assert seed.post("pieces", pieces=[[0, digest(0), None, None]], from_origin=True).status_code == 200
    assert victim.register(pieces=[0]).status_code == 200
    third = joined(scheduler, "third")
    parents = {p.host_id: p.upload_url for p in Schedule.from_json(third.register().json()).parents}
    assert parents["victim"] == "https://victim.test:65002"
    # Nor may it register, report, poll, or end a download for the victim.
    assert mallory.register("victim").status_code == 403
    assert mallory.http.post(f"/tasks/{TASK}/pieces", json={"host_id": "victim", "pieces": [[1]]}).status_code == 403
    assert mallory.http.post(f"/tasks/{TASK}/done", json={"host_id": "victim", "success": False}).status_code == 403
    assert mallory.http.post(f"/tasks/{TASK}/bad-parent", json={"host_id": "victim", "parent_id": "seed-1"}
                             ).status_code == 403
    assert mallory.http.post(f"/tasks/{TASK}/trigger-failed", json={"host_id": "victim", "seed_id": "seed-1"}
                             ).status_code == 403
    assert mallory.poll("victim").status_code == 403
    gone = mallory.http.delete("/hosts/victim")
    assert gone.status_code == 403 and "mallory may not speak for host victim" in gone.json()["error"]
    assert "victim" in {p["host_id"] for p in third.poll().json()["parents"]}
    assert scheduler.metric("damselfly_scheduler_hosts", 'kind="all"') == 4
    assert victim.http.delete("/hosts/victim").status_code == 200  # its own id: fine
    assert scheduler.metric("damselfly_scheduler_hosts", 'kind="all"') == 3


def test_only_seed_certificates_announce_seeds_and_only_members_take_part(scheduler: SchedulerProcess) -> None:
    peer = Member(scheduler, "pretender", "peer")
    refused = peer.announce(seed=True)
    assert refused.status_code == 403 and "no seed certificate" in refused.json()["error"]
    assert scheduler.metric("damselfly_scheduler_hosts", 'kind="seed"') == 0
    assert Member(scheduler, "seed-1", "seed").announce(seed=True).status_code == 200
    assert scheduler.metric("damselfly_scheduler_hosts", 'kind="seed"') == 1
    for role in ("scheduler", "manager"):
        other = Member(scheduler, f"a-{role}", role).announce()
        assert other.status_code == 403 and "is not a peer or a seed" in other.json()["error"]
    # A peer's digests are not taken, whatever it says about reading the origin.
    assert peer.announce().status_code == 200
    assert peer.register().status_code == 200
    peer.post("pieces", pieces=[[0, digest(0, salt=666), None, None]], from_origin=True)
    assert joined(scheduler, "other").register().json()["digests"] == {}


def test_task_ids_are_digests_and_huge_tasks_are_refused_at_once(scheduler: SchedulerProcess) -> None:
    peer = joined(scheduler, "peer-1")
    for task in ("latest", "sha256:abc", "sha256:" + "C" * 64, "sha512:" + "c" * 128):
        answer = peer.register(task=task)
        assert answer.status_code == 400 and "task id must be sha256" in answer.json()["error"], task
    assert peer.http.get("/tasks/latest/schedule", params={"host_id": "peer-1"}).status_code == 400
    started = time.monotonic()
    # 12 million pieces: 3 TiB of 256 KiB, or 1 TiB of the wrong piece length, or the list itself.
    huge = peer.register(length=3 * TiB, piece_length=256 * 1024)
    assert huge.status_code == 413 and "over this scheduler's limit" in huge.json()["error"]
    wrong = peer.register(length=TiB, piece_length=64 * 1024)
    assert wrong.status_code == 400 and f"must be {piece_length_for(TiB)}" in wrong.json()["error"]
    assert peer.register(length=TiB, piece_length=piece_length_for(TiB),
                         pieces=list(range(12_000_000))).status_code == 413  # the body is over the limit
    assert peer.register(pieces=[1 << 40]).status_code == 400
    assert time.monotonic() - started < 5, "refusing must not stall the scheduler"
    assert peer.register(length=TiB, piece_length=piece_length_for(TiB)).json()["action"] == "back_to_source"
    assert scheduler.metric("damselfly_scheduler_tasks") == 1


def test_one_failure_report_fails_the_task_for_nobody_else(scheduler: SchedulerProcess) -> None:
    seed = joined(scheduler, "seed-1", "seed")
    alice, bob = joined(scheduler, "alice"), joined(scheduler, "bob")
    first = alice.register().json()
    assert first["action"] == "seed" and [s["host_id"] for s in first["seeds"]] == ["seed-1"]
    assert bob.register().json()["action"] == "wait"  # alice holds the trigger lease
    assert seed.register(seeding=True).status_code == 200  # the seed alice asked took the task
    assert alice.post("done", success=False, reason="digest mismatch: source sent sha256:0").status_code == 200
    answer = bob.poll().json()
    assert answer["action"] == "download" and [p["host_id"] for p in answer["parents"]] == ["seed-1"]
    assert alice.register().json()["action"] == "download"  # nor for alice herself, next time


def test_a_digest_mismatch_excludes_the_liar_for_the_reporter_then_for_everyone(
        scheduler: SchedulerProcess) -> None:
    liar = joined(scheduler, "liar", "seed")
    joined(scheduler, "honest", "seed")  # the seed the peers are sent to instead
    alice, bob, carol = (joined(scheduler, name) for name in ("alice", "bob", "carol"))
    assert liar.register(seeding=True, pieces=[0, 1, 2, 3]).status_code == 200
    liar.post("pieces", pieces=[[i, digest(i, salt=666), None, None] for i in range(4)], from_origin=True)
    for peer in (alice, bob, carol):
        assert [p["host_id"] for p in peer.register().json()["parents"]] == ["liar"]
    mismatch = alice.post("done", success=False, digest_mismatch=True, reason="sha256 of the blob differs")
    assert mismatch.status_code == 200
    again = alice.register().json()
    assert again["action"] == "seed" and [s["host_id"] for s in again["seeds"]] == ["honest"]
    assert again["parents"] == [] and again["digests"] == {}
    assert [p["host_id"] for p in carol.poll().json()["parents"]] == ["liar"]  # one report: alice's alone
    assert bob.post("done", success=False, digest_mismatch=True).status_code == 200
    after = carol.poll().json()
    assert after["parents"] == [] and after["digests"] == {} and after["action"] == "wait"  # alice holds the lease
    assert scheduler.metric("damselfly_scheduler_digest_mismatches_total") == 2
    assert scheduler.metric("damselfly_scheduler_excluded_sources_total") == 1


def test_a_wrong_length_registered_first_keeps_nobody_from_p2p(scheduler: SchedulerProcess) -> None:
    """A member whose client named a registry that claims 100 MiB for the digest registers that
    length first. Before, every honest register of the true length got 409 ("task ... has length
    104857600"), which peers took for an unreachable scheduler: they all went to the origin."""
    squatter, honest = joined(scheduler, "squatter"), joined(scheduler, "honest")
    seed = joined(scheduler, "seed-1", "seed")
    squatted = 100 << 20
    assert squatter.register(length=squatted, piece_length=piece_length_for(squatted)).status_code == 200
    answer = honest.register()
    assert answer.status_code == 200, answer.text
    first = Schedule.from_json(answer.json())
    assert first.action == "seed" and [s.host_id for s in first.seeds] == ["seed-1"]
    # The seed it asked reads the true blob: the honest peer downloads it from the seed.
    assert seed.register(seeding=True).status_code == 200
    assert seed.post("pieces", pieces=[[0, digest(0), None, None]], from_origin=True).status_code == 200
    schedule = Schedule.from_json(honest.poll().json())
    assert schedule.action == "download" and [p.host_id for p in schedule.parents] == ["seed-1"]
    assert schedule.digests == {0: digest(0)}
    # The squatter is in a swarm of its own length: nobody there, and none of the true blob's digests.
    squatter_view = Schedule.from_json(squatter.poll().json())
    assert squatter_view.parents == () and squatter_view.digests == {}
    assert scheduler.metric("damselfly_scheduler_tasks") == 2


def test_the_host_cap_answers_429() -> None:
    """In process: the cap is a constructor setting (the CLI keeps its default)."""
    async def scenario() -> None:
        async with TestClient(TestServer(Scheduler(SchedulerSettings(max_hosts=2)).application())) as client:
            for name in ("a", "b"):
                assert (await client.post("/api/v1/hosts", json={"id": name, "upload_url": "http://h:1"})).status == 200
            full = await client.post("/api/v1/hosts", json={"id": "c", "upload_url": "http://h:1"})
            assert full.status == 429 and full.headers["Retry-After"]
            assert "at most 2 hosts" in (await full.json())["error"]
            again = await client.post("/api/v1/hosts", json={"id": "a", "upload_url": "http://h:2"})
            assert again.status == 200  # a known host's keepalive always goes through

    asyncio.run(scenario())

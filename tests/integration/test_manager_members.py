"""Real `damselfly scheduler`, `daemon` and `run` processes as members of a real manager:
they register and keep alive, show inactive when killed and active again on restart; a
daemon given only the manager gets its schedulers from it and downloads P2P; each key of
a cluster's configuration changes the behaviour it names while everything runs; `run`
embeds the manager with a one-node cluster, and runs without it when its port is taken;
over TLS the members register with their certificates and the manager's task search asks
the scheduler with its own.

The manager tells members to keep alive every 0.2 s and shows them inactive after 2 s
without one (the defaults are 5 s and 15 s), so that each wait here is short."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.cluster import SchedulerProcess, start_peer
from testkit.daemon import Damselfly
from testkit.manager import ROOT_PASSWORD, Manager
from testkit.registry import Registry, RegistryClient
from testkit.tls import tls_dir
from testkit.wait import free_port, wait_until

MiB = 1024 * 1024
FAST = ["--keepalive-interval", "0.2", "--inactive-after", "2"]
WAIT = 15  # seconds for any membership change to show: several inactive-after periods


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    started = Manager(tmp_path / "manager", args=FAST).start()
    yield started
    started.stop()


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    """Schedulers and daemons a test starts, stopped at its end whatever happened."""
    started: list[Any] = []
    yield started
    for process in reversed(started):
        process.stop()


def mapping(registry: Registry) -> list[str]:
    return ["--registry", f"{registry.host}={registry.url}"]


def record(root: httpx.Client, kind_path: str, host_id: str) -> dict[str, Any] | None:
    """The manager's record of one member (``/schedulers``, ``/seed-peers``, ``/peers``)."""
    return next((c for c in root.get(kind_path).json() if c["host_id"] == host_id), None)


def in_state(root: httpx.Client, kind_path: str, host_id: str, state: str) -> dict[str, Any] | None:
    found = record(root, kind_path, host_id)
    return found if found is not None and found["state"] == state else None


def cluster_named(root: httpx.Client, name: str) -> dict[str, Any]:
    return next(c for c in root.get("/clusters").json() if c["name"] == name)


def configure(root: httpx.Client, cluster_id: int, **config: Any) -> None:
    answer = root.patch(f"/clusters/{cluster_id}", json={"config": config})
    assert answer.status_code == 200, answer.text


def scheduler_host_id(scheduler: SchedulerProcess) -> str:
    return f"{socket.gethostname()}:{scheduler.port}"


def test_members_register_show_inactive_when_killed_and_active_again_on_restart(
        tmp_path: Path, manager: Manager, registry: Registry, processes: list[Any]) -> None:
    scheduler = SchedulerProcess(tmp_path / "scheduler", extra=["--manager", manager.url, "--cluster", "east"])
    processes.append(scheduler.start())
    seed = start_peer(tmp_path / "seed" / "data", [scheduler.url], mapping(registry), seed=True,
                      extra=["--manager", manager.url])
    processes.append(seed)
    name = scheduler_host_id(scheduler)
    with manager.root() as root:
        registered = wait_until(lambda: in_state(root, "/schedulers", name, "active"), WAIT, "the scheduler")
        east = cluster_named(root, "east")
        assert registered["cluster_id"] == east["id"] and registered["url"] == scheduler.url
        seed_record = wait_until(lambda: in_state(root, "/seed-peers", f"seed-{seed.upload_port}", "active"), WAIT,
                                 "the seed peer")
        assert seed_record["cluster_id"] == east["id"]  # it joined its scheduler's cluster
        assert seed_record["url"] == seed.upload_url

        scheduler.stop(kill=True)
        wait_until(lambda: in_state(root, "/schedulers", name, "inactive"), WAIT, "the killed scheduler inactive")
        scheduler.start()  # the same port: the same host
        back = wait_until(lambda: in_state(root, "/schedulers", name, "active"), WAIT, "the scheduler active again")
        assert back["id"] == registered["id"]  # its record was kept, never deleted

        seed.stop()
        wait_until(lambda: in_state(root, "/seed-peers", f"seed-{seed.upload_port}", "inactive"), WAIT,
                   "the stopped seed peer inactive")


def test_a_daemon_given_only_the_manager_gets_its_schedulers_and_downloads_p2p(
        tmp_path: Path, manager: Manager, registry: Registry, registry_client: RegistryClient,
        processes: list[Any]) -> None:
    scheduler = SchedulerProcess(tmp_path / "scheduler", extra=["--manager", manager.url])
    processes.append(scheduler.start())
    processes.append(start_peer(tmp_path / "seed" / "data", [scheduler.url], mapping(registry), seed=True,
                                extra=["--manager", manager.url]))
    with manager.root() as root:
        wait_until(lambda: in_state(root, "/schedulers", scheduler_host_id(scheduler), "active"), WAIT,
                   "the scheduler")
    peer = Damselfly(tmp_path / "peer" / "data", ["--manager", manager.url, *mapping(registry),
                                                  "--host-id", "peer-by-manager"], command="daemon")
    processes.append(peer.start())
    wait_until(lambda: scheduler.metric("damselfly_scheduler_hosts", 'kind="all"') == 2, WAIT,
               "the peer announced to the scheduler the manager named")
    blob = os.urandom(3 * MiB)
    digest = registry_client.push_blob("members/p2p", blob)
    answer = httpx.get(f"{peer.url}/v2/members/p2p/blobs/{digest}", params={"ns": registry.host}, timeout=60)
    assert answer.status_code == 200 and answer.content == blob
    assert peer.metric("damselfly_p2p_bytes_total", 'source="origin"') == 0
    assert peer.metric("damselfly_p2p_bytes_total", 'source="seed"') == len(blob)
    with manager.root() as root:  # its keepalives carry what it served
        wait_until(lambda: (record(root, "/peers", "peer-by-manager") or {}).get("served_bytes") == len(blob), WAIT,
                   "the peer's served bytes at the manager")


def test_upload_limits_and_the_block_list_follow_the_clusters_configuration(
        tmp_path: Path, manager: Manager, registry: Registry, registry_client: RegistryClient,
        processes: list[Any]) -> None:
    scheduler = SchedulerProcess(tmp_path / "scheduler", extra=["--manager", manager.url, "--cluster", "limits"])
    processes.append(scheduler.start())
    seed = start_peer(tmp_path / "seed" / "data", [scheduler.url], mapping(registry), seed=True,
                      extra=["--manager", manager.url])
    processes.append(seed)
    blob = os.urandom(8 * MiB)  # 32 pieces of 256 KiB
    digest = registry_client.push_blob("members/limits", blob)
    blob_url = f"{seed.url}/v2/members/limits/blobs/{digest}"
    ns = {"ns": registry.host}
    assert httpx.get(blob_url, params=ns, timeout=60).content == blob
    pieces = f"{seed.upload_url}/pieces/{digest}"
    assert httpx.get(f"{pieces}/0", params={"count": 32}, timeout=30).headers["X-Piece-Count"] == "32"

    with manager.root() as root:
        wait_until(lambda: in_state(root, "/seed-peers", f"seed-{seed.upload_port}", "active"), WAIT, "the seed")
        cluster_id = cluster_named(root, "limits")["id"]

        # upload_rate and upload_slots: a run is cut to what the rate sends in 5 s (20 pieces
        # at 1 MiB/s), and while it waits for its bytes it holds the one slot there is.
        configure(root, cluster_id, upload_rate=MiB, upload_slots=1)
        wait_until(lambda: "uploads: at most 1048576 bytes/s, 1 slots" in seed.log(), WAIT, "the limits applied")
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.get, f"{pieces}/0", params={"count": 32}, timeout=30)
            wait_until(lambda: seed.metric("damselfly_upload_active") == 1, WAIT, "the first upload in its slot")
            second = httpx.get(f"{pieces}/31", timeout=30)
            assert second.status_code == 503 and "upload slots" in second.text
            limited = first.result()
        assert limited.status_code == 200 and limited.headers["X-Piece-Count"] == "20"
        configure(root, cluster_id, upload_rate=None, upload_slots=None)
        wait_until(lambda: "uploads: no rate cap, 16 slots" in seed.log(), WAIT, "the seed's own limits back")
        assert httpx.get(f"{pieces}/0", params={"count": 32}, timeout=30).headers["X-Piece-Count"] == "32"

        # block_list: a digest refuses its blob, a tag its manifest, with a 403 that says why.
        configure(root, cluster_id, block_list=[digest, f"{registry.host}/members/limits:v1"])
        refused = wait_until(lambda: (r := httpx.get(blob_url, params=ns, timeout=30)).status_code == 403 and r,
                             WAIT, "the blocked blob refused")
        assert digest in refused.json()["errors"][0]["message"]
        manifest = httpx.get(f"{seed.url}/v2/members/limits/manifests/v1", params=ns, timeout=30)
        assert manifest.status_code == 403 and "block list" in manifest.json()["errors"][0]["message"]
        assert httpx.get(f"{seed.url}/v2/members/limits/manifests/v2", params=ns, timeout=30).status_code == 404
        configure(root, cluster_id, block_list=[])
        wait_until(lambda: httpx.get(blob_url, params=ns, timeout=30).status_code == 200, WAIT, "the blob served again")


def test_the_candidate_parent_limit_and_back_to_source_allowance_follow_the_clusters_configuration(
        tmp_path: Path, manager: Manager, processes: list[Any]) -> None:
    scheduler = SchedulerProcess(tmp_path / "scheduler", extra=["--manager", manager.url, "--cluster", "ranks"])
    processes.append(scheduler.start())
    length, piece_length = MiB, 256 * 1024  # 4 pieces
    held = "sha256:" + "d" * 64
    with scheduler.client() as api, manager.root() as root:
        def announce(host_id: str, seed: bool = False) -> None:
            assert api.post("/api/v1/hosts", json={"id": host_id, "upload_url": f"http://127.0.0.1:{free_port()}",
                                                   "seed": seed}).status_code == 200

        def register(task: str, host_id: str) -> dict[str, Any]:
            answer = api.post(f"/api/v1/tasks/{task}/register", json={
                "host_id": host_id, "length": length, "piece_length": piece_length, "pieces": []})
            assert answer.status_code == 200, answer.text
            return dict(answer.json())

        for index in range(3):  # three seeds hold every piece, digests known
            seed = f"seed{index}"
            announce(seed, seed=True)
            register(held, seed)
            api.post(f"/api/v1/tasks/{held}/pieces", json={
                "host_id": seed, "from_origin": True,
                "pieces": [[i, "blake3:" + f"{i:x}" * 64, None, None] for i in range(4)]}).raise_for_status()
        announce("child")
        assert len(register(held, "child")["parents"]) == 3
        wait_until(lambda: in_state(root, "/schedulers", scheduler_host_id(scheduler), "active"), WAIT,
                   "the scheduler")
        cluster_id = cluster_named(root, "ranks")["id"]
        configure(root, cluster_id, candidate_parent_limit=2)
        wait_until(lambda: len(register(held, "child")["parents"]) == 2, WAIT, "two parents at most")

        for index in range(3):  # no seed any more: nobody can take a new task
            api.delete(f"/api/v1/hosts/seed{index}").raise_for_status()
        orphan = "sha256:" + "e" * 64
        newcomers = (f"lone{n}" for n in range(1000))

        def newcomer_action() -> dict[str, Any]:
            """A new peer's answer (one told to read the origin counts against the allowance)."""
            host_id = next(newcomers)
            announce(host_id)
            return register(orphan, host_id)

        assert newcomer_action()["action"] == "back_to_source"
        configure(root, cluster_id, back_to_source=0)
        refused = wait_until(lambda: (a := newcomer_action())["action"] == "fail" and a, WAIT,
                             "a new peer refused the origin")
        assert "at most 0 peers" in refused["reason"]
        configure(root, cluster_id, back_to_source=None)
        wait_until(lambda: newcomer_action()["action"] == "back_to_source", WAIT, "no limit again")


def run_node(tmp_path: Path, registry: Registry, manager_port: int) -> Damselfly:
    node = Damselfly(tmp_path / "data", mapping(registry), env={"DAMSELFLY_ROOT_PASSWORD": ROOT_PASSWORD})
    node.manager_listen = f"127.0.0.1:{manager_port}"
    return node


def test_run_embeds_the_manager_and_its_console_with_a_one_node_cluster(
        tmp_path: Path, registry: Registry, registry_client: RegistryClient, processes: list[Any]) -> None:
    port = free_port()
    node = run_node(tmp_path, registry, port)
    processes.append(node.start())
    embedded = Manager(tmp_path / "unused", port=port)  # a client of the embedded manager, not a process
    wait_until(lambda: httpx.get(f"{embedded.url}/healthy", timeout=2).status_code == 200, WAIT, "the manager")
    assert 'type="password"' in httpx.get(f"{embedded.url}/", timeout=5).text  # the console
    assert (tmp_path / "data" / "manager.db").exists()
    with embedded.root() as root:
        scheduler = wait_until(lambda: (found := root.get("/schedulers", params={"state": "active"}).json())
                               and found[0], WAIT, "run's scheduler")
        seed = wait_until(lambda: (found := root.get("/seed-peers", params={"state": "active"}).json())
                          and found[0], WAIT, "run's seed peer")
        assert scheduler["url"] == node.scheduler_url and seed["url"] == node.upload_url
        assert scheduler["cluster_id"] == seed["cluster_id"] == cluster_named(root, "default")["id"]
        assert len(root.get("/schedulers").json()) == len(root.get("/seed-peers").json()) == 1

        # The task search asks run's scheduler, which knows its seed holds the blob.
        blob = os.urandom(MiB)
        digest = registry_client.push_blob("members/run", blob)
        assert httpx.get(f"{node.url}/v2/members/run/blobs/{digest}", params={"ns": registry.host},
                         timeout=60).content == blob
        found = wait_until(lambda: (peers := root.get("/tasks", params={"digest": digest}).json()["blobs"][0]["peers"])
                           and peers[0]["done"] and peers, WAIT, "the seed holding the blob")
        assert [(p["host_id"], p["pieces"], p["piece_count"]) for p in found] == [(seed["host_id"], 4, 4)]


def test_run_with_the_manager_port_taken_warns_and_serves_the_mirror(
        tmp_path: Path, registry: Registry, registry_client: RegistryClient, processes: list[Any]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        node = run_node(tmp_path, registry, taken.getsockname()[1])
        processes.append(node.start())
        blob = os.urandom(MiB)
        digest = registry_client.push_blob("members/taken", blob)
        assert httpx.get(f"{node.url}/v2/members/taken/blobs/{digest}", params={"ns": registry.host},
                         timeout=60).content == blob
        assert "running without the embedded manager and its console" in node.log()
        assert not (tmp_path / "data" / "manager.db").exists()


def test_over_tls_members_register_with_their_certificates_and_the_manager_asks_with_its_own(
        tmp_path: Path, registry: Registry, registry_client: RegistryClient, processes: list[Any]) -> None:
    manager = Manager(tmp_path / "manager", args=FAST, tls_dir=tls_dir("the-manager", "manager")).start()
    processes.append(manager)
    scheduler = SchedulerProcess(tmp_path / "scheduler", tls=True, extra=["--manager", manager.url])
    processes.append(scheduler.start())
    seed = start_peer(tmp_path / "seed" / "data", [scheduler.url], mapping(registry), seed=True,
                      extra=["--manager", manager.url])
    processes.append(seed)
    assert seed.tls_name is not None
    with manager.root() as root:
        wait_until(lambda: in_state(root, "/schedulers", f"scheduler-{scheduler.port}", "active"), WAIT,
                   "the scheduler, by its certificate's name")
        wait_until(lambda: in_state(root, "/seed-peers", seed.tls_name, "active"), WAIT, "the seed peer")
        blob = os.urandom(MiB)
        digest = registry_client.push_blob("members/tls", blob)
        assert httpx.get(f"{seed.url}/v2/members/tls/blobs/{digest}", params={"ns": registry.host},
                         timeout=60).content == blob
        answer = wait_until(lambda: (a := root.get("/tasks", params={"digest": digest}).json())["blobs"][0]["peers"]
                            and a, WAIT, "the task search over mutual TLS")
        assert answer["schedulers"] == [{"url": scheduler.url, "cluster_id": answer["schedulers"][0]["cluster_id"],
                                         "error": None}]
        assert [p["host_id"] for p in answer["blobs"][0]["peers"]] == [seed.tls_name]
    # A member's certificate (not the manager's) is refused the task search.
    with scheduler.client() as member:
        assert member.get(f"/api/v1/tasks/{digest}/peers").status_code == 403

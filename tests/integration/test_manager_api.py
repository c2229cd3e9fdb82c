"""The manager's API against a real `damselfly manager` process, the same tests on SQLite and
on PostgreSQL (a real server in a temporary directory): users and sign-in, tokens and
their scopes, clusters, component registration, keepalive and the inactive state, the
audit log, where a blob is, and bad input that must change nothing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import json
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from damselfly.lib.tls import ClusterTLS
from testkit.images import build_image, push_image
from testkit.manager import ROOT_PASSWORD, Manager
from testkit.postgres import Postgres
from testkit.processes import QuietRequestHandler, ThreadedHTTPServer
from testkit.registry import Registry, RegistryClient
from testkit.tls import tls_dir
from testkit.wait import free_port, wait_until

BACKENDS = ["sqlite", "postgresql"]
# Components keep alive every 0.2 s and go inactive after 2 s without one: short for the
# test that waits for it, long enough that a busy machine never lets a just-registered
# scheduler go inactive between two calls of a test.
FAST = ["--keepalive-interval", "0.2", "--inactive-after", "2"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    server = Postgres().start()
    yield server
    server.stop()


def _database(backend: str, request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("postgres").create_database() if backend == "postgresql" else None


@pytest.fixture(scope="module", params=BACKENDS)
def manager(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manager]:
    """One manager per backend for the tests that need no fresh state (their names are unique)."""
    started = Manager(tmp_path_factory.mktemp(f"manager-{request.param}"), _database(request.param, request),
                      args=FAST).start()
    yield started
    started.stop()


@pytest.fixture(params=BACKENDS)
def fresh_manager(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Manager]]:
    """Managers on an empty database of the backend (sign-in limits, first start, placement)."""
    started: list[Manager] = []
    database = _database(request.param, request)

    def start(**kwargs: Any) -> Manager:
        kwargs.setdefault("args", FAST)
        started.append(Manager(tmp_path / f"m{len(started)}", database, **kwargs).start())
        return started[-1]

    yield start
    for one in started:
        one.stop()


@pytest.fixture(scope="module")
def root(manager: Manager) -> Iterator[httpx.Client]:
    with manager.root() as client:
        yield client


# --- users and sign-in ---------------------------------------------------------------------------------------------


def test_root_signs_in_and_the_token_is_a_bearer(manager: Manager, root: httpx.Client) -> None:
    me = root.get("/users/me")
    assert me.status_code == 200 and me.json()["name"] == "root" and me.json()["role"] == "root"
    answer = httpx.post(f"{manager.api}/users/signin", json={"name": "root", "password": ROOT_PASSWORD})
    assert set(answer.json()) == {"token", "expires_at"}
    assert datetime.fromisoformat(answer.json()["expires_at"]) > datetime.now(timezone.utc)
    assert httpx.get(f"{manager.api}/users/me").status_code == 401


def test_users_are_created_changed_and_deleted(manager: Manager, root: httpx.Client) -> None:
    name = unique("ann")
    created = root.post("/users", json={"name": name, "password": "ann's long password", "role": "guest"})
    assert created.status_code == 201
    user = created.json()
    assert user["name"] == name and user["role"] == "guest" and "password" not in json.dumps(user)
    assert root.post("/users", json={"name": name, "password": "another long one", "role": "guest"}).status_code == 409
    assert any(u["id"] == user["id"] for u in root.get("/users").json())
    ann = manager.client(manager.sign_in(name, "ann's long password"))
    assert ann.get("/users/me").json()["id"] == user["id"]

    promoted = root.patch(f"/users/{user['id']}", json={"role": "root"})
    assert promoted.status_code == 200 and promoted.json()["role"] == "root"
    assert ann.post("/clusters", json={"name": unique("by-ann")}).status_code == 201  # root at once
    assert root.patch(f"/users/{user['id']}", json={"password": "a new long password"}).status_code == 200
    assert ann.get("/users/me").status_code == 401  # a new password ends the old sessions
    assert manager.client(manager.sign_in(name, "a new long password")).get("/users/me").status_code == 200

    assert root.delete(f"/users/{user['id']}").status_code == 204
    assert root.delete(f"/users/{user['id']}").status_code == 404
    assert root.patch(f"/users/{user['id']}", json={"role": "guest"}).status_code == 404


def test_the_last_root_user_stays(fresh_manager: Callable[..., Manager]) -> None:
    manager = fresh_manager()
    with manager.root() as root:
        me = root.get("/users/me").json()
        for refused in (root.delete(f"/users/{me['id']}"), root.patch(f"/users/{me['id']}", json={"role": "guest"})):
            assert refused.status_code == 409 and "last root" in refused.json()["error"]
        assert root.get("/users/me").json()["role"] == "root"


def test_roots_demoted_all_at_once_leave_one(fresh_manager: Callable[..., Manager]) -> None:
    """Three roots demote each other at the same moment: each demotion counts the roots that
    stay, and none may count on one that another demotion takes away."""
    manager = fresh_manager()
    password = "three-roots-pw"
    with manager.root() as root:
        for name in ("root-a", "root-b"):
            assert root.post("/users", json={"name": name, "password": password, "role": "root"}).status_code == 201
        ids = {user["name"]: user["id"] for user in root.get("/users").json()}
    targets = {"root": "root-a", "root-a": "root-b", "root-b": "root"}
    clients = {name: manager.client(manager.sign_in(name, ROOT_PASSWORD if name == "root" else password))
               for name in targets}
    with ThreadPoolExecutor(len(targets)) as pool:
        codes = list(pool.map(lambda who: clients[who].patch(f"/users/{ids[targets[who]]}",
                                                              json={"role": "guest"}).status_code, targets))
    roles = [client.get("/users/me").json()["role"] for client in clients.values()]
    for client in clients.values():
        client.close()
    assert roles.count("root") >= 1, (codes, roles)


def test_a_random_root_password_is_logged_once_and_there_is_no_default(fresh_manager: Callable[..., Manager]
                                                                        ) -> None:
    manager = fresh_manager(root_password=None)
    found = re.findall(r"created user root with password (\S+)", manager.log())
    assert len(found) == 1 and len(found[0]) >= 12
    for guess in ("root", "password", "damselfly", ""):  # four: a fifth failure would lock the name
        assert httpx.post(f"{manager.api}/users/signin", json={"name": "root", "password": guess}).status_code == 401
    assert manager.sign_in("root", found[0])
    manager.stop()
    manager.start()  # the same database: root exists, nothing is printed again
    assert len(re.findall(r"created user root with password", manager.log())) == 1
    assert manager.sign_in("root", found[0])


def test_sign_in_failures_are_limited_per_name_and_per_address(fresh_manager: Callable[..., Manager]) -> None:
    manager = fresh_manager()
    signin = f"{manager.api}/users/signin"
    statuses = [httpx.post(signin, json={"name": "root", "password": f"wrong password {n}"}).status_code
                for n in range(6)]
    assert statuses == [401] * 5 + [429]
    refused = httpx.post(signin, json={"name": "root", "password": ROOT_PASSWORD})  # even the right one, for now
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert "retry" in refused.json()["error"]
    # The address is limited too: another name from here is refused as well.
    assert httpx.post(signin, json={"name": "nobody", "password": "whatever it is"}).status_code == 429


# --- tokens ----------------------------------------------------------------------------------------------------------


def _in(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()


def test_personal_access_tokens_work_within_their_scopes(manager: Manager, root: httpx.Client) -> None:
    name = unique("ci")
    created = root.post("/personal-access-tokens", json={"name": name, "scopes": ["cluster"], "expires_at": _in(3600)})
    assert created.status_code == 201
    token = created.json()
    assert token["token"].startswith("dfp_") and token["scopes"] == ["cluster"] and token["id"]
    assert root.post("/personal-access-tokens", json={"name": name, "scopes": ["job"],
                                                      "expires_at": _in(3600)}).status_code == 409
    listed = [t for t in root.get("/personal-access-tokens").json() if t["id"] == token["id"]]
    assert listed and "token" not in listed[0]  # shown once, never again

    with manager.client(token["token"]) as ci:
        assert ci.post("/clusters", json={"name": unique("by-token")}).status_code == 201
        assert ci.get("/clusters").status_code == 200
        assert ci.get("/users/me").json()["name"] == "root"
        for refused in (ci.get("/users"), ci.get("/audit"), ci.get("/personal-access-tokens"),
                        ci.post("/personal-access-tokens", json={"name": "x", "scopes": ["cluster"],
                                                                 "expires_at": _in(60)})):
            assert refused.status_code == 403, refused.text
        job = root.post("/personal-access-tokens", json={"name": unique("job"), "scopes": ["job"],
                                                         "expires_at": _in(3600)}).json()
        with manager.client(job["token"]) as job_client:
            refused = job_client.post("/clusters", json={"name": unique("x")})
            assert refused.status_code == 403 and "scope" in refused.json()["error"]

        assert root.delete(f"/personal-access-tokens/{token['id']}").status_code == 204
        assert ci.get("/clusters").status_code == 401  # revoked
        assert root.delete(f"/personal-access-tokens/{token['id']}").status_code == 404


def test_an_expired_token_is_refused(manager: Manager, root: httpx.Client) -> None:
    assert root.post("/personal-access-tokens", json={"name": unique("past"), "scopes": ["cluster"],
                                                      "expires_at": _in(-1)}).status_code == 400
    short = root.post("/personal-access-tokens", json={"name": unique("short"), "scopes": ["cluster"],
                                                       "expires_at": _in(1.5)}).json()
    with manager.client(short["token"]) as client:
        assert client.get("/clusters").status_code == 200
        wait_until(lambda: client.get("/clusters").status_code == 401, 10, "the token to expire")
        assert "expired" in client.get("/clusters").json()["error"]


def test_a_guest_reads_but_writes_nothing(manager: Manager) -> None:
    with manager.guest(unique("guest")) as guest:
        for path in ("/clusters", "/schedulers", "/seed-peers", "/peers", "/users/me"):
            assert guest.get(path).status_code == 200, path
        for path in ("/users", "/personal-access-tokens", "/audit"):
            assert guest.get(path).status_code == 403, path
        refused = guest.post("/clusters", json={"name": unique("nope")})
        assert refused.status_code == 403 and "guest" in refused.json()["error"]


# --- clusters -------------------------------------------------------------------------------------------------------


def test_clusters_take_defaults_merge_patches_and_refuse_duplicates(root: httpx.Client) -> None:
    name = unique("east")
    created = root.post("/clusters", json={"name": name})
    assert created.status_code == 201
    cluster = created.json()
    assert cluster["config"] == {"upload_rate": None, "upload_slots": None, "candidate_parent_limit": 4,
                                 "back_to_source": None, "block_list": []}
    assert cluster["scopes"] == {"idc": None, "location": None, "cidrs": []}
    assert root.get(f"/clusters/{cluster['id']}").json() == cluster
    assert isinstance(root.get("/clusters").json(), list)
    duplicate = root.post("/clusters", json={"name": name})
    assert duplicate.status_code == 409 and name in duplicate.json()["error"]

    changed = root.patch(f"/clusters/{cluster['id']}", json={"config": {"upload_rate": 1000, "block_list": [
        "docker.io/library/busybox:1.36"]}, "scopes": {"cidrs": ["10.20.0.0/16"]}}).json()
    assert changed["config"]["upload_rate"] == 1000 and changed["config"]["candidate_parent_limit"] == 4
    assert changed["config"]["block_list"] == ["docker.io/library/busybox:1.36"]
    assert changed["scopes"]["cidrs"] == ["10.20.0.0/16"]
    again = root.patch(f"/clusters/{cluster['id']}", json={"config": {"back_to_source": 2}}).json()
    assert again["config"]["upload_rate"] == 1000 and again["config"]["back_to_source"] == 2

    other = root.post("/clusters", json={"name": unique("west")}).json()
    assert root.patch(f"/clusters/{other['id']}", json={"name": name}).status_code == 409
    assert root.delete(f"/clusters/{other['id']}").status_code == 204
    assert root.get(f"/clusters/{other['id']}").status_code == 404


# --- components -----------------------------------------------------------------------------------------------------


def _keepalive(manager: Manager, component_id: int, **body: int) -> httpx.Response:
    return httpx.post(f"{manager.api}/components/{component_id}/keepalive", json=body)


def _component(client: httpx.Client, kind_path: str, component_id: int) -> dict[str, Any]:
    return next(c for c in client.get(kind_path).json() if c["id"] == component_id)


def test_components_join_the_cluster_they_name_or_their_schedulers(manager: Manager, root: httpx.Client) -> None:
    cluster = unique("named")
    scheduler = manager.register("scheduler", unique("sched"), f"http://127.0.0.1:{free_port()}/", cluster=cluster)
    created = [c for c in root.get("/clusters").json() if c["name"] == cluster]
    assert created and scheduler["cluster_id"] == created[0]["id"]  # made with defaults on demand
    assert scheduler["keepalive_interval"] == 0.2
    assert scheduler["config"]["candidate_parent_limit"] == 4
    scheduler_url = root.get("/schedulers").json()
    url = next(s["url"] for s in scheduler_url if s["id"] == scheduler["id"])
    assert not url.endswith("/")

    peer = manager.register("peer", unique("peer"), "http://127.0.0.1:1", scheduler_url=url)
    assert peer["cluster_id"] == scheduler["cluster_id"] and peer["schedulers"] == [url]
    seed = manager.register("seed-peer", unique("seed"), "http://127.0.0.1:2", cluster=cluster)
    assert seed["schedulers"] == [url]
    assert any(s["id"] == seed["id"] for s in root.get("/seed-peers", params={"cluster_id": seed["cluster_id"]}).json())

    again = manager.register("peer", _component(root, "/peers", peer["id"])["host_id"], "http://127.0.0.1:3",
                             cluster=cluster)
    assert again["id"] == peer["id"]  # the same host registering again keeps its record
    assert _component(root, "/peers", peer["id"])["url"] == "http://127.0.0.1:3"


def test_hosts_are_placed_by_scopes_and_else_in_default(fresh_manager: Callable[..., Manager]) -> None:
    manager = fresh_manager()
    first = manager.register("peer", "lonely", "http://127.0.0.1:1")
    with manager.root() as root:
        clusters = root.get("/clusters").json()
        assert [c["name"] for c in clusters] == ["default"] and first["cluster_id"] == clusters[0]["id"]
        lab = root.post("/clusters", json={"name": "lab", "scopes": {"cidrs": ["10.9.0.0/16"]}}).json()
        paris = root.post("/clusters", json={"name": "paris", "scopes": {"location": "eu|fr"}}).json()
        idc = root.post("/clusters", json={"name": "idc-b", "scopes": {"idc": "idc-b"}}).json()
    assert manager.register("peer", "p1", "http://127.0.0.1:1", ip="10.9.3.4", idc="idc-b")["cluster_id"] == lab["id"]
    assert manager.register("peer", "p2", "http://127.0.0.1:1", idc="idc-b",
                            location="eu|fr|paris")["cluster_id"] == idc["id"]
    assert manager.register("peer", "p3", "http://127.0.0.1:1", location="eu|fr|paris")["cluster_id"] == paris["id"]
    assert manager.register("peer", "p4", "http://127.0.0.1:1", location="us")["cluster_id"] == first["cluster_id"]


def test_components_go_inactive_without_keepalives_and_come_back(manager: Manager, root: httpx.Client) -> None:
    cluster = unique("alive")
    registered = manager.register("scheduler", unique("s"), f"http://127.0.0.1:{free_port()}", cluster=cluster)
    component_id = registered["id"]
    assert _component(root, "/schedulers", component_id)["state"] == "active"
    wait_until(lambda: _component(root, "/schedulers", component_id)["state"] == "inactive", 10,
               "the scheduler to show inactive")
    assert manager.register("peer", unique("p"), "http://127.0.0.1:1", cluster=cluster)["schedulers"] == []
    inactive = root.get("/schedulers", params={"state": "inactive"}).json()
    assert any(c["id"] == component_id for c in inactive)  # listed, never deleted

    answer = _keepalive(manager, component_id)
    assert answer.status_code == 200 and set(answer.json()) == {"config", "schedulers"}
    assert _component(root, "/schedulers", component_id)["state"] == "active"
    assert len(answer.json()["schedulers"]) == 1


def test_keepalives_report_bytes_and_unknown_ids_register_again(manager: Manager, root: httpx.Client) -> None:
    peer = manager.register("peer", unique("p"), "http://127.0.0.1:1")
    assert _keepalive(manager, peer["id"], uploaded_bytes=123, served_bytes=456).status_code == 200
    shown = _component(root, "/peers", peer["id"])
    assert (shown["uploaded_bytes"], shown["served_bytes"]) == (123, 456)
    unknown = _keepalive(manager, 2**31 - 1)
    assert unknown.status_code == 404 and "register again" in unknown.json()["error"]


def test_a_deleted_clusters_members_are_placed_again(manager: Manager, root: httpx.Client) -> None:
    cluster = unique("doomed")
    scheduler = manager.register("scheduler", unique("s"), f"http://127.0.0.1:{free_port()}", cluster=cluster)
    peer = manager.register("peer", unique("p"), "http://127.0.0.1:1", cluster=cluster)
    assert root.delete(f"/clusters/{peer['cluster_id']}").status_code == 204
    assert _component(root, "/peers", peer["id"])["cluster_id"] is None
    refused = _keepalive(manager, peer["id"])  # a peer's keepalive does not make the cluster again
    assert refused.status_code == 404 and "no cluster named" in refused.json()["error"]
    assert _keepalive(manager, scheduler["id"]).status_code == 200  # its scheduler's does
    assert _keepalive(manager, peer["id"]).status_code == 200
    rejoined = _component(root, "/peers", peer["id"])["cluster_id"]
    assert rejoined is not None and root.get(f"/clusters/{rejoined}").json()["name"] == cluster


def _non_loopback_address() -> str:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True).stdout
    addresses = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    assert addresses, "this machine has no non-loopback IPv4 address to call the manager from"
    return addresses[0]


def test_without_tls_components_register_only_from_loopback(fresh_manager: Callable[..., Manager]) -> None:
    address = _non_loopback_address()
    manager = fresh_manager(listen_host="0.0.0.0")
    outside = f"http://{address}:{manager.port}/api/v1"
    refused = httpx.post(f"{outside}/components", json={"kind": "peer", "host_id": "h", "url": "http://x:1"})
    assert refused.status_code == 403 and "loopback" in refused.json()["error"]
    assert httpx.post(f"{outside}/components/1/keepalive", json={}).status_code == 403
    assert "without --tls-dir" in manager.log()  # the operator was warned at start
    assert httpx.post(f"{outside}/users/signin", json={"name": "root", "password": ROOT_PASSWORD}).status_code == 200


# --- audit ----------------------------------------------------------------------------------------------------------


def test_the_audit_log_records_every_write(manager: Manager, root: httpx.Client) -> None:
    name = unique("audited")
    cluster = root.post("/clusters", json={"name": name}).json()
    root.delete(f"/clusters/{cluster['id']}")
    entries = root.get("/audit", params={"limit": 5}).json()
    deleted, created = entries[0], entries[1]
    assert created["actor"] == "root" and created["credential"] == "session" and created["address"] == "127.0.0.1"
    assert (created["method"], created["path"], created["status"]) == ("POST", "/api/v1/clusters", 201)
    assert name in created["summary"] and name in deleted["summary"] and deleted["status"] == 204
    assert created["id"] < deleted["id"] and datetime.fromisoformat(created["at"]) <= datetime.now(timezone.utc)
    older = root.get("/audit", params={"before_id": deleted["id"], "limit": 1}).json()
    assert older == [created]


# --- bad input --------------------------------------------------------------------------------------------------------


def test_bad_input_gets_a_clear_4xx_and_changes_nothing(manager: Manager, root: httpx.Client) -> None:
    clusters_before = root.get("/clusters").json()
    audit_before = root.get("/audit", params={"limit": 1}).json()
    cases = [
        (root.post("/clusters", content=b"{not json", headers={"Content-Type": "application/json"}), 400, "JSON"),
        (root.post("/clusters", content=b""), 400, "JSON object"),
        (root.post("/clusters", json=["a list"]), 400, ""),
        (root.post("/clusters", json={"name": "ok", "colour": "red"}), 400, "colour: unknown field"),
        (root.post("/clusters", json={"name": "bad name!"}), 400, "name"),
        (root.post("/clusters", json={"name": "x", "config": {"upload_rate": -1}}), 400, "config.upload_rate"),
        (root.post("/clusters", json={"name": "x", "config": {"block_list": ["NOT/valid ref"]}}), 400, "block_list"),
        (root.post("/clusters", content=b'{"name": "' + b"a" * (2 << 20) + b'"}'), 413, "larger"),
        (root.post("/users", json={"name": "short", "password": "2short", "role": "guest"}), 400, "password"),
        (root.get("/clusters/99999999999999999999"), 404, ""),
        (root.get("/clusters/abc"), 404, ""),
        (root.get("/audit", params={"limit": "many"}), 400, "limit"),
        (root.get("/tasks"), 400, "digest"),
        (root.get("/tasks", params={"digest": "sha256:short"}), 400, "digest"),
        (root.get("/tasks", params={"image": "UPPER/Case:tag"}), 400, "image"),
        # A reader may not make the manager talk cleartext to a host of its choosing.
        (root.get("/tasks", params={"image": "192.0.2.7:5000/app:1", "plain_http": "true"}), 400, "plain HTTP"),
        (root.put("/clusters"), 405, "PUT"),
        (root.get("/nothing-here"), 404, "no such endpoint"),
        (httpx.post(f"{manager.api}/components", content=b"\xff\xfe"), 400, "JSON"),
        (httpx.post(f"{manager.api}/users/signin", json={"name": "root"}), 400, "password"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert response.headers["Content-Type"].startswith("application/json")
        body = response.json()
        assert list(body) == ["error"] and "\n" not in body["error"] and words in body["error"], body
    existing = clusters_before[0] if clusters_before else root.post("/clusters", json={"name": unique("k")}).json()
    clusters_before = root.get("/clusters").json()
    audit_before = root.get("/audit", params={"limit": 1}).json()
    patched = root.patch(f"/clusters/{existing['id']}", json={"config": {"candidate_parent_limit": None}})
    assert patched.status_code == 400 and "candidate_parent_limit" in patched.json()["error"]
    assert root.get("/clusters").json() == clusters_before  # nothing half written
    assert root.get("/audit", params={"limit": 1}).json() == audit_before


# --- where a blob is --------------------------------------------------------------------------------------------------


class _StandInScheduler(QuietRequestHandler):
    """A stand-in for the scheduler's GET /api/v1/tasks/{digest}/peers, which another change
    adds to the real scheduler: it answers one peer halfway through every task it is asked
    about. (Replace it with a real `damselfly scheduler` once that endpoint exists.)"""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        match = re.fullmatch(r"/api/v1/tasks/(sha256:[0-9a-f]{64})/peers", self.path)
        if match is None:
            self.send_error(404)
            return
        body = json.dumps([{"host_id": "peer-a", "upload_url": "http://127.0.0.1:65002", "pieces": [0, 1],
                            "piece_count": 4, "done": False}]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_tasks_asks_the_active_schedulers_and_reports_the_silent_ones(
        manager: Manager, root: httpx.Client, registry: Registry, registry_client: RegistryClient) -> None:
    port = free_port()
    scheduler = ThreadedHTTPServer(_StandInScheduler, port)
    try:
        cluster = unique("tasks")
        answering = manager.register("scheduler", unique("s"), f"http://127.0.0.1:{port}", cluster=cluster)
        manager.register("scheduler", unique("dead"), f"http://127.0.0.1:{free_port()}", cluster=cluster)
        digest = "sha256:" + "ab" * 32
        found = root.get("/tasks", params={"digest": digest, "cluster_id": answering["cluster_id"]})
        assert found.status_code == 200, found.text
        answer = found.json()
        assert [b["digest"] for b in answer["blobs"]] == [digest]
        assert answer["blobs"][0]["peers"] == [{"host_id": "peer-a", "upload_url": "http://127.0.0.1:65002",
                                                "pieces": 2, "piece_count": 4, "done": False,
                                                "scheduler_url": f"http://127.0.0.1:{port}"}]
        reports = {r["url"]: r["error"] for r in answer["schedulers"]}
        assert reports[f"http://127.0.0.1:{port}"] is None
        assert [error for error in reports.values() if error], "the dead scheduler is reported"

        image = build_image(unique("tasks-image"), [1000, 2000])
        push_image(registry_client, image)
        reference = image.reference(registry.host)
        by_image = root.get("/tasks", params={"image": reference, "plain_http": "true",
                                              "cluster_id": answering["cluster_id"]})
        assert by_image.status_code == 200, by_image.text
        wanted = [json.loads(image.manifest)["config"]["digest"],
                  *(layer.digest for layer in image.layers)]
        assert [b["digest"] for b in by_image.json()["blobs"]] == wanted and by_image.json()["image"] == reference
        missing = root.get("/tasks", params={"image": f"{registry.host}/no/such:image", "plain_http": "true"})
        assert missing.status_code == 502 and registry.host in missing.json()["error"]
    finally:
        scheduler.stop()


# --- components with certificates ------------------------------------------------------------------------------------


def test_with_tls_components_prove_who_they_are(tmp_path: Path) -> None:
    manager = Manager(tmp_path, args=FAST, tls_dir=tls_dir("manager-under-test", "manager")).start()
    try:
        def member(name: str, role: str) -> httpx.Client:
            context = ClusterTLS.load(tls_dir(name, role)).client_context()
            return httpx.Client(base_url=manager.api, verify=context, timeout=30)

        body = {"kind": "peer", "host_id": "tls-peer", "url": "https://127.0.0.1:65002"}
        with manager.client() as person, member("tls-peer", "peer") as peer, \
                member("tls-scheduler", "scheduler") as scheduler:
            assert manager.sign_in()  # people sign in over HTTPS without a certificate
            refused = person.post("/components", json=body)
            assert refused.status_code == 403 and "certificate" in refused.json()["error"]
            registered = peer.post("/components", json=body)
            assert registered.status_code == 200, registered.text
            assert peer.post("/components", json={**body, "host_id": "someone-else"}).status_code == 403
            assert peer.post("/components", json={**body, "kind": "scheduler"}).status_code == 403
            assert peer.post(f"/components/{registered.json()['id']}/keepalive", json={}).status_code == 200
            theirs = scheduler.post("/components", json={**body, "kind": "scheduler", "host_id": "tls-scheduler"})
            assert theirs.status_code == 200
            assert peer.post(f"/components/{theirs.json()['id']}/keepalive", json={}).status_code == 403
            # A peer's certificate in the scheduler's name keeps no scheduler alive, and makes no cluster.
            with member("tls-scheduler", "peer") as namesake:
                assert namesake.post(f"/components/{theirs.json()['id']}/keepalive", json={}).status_code == 403
            made = peer.post("/components", json={**body, "cluster": "made-by-a-peer"})
            assert made.status_code == 404 and "no cluster named" in made.json()["error"]
            assert person.post(f"/components/{theirs.json()['id']}/keepalive", json={}).status_code == 403
    finally:
        manager.stop()

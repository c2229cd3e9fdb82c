"""The scheduler's HTTP API as a separate process: good answers and clear refusals."""

from __future__ import annotations

import socket

import httpx

from damselfly.lib.serve import BODY_TIMEOUT
from damselfly.core.pieces import piece_length_for
from damselfly.core.wire import Schedule
from testkit.cluster import SchedulerProcess

TASK = "sha256:" + "a" * 64
PIECE = piece_length_for(3 * 256 * 1024)
LENGTH = 3 * PIECE


def digest(index: int) -> str:
    return f"blake3:{index:064x}"


def test_scheduler_api_answers_and_refuses_clearly(tmp_path):
    scheduler = SchedulerProcess(tmp_path / "sch").start()
    try:
        api = f"{scheduler.url}/api/v1"
        with httpx.Client(timeout=10) as client:
            assert client.post(f"{api}/hosts", json={"id": "p1", "upload_url": "http://127.0.0.1:1",
                                                     "seed": True}).status_code == 200
            for nested in (b'{"a":' * 100000, b"[" * 200000):  # deeper than the parser goes: 400, not 500
                deep = client.post(f"{api}/hosts", content=nested)
                assert deep.status_code == 400 and "JSON" in deep.json()["error"]
            bad = client.post(f"{api}/hosts", content=b"{not json")
            assert bad.status_code == 400 and "JSON" in bad.json()["error"]
            missing = client.post(f"{api}/hosts", json={"upload_url": "x"})
            assert missing.status_code == 400 and missing.json()["error"] == "HostAnnounce: missing field 'id'"
            unknown = client.get(f"{api}/tasks/{TASK}/schedule", params={"host_id": "p1"})
            assert unknown.status_code == 404 and "register first" in unknown.json()["error"]
            assert client.post(f"{api}/tasks/{TASK}/register", json={"host_id": "p1", "length": "x",
                                                                     "piece_length": PIECE}).status_code == 400
            answer = client.post(f"{api}/tasks/{TASK}/register",
                                 json={"host_id": "p1", "length": LENGTH, "piece_length": PIECE, "pieces": []}).json()
            assert answer["action"] == "back_to_source" and "no seed peer" in answer["reason"]
            assert scheduler.metric("damselfly_scheduler_schedules_total", 'action="back_to_source"') == 1
            assert scheduler.metric("damselfly_scheduler_hosts", 'kind="all"') == 1
            # Polls bring only the digests that came since the version they name, from this scheduler.
            schedule, seen = f"{api}/tasks/{TASK}/schedule", answer
            for index in (0, 1):
                client.post(f"{api}/tasks/{TASK}/pieces", json={"host_id": "p1", "from_origin": True,
                                                                 "pieces": [[index, digest(index), None, None]]})
                polled = client.get(schedule, params={"host_id": "p1", "since": seen["version"],
                                                      "epoch": seen["epoch"]}).json()
                assert polled["digests"] == {str(index): digest(index)}
                assert Schedule.from_json(polled).digests == {index: digest(index)}  # the wire's own reading
                seen = polled
            foreign = client.get(schedule, params={"host_id": "p1", "since": 10**6, "epoch": "another scheduler"})
            assert foreign.json()["digests"] == {"0": digest(0), "1": digest(1)}  # answered at once, with everything
            malformed = client.get(schedule, params={"host_id": "p1", "since": "x"})
            assert malformed.status_code == 400 and "since" in malformed.json()["error"]
            # A peer a seed pointed at is reported by its upload URL, which the scheduler resolves.
            client.post(f"{api}/hosts", json={"id": "p2", "upload_url": "http://127.0.0.1:2"})
            client.post(f"{api}/tasks/{TASK}/register", json={"host_id": "p2", "length": LENGTH, "piece_length": PIECE,
                                                              "pieces": []})
            bad = f"{api}/tasks/{TASK}/bad-parent"
            assert client.post(bad, json={"host_id": "p2", "parent_url": "http://127.0.0.1:1"}).status_code == 200
            assert scheduler.metric("damselfly_scheduler_bad_parent_reports_total") == 1
            stranger = client.post(bad, json={"host_id": "p2", "parent_url": "http://127.0.0.1:9"})
            assert stranger.status_code == 404 and "no host uploads at" in stranger.json()["error"]
            assert client.post(bad, json={"host_id": "p2"}).status_code == 400
            # The seed a peer asked could not take the task: it reports that, and the seed is asked last.
            failed = client.post(f"{api}/tasks/{TASK}/trigger-failed", json={"host_id": "p2", "seed_id": "p1"})
            assert failed.status_code == 200
            assert scheduler.metric("damselfly_scheduler_seed_triggers_total", 'result="failed"') == 1
    finally:
        scheduler.stop()


def test_a_client_that_stalls_mid_body_gets_408(tmp_path):
    """aiohttp would wait on a half-sent body for as long as the connection stays open."""
    scheduler = SchedulerProcess(tmp_path / "sch").start()
    try:
        host, port = scheduler.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port))) as stalled:
            stalled.settimeout(BODY_TIMEOUT + 20)
            stalled.sendall(b"POST /api/v1/hosts HTTP/1.1\r\nHost: scheduler\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 100\r\n\r\n{\"id\": ")
            answer = b""
            while b"did not arrive within" not in answer and (part := stalled.recv(4096)):
                answer += part
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert b"did not arrive within" in answer
        with httpx.Client(timeout=10) as client:  # and it goes on answering
            assert client.post(f"{scheduler.url}/api/v1/hosts",
                               json={"id": "p1", "upload_url": "http://127.0.0.1:1"}).status_code == 200
    finally:
        scheduler.stop()

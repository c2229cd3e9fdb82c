"""A member's side of the manager (damselfly.network.manager_client) against a small fake
manager in this process: registration and keepalives, the configuration applied as it
changes, a lost record registered again, a manager that is down, and the scheduler list."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import pytest
from aiohttp import web

from damselfly.core.dynconfig import ClusterConfig
from damselfly.network.manager_client import ManagerClient, Membership

A, B = "http://127.0.0.1:8002", "http://127.0.0.1:8003"
CONFIG = {"upload_rate": None, "upload_slots": None, "candidate_parent_limit": 4, "back_to_source": None,
          "block_list": []}


@dataclass
class FakeManager:
    """Answers as the manager does; ``status`` other than 200 makes it refuse everything."""

    config: dict[str, Any] = field(default_factory=lambda: dict(CONFIG))
    schedulers: list[str] = field(default_factory=list)
    known: set[int] = field(default_factory=set)
    registrations: list[dict[str, Any]] = field(default_factory=list)
    keepalives: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/v1/components", self.register)
        app.router.add_post("/api/v1/components/{id}/keepalive", self.keepalive)
        return app

    async def register(self, request: web.Request) -> web.Response:
        if self.status != 200:
            return web.json_response({"error": "not now"}, status=self.status)
        self.registrations.append(await request.json())
        component_id = len(self.registrations)
        self.known.add(component_id)
        return web.json_response({"id": component_id, "cluster_id": 1, "config": self.config,
                                  "schedulers": self.schedulers, "keepalive_interval": 0.1})

    async def keepalive(self, request: web.Request) -> web.Response:
        if self.status != 200:
            return web.json_response({"error": "not now"}, status=self.status)
        if int(request.match_info["id"]) not in self.known:
            return web.json_response({"error": "register again"}, status=404)
        self.keepalives.append(await request.json())
        return web.json_response({"config": self.config, "schedulers": self.schedulers})


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def with_manager(test: Callable[[FakeManager, str], Awaitable[None]]) -> None:
    async def main() -> None:
        manager = FakeManager()
        runner = web.AppRunner(manager.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            await test(manager, f"http://127.0.0.1:{port}")
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_a_member_registers_keeps_alive_and_applies_each_new_configuration() -> None:
    applied: list[ClusterConfig] = []

    async def test(manager: FakeManager, url: str) -> None:
        client = ManagerClient(url, Membership("peer", "p1", "http://127.0.0.1:65002", idc="idc-a"), tls=None,
                               on_config=applied.append, counters=lambda: (10, 20))
        await client.start()
        try:
            await until(lambda: len(manager.keepalives) >= 2, "two keepalives")
            assert manager.registrations == [{"kind": "peer", "host_id": "p1", "url": "http://127.0.0.1:65002",
                                              "idc": "idc-a"}]
            assert manager.keepalives[0] == {"uploaded_bytes": 10, "served_bytes": 20}
            assert applied == [ClusterConfig()]  # once: the same answer again changes nothing
            manager.config = {**CONFIG, "upload_rate": 1000, "block_list": ["nginx"]}
            await until(lambda: len(applied) == 2, "the new configuration")
            assert applied[1] == ClusterConfig(upload_rate=1000, block_list=("nginx",))
        finally:
            await client.close()

    with_manager(test)


def test_a_member_the_manager_forgot_registers_again() -> None:
    async def test(manager: FakeManager, url: str) -> None:
        client = ManagerClient(url, Membership("scheduler", "s1", A, cluster="c1"), tls=None, on_config=lambda _: None)
        await client.start()
        try:
            await until(lambda: client.component_id == 1 and manager.keepalives, "registration")
            manager.known.clear()  # a new database
            await until(lambda: client.component_id == 2, "a second registration")
            assert manager.registrations[1]["cluster"] == "c1"
        finally:
            await client.close()

    with_manager(test)


def test_while_the_manager_is_down_the_member_keeps_its_last_answer_and_says_so_once(
        caplog: pytest.LogCaptureFixture) -> None:
    applied: list[ClusterConfig] = []
    ring: list[str] = []

    async def test(manager: FakeManager, url: str) -> None:
        manager.schedulers = [A, B]
        manager.config = {**CONFIG, "upload_slots": 3}
        client = ManagerClient(url, Membership("peer", "p1", "http://127.0.0.1:65002"), tls=None,
                               on_config=applied.append, on_schedulers=ring.extend, current_schedulers=lambda: ring)
        await client.start()
        try:
            await until(lambda: ring == [A, B], "the schedulers")
            manager.status = 503
            await until(lambda: caplog.text.count("manager unreachable") == 1, "the warning")
            failures = len(manager.keepalives)
            await asyncio.sleep(0.5)  # several keepalives fail meanwhile
            assert failures == len(manager.keepalives) and caplog.text.count("manager unreachable") == 1
            assert "keeping 2 schedulers and the cluster configuration from the last answer" in caplog.text
            assert ring == [A, B] and applied == [ClusterConfig(upload_slots=3)]
            manager.status = 200
            await until(lambda: "answers again" in caplog.text, "the manager back")
        finally:
            await client.close()

    with caplog.at_level(logging.INFO, "damselfly.network.manager_client"):
        with_manager(test)


def test_an_answer_it_cannot_use_keeps_the_last_configuration(caplog: pytest.LogCaptureFixture) -> None:
    applied: list[ClusterConfig] = []

    async def test(manager: FakeManager, url: str) -> None:
        client = ManagerClient(url, Membership("peer", "p1", "http://127.0.0.1:65002"), tls=None,
                               on_config=applied.append)
        await client.start()
        try:
            await until(lambda: applied, "the configuration")
            manager.config = {**CONFIG, "upload_slots": "many"}
            await until(lambda: "cannot use" in caplog.text, "the warning")
            assert applied == [ClusterConfig()] and client.config == ClusterConfig()
        finally:
            await client.close()

    with caplog.at_level(logging.WARNING, "damselfly.network.manager_client"):
        with_manager(test)


def test_an_empty_ring_takes_the_managers_first_schedulers_and_changes_wait_for_the_refresh() -> None:
    ring: list[list[str]] = [[]]

    async def test(manager: FakeManager, url: str) -> None:
        client = ManagerClient(url, Membership("peer", "p1", "http://127.0.0.1:65002"), tls=None,
                               on_config=lambda _: None, on_schedulers=ring.append,
                               current_schedulers=lambda: ring[-1], refresh_interval=3600)
        await client.start()
        try:
            await until(lambda: client.component_id is not None, "registration")
            assert ring == [[]]  # no scheduler yet: nothing to take, the ring stays empty
            manager.schedulers = [A]
            await until(lambda: ring[-1] == [A], "the first scheduler")
            manager.schedulers = [B]
            count = len(manager.keepalives)
            await until(lambda: len(manager.keepalives) >= count + 3, "more keepalives")
            assert ring[-1] == [A]  # a change waits for the refresh interval
            client.refresh_interval = 0
            await until(lambda: ring[-1] == [B], "the changed list")
        finally:
            await client.close()

    with_manager(test)


def test_a_member_with_a_cluster_identity_takes_no_scheduler_over_plain_http(
        caplog: pytest.LogCaptureFixture) -> None:
    ring: list[list[str]] = [[]]
    secure = "https://10.0.0.9:8002"

    async def test(manager: FakeManager, url: str) -> None:
        manager.schedulers = [A, secure]
        client = ManagerClient(url, Membership("peer", "p1", "https://127.0.0.1:65002"), tls=None,
                               on_config=lambda _: None, on_schedulers=ring.append,
                               current_schedulers=lambda: ring[-1], https_only=True)
        await client.start()
        try:
            await until(lambda: ring[-1] == [secure], "the https scheduler alone")
            count = len(manager.keepalives)
            await until(lambda: len(manager.keepalives) >= count + 3, "more keepalives")
            assert caplog.text.count("over plain HTTP") == 1 and A in caplog.text
        finally:
            await client.close()

    with caplog.at_level(logging.WARNING, "damselfly.network.manager_client"):
        with_manager(test)

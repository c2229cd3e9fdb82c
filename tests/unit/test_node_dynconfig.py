"""A daemon applies its cluster's configuration at run time: upload limits to its upload
server and to what the schedulers are told, the block list to its mirror (403 with the
entry); its scheduler ring takes the manager's list."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from damselfly.core.dynconfig import ClusterConfig
from damselfly.core.oci import OCIError
from damselfly.node import Node
from damselfly.settings import MirrorSettings, PeerSettings

DIGEST = "sha256:" + "c" * 64
REGISTRY = "127.0.0.1:5000"


def _node(tmp_path: Path, schedulers: list[str] | None = None) -> Node:
    return Node(MirrorSettings(data_dir=tmp_path), PeerSettings(
        schedulers=["http://127.0.0.1:1"] if schedulers is None else schedulers, upload_host="127.0.0.1",
        upload_port=2, upload_slots=8, upload_rate=5000))


def test_upload_limits_follow_the_cluster_and_fall_back_to_the_flags(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.apply_cluster_config(ClusterConfig(upload_rate=1000, upload_slots=2))
    assert (node.upload.rate, node.upload.slots, node.scheduler.host.upload_slots) == (1000, 2, 2)
    node.apply_cluster_config(ClusterConfig())
    assert (node.upload.rate, node.upload.slots, node.scheduler.host.upload_slots) == (5000, 8, 8)


def _refused(node: Node, path: str, method: str = "GET") -> str | None:
    """The mirror's refusal of ``path`` (None if it would go on to serve it)."""
    app = node.mirror.application()
    request = make_mocked_request(method, f"/v2/{path}?ns={REGISTRY}", app=app, match_info={"path": path})
    node.mirror.passthrough = _not_called  # type: ignore[method-assign]
    node.mirror.blob = _not_called  # type: ignore[method-assign]
    node.mirror.manifest = _not_called  # type: ignore[method-assign]
    try:
        asyncio.run(node.mirror.registry_route(request))
    except OCIError as error:
        assert error.status == 403 and error.code == "DENIED"
        return error.message
    return None


async def _not_called(*_: object) -> None:
    return None


def test_the_block_list_refuses_blocked_manifests_and_blobs_with_the_entry(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.apply_cluster_config(ClusterConfig(block_list=(f"{REGISTRY}/team/app:v1", DIGEST)))
    refused = _refused(node, "team/app/manifests/v1")
    assert refused is not None and f"{REGISTRY}/team/app:v1" in refused and "\n" not in refused
    assert _refused(node, f"other/blobs/{DIGEST}", "HEAD") is not None
    assert _refused(node, "team/app/manifests/v2") is None
    node.apply_cluster_config(ClusterConfig())
    assert _refused(node, "team/app/manifests/v1") is None


def test_a_daemon_without_schedulers_starts_with_an_empty_ring_and_takes_the_managers(tmp_path: Path) -> None:
    node = _node(tmp_path, schedulers=[])
    assert node.scheduler.members == [] and node.scheduler.order(DIGEST) == []
    node.scheduler.set_schedulers(["http://127.0.0.1:8002/", "http://127.0.0.1:8003"])
    assert sorted(node.scheduler.order(DIGEST)) == ["http://127.0.0.1:8002", "http://127.0.0.1:8003"]


def test_a_call_with_no_scheduler_known_fails_as_if_none_answered(tmp_path: Path) -> None:
    from damselfly.network.scheduler_client import SchedulerUnavailable

    node = _node(tmp_path, schedulers=[])
    with pytest.raises(SchedulerUnavailable, match="no scheduler known yet"):
        asyncio.run(node.scheduler.call(DIGEST, "GET", "schedule"))

"""The composition root: a node's role picks its sourcing and its upload server's seed duty
in one place, and a seed maps the registry a trigger names by its own --registry map."""

from __future__ import annotations

from pathlib import Path

import pytest

from damselfly.blobs.sourcing import NetworkSourcing, SeedSourcing
from damselfly.mirror.upstream import UpstreamResolver
from damselfly.node import EmbeddedScheduler, Node, registry_for_peers
from damselfly.settings import MirrorSettings, PeerSettings, SchedulerSettings

LOOPBACK = "127.0.0.1"


def _node(tmp_path: Path, seed: bool, scheduler: EmbeddedScheduler | None = None) -> Node:
    return Node(MirrorSettings(data_dir=tmp_path), PeerSettings(schedulers=[f"http://{LOOPBACK}:1"],
                                                                upload_host=LOOPBACK, upload_port=2, seed=seed),
                scheduler)


def test_a_seed_reads_the_origin_and_takes_triggers(tmp_path: Path) -> None:
    node = _node(tmp_path, seed=True)
    assert isinstance(node.blobs.sourcing, SeedSourcing) and node.upload.seed_duty is not None
    assert node.mirror.blobs is node.upload.blobs is node.blobs


def test_a_peer_reads_through_the_network_and_refuses_triggers(tmp_path: Path) -> None:
    node = _node(tmp_path, seed=False)
    assert isinstance(node.blobs.sourcing, NetworkSourcing) and node.upload.seed_duty is None


def test_run_serves_its_scheduler_first_beside_the_mirror_and_the_upload_server(tmp_path: Path) -> None:
    node = _node(tmp_path, seed=True, scheduler=EmbeddedScheduler(SchedulerSettings(), (LOOPBACK, 3)))
    assert [site.port for site in node.sites((LOOPBACK, 4))] == [3, 4, 2]
    assert [site.port for site in _node(tmp_path / "peer", seed=False).sites((LOOPBACK, 4))] == [4, 2]


@pytest.mark.parametrize(("name", "upstream"), [
    ("127.0.0.1:5000", "http://127.0.0.1:5000"),  # the name of a mapped URL
    ("local", "http://127.0.0.1:5000"),  # a mapped name
    ("Docker.io", "https://registry-1.docker.io"),
    ("ghcr.io", "https://ghcr.io"),
])
def test_a_trigger_reaches_the_registry_it_names_by_the_seeds_map(name: str, upstream: str) -> None:
    assert registry_for_peers(UpstreamResolver({"local": "http://127.0.0.1:5000"}))(name) == upstream


@pytest.mark.parametrize("name", ["http://169.254.169.254", "https://ghcr.io", "ghcr.io/team", "user@ghcr.io"])
def test_a_trigger_names_a_registry_and_never_points_at_one(name: str) -> None:
    with pytest.raises(ValueError, match="want host"):
        registry_for_peers(UpstreamResolver())(name)

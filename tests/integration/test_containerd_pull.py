"""containerd pulls and runs images through the mirror (real containerd, runc, docker-registry)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from testkit.containerd import write_hosts
from testkit.images import build_image, push_image

MiB = 1024 * 1024


def test_three_containerds_pull_one_image_at_once(tmp_path, registry, registry_client, damselfly, containerd):
    image = build_image("pull/three", [3 * MiB, 9 * MiB, 5 * MiB])
    push_image(registry_client, image)
    node = damselfly()
    hosts = write_hosts(tmp_path / "hosts", node.url, registry.host, registry.url)
    instances = [containerd() for _ in range(3)]
    reference = image.reference(registry.host)

    def pull_and_run(index: int) -> str:
        ctd = instances[index]
        ctd.ctr("images", "pull", "--hosts-dir", str(hosts), reference)
        return ctd.ctr("run", "--rm", reference, f"echo-{index}", "/bin/echo", "ok").stdout.strip()

    with ThreadPoolExecutor(3) as pool:
        outputs = list(pool.map(pull_and_run, range(3)))

    assert outputs == ["ok", "ok", "ok"]
    for layer in image.layers:
        gets = registry.blob_gets(layer.digest, image.name)
        assert len(gets) == 1, f"registry saw {len(gets)} GETs of layer {layer.digest}"
    assert node.metric("damselfly_cache_misses_total") == len(image.layers) + 1  # layers and the config blob
    assert node.metric("damselfly_cache_hits_total") >= 2 * len(image.layers)
    assert node.metric("damselfly_upstream_bytes_total") == sum(len(layer.data) for layer in image.layers) + len(image.config)

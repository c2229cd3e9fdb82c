"""A site whose registries are reached only through an HTTP proxy (Debian's tinyproxy, with
a password): the daemon takes the proxy the environment names, as containerd does, for
manifests (passed through) and blobs (downloaded) alike."""

from __future__ import annotations

import subprocess
import sys

import httpx

from testkit.containerd import write_hosts
from testkit.images import build_image, push_image
from testkit.proxy import tinyproxy

MiB = 1024 * 1024
NO_PROXY = {"no_proxy": "", "NO_PROXY": ""}


def test_containerd_pulls_through_the_mirror_and_the_proxy(tmp_path, registry, registry_client, damselfly,
                                                           containerd):
    image = build_image("proxied/app", [2 * MiB])
    push_image(registry_client, image)
    with tinyproxy(tmp_path / "proxy", credentials=("site", "s3cret")) as proxy:
        node = damselfly(env={"http_proxy": proxy.url, **NO_PROXY})
        ctd = containerd()
        reference = image.reference(registry.host)
        ctd.ctr("images", "pull", "--hosts-dir", str(write_hosts(tmp_path / "hosts", node.url, registry.host, registry.url)),
                reference)
        assert ctd.ctr("run", "--rm", reference, "proxied", "/bin/echo", "ok").stdout.strip() == "ok"
        requests = proxy.requests()
    for layer in image.layers:
        assert f"GET {registry.url}/v2/{image.name}/blobs/{layer.digest} HTTP/1.1" in requests
    assert f"HEAD {registry.url}/v2/{image.name}/manifests/latest HTTP/1.1" in requests  # resolved, passed through
    assert f"GET {registry.url}/v2/{image.name}/manifests/{image.manifest_digest} HTTP/1.1" in requests
    log = node.log()
    assert f"upstream registries: http_proxy={proxy.url.replace('site:s3cret@', '')}" in log
    assert "s3cret" not in log


def test_no_proxy_and_a_proxy_that_wants_credentials(tmp_path, registry, registry_client, damselfly):
    data = b"x" * (MiB + 7)
    digest = registry_client.push_blob("proxied/blob", data)
    with tinyproxy(tmp_path / "proxy", credentials=("site", "s3cret")) as proxy:
        without_password = proxy.url.replace("site:s3cret@", "")
        refused = damselfly(env={"http_proxy": without_password, **NO_PROXY})
        for method in ("HEAD", "GET"):  # passed through; downloaded
            response = httpx.request(method, f"{refused.url}/v2/proxied/blob/blobs/{digest}",
                                     params={"ns": registry.host}, timeout=30)
            assert response.status_code == 502
        assert "wants credentials (407)" in response.json()["errors"][0]["message"]

        asked = len(proxy.requests())
        assert asked >= 2
        around = damselfly(env={"http_proxy": without_password, "no_proxy": "127.0.0.0/8"})
        response = httpx.get(f"{around.url}/v2/proxied/blob/blobs/{digest}", params={"ns": registry.host}, timeout=30)
        assert response.status_code == 200 and response.content == data
        assert proxy.requests()[asked:] == []  # the registry's address is in no_proxy


def test_a_proxy_it_cannot_use_is_refused_at_start(tmp_path):
    result = subprocess.run([sys.executable, "-m", "damselfly", "run", "--data-dir", str(tmp_path / "data")],
                            env={"PATH": "/usr/bin:/bin", "https_proxy": "socks5://user:pw@127.0.0.1:1080"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == ("Error: https_proxy: only http:// proxies are supported, not socks5:// "
                                     "(https registries are reached through them with CONNECT)")

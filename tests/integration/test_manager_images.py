"""The manager's preheat resolver against a real docker-registry: an image, a multi-arch
index, a nydus image, private images behind Basic and Bearer auth, a registry that lies,
and a file. The resolver is called as the jobs API calls it, in this process."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from damselfly.core.jobs import Blob, Manifest
from damselfly.core.oci import ImageRef
from damselfly.manager.errors import ApiError
from damselfly.manager.images import FILE_URL, Credentials, ResolvedImage, resolve_file, resolve_image
from damselfly.nydus.builder import ChunkSettings
from damselfly.nydus.convert import convert
from damselfly.nydus.image import BOOTSTRAP_ANNOTATION, NYDUS_BLOB_TYPE
from damselfly.registry.blocking import RegistryClient as BlockingRegistryClient
from testkit.images import OCI_INDEX, OCI_MANIFEST, Image, image_from_layers, push_image, push_index, random_layer
from testkit.registry import Registry, RegistryClient, basic_auth, htpasswd_auth
from tests.support.fakes import ManifestRegistryFake
from tests.support.tokenauth import TokenServer

NYDUS_FEATURE = "nydus.remoteimage.v1"
USERS = {"alice": "wonderland"}
ANONYMOUS = Credentials()


def unique(prefix: str) -> str:
    return f"{prefix}-{os.urandom(4).hex()}"


def small_image(name: str, arch: str | None = None, shared: list | None = None, tag: str = "latest") -> Image:
    """An image of small random layers (and ``shared`` ones first), cheap to push and convert."""
    layers = [*(shared or []), random_layer(30_000, 0), random_layer(20_000, 1)]
    return image_from_layers(name, layers, ["/bin/true"], tag=tag, arch=arch)


def blobs_of(image: Image) -> list[Blob]:
    config = json.loads(image.manifest)["config"]
    return [Blob(config["digest"], config["size"], config["mediaType"]),
            *(Blob(layer.digest, len(layer.data), layer.media_type) for layer in image.layers)]


def digest_of(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def resolve(registry: Registry, reference: str, platform: str = "all",
            credentials: Credentials = ANONYMOUS) -> ResolvedImage:
    """``registry``'s image as the manager reaches it over plain HTTP: named in its map."""
    return resolve_image(f"{registry.host}/{reference}", platform, credentials, {registry.host: registry.url})


def api_error(call: object, *args: object) -> ApiError:
    with pytest.raises(ApiError) as raised:
        call(*args)  # type: ignore[operator]
    return raised.value


# --- public images -------------------------------------------------------------------------------------------------

def test_an_image_is_its_manifest_config_and_every_layer_and_a_tag_its_digest_now(
        registry: Registry, registry_client: RegistryClient) -> None:
    image = small_image(unique("resolve/one"), tag="v1")
    push_image(registry_client, image)
    resolved = resolve(registry, f"{image.name}:v1", "linux/s390x")  # one manifest: the platform does not apply
    assert resolved == ResolvedImage(registry.host, image.name, {"v1": image.manifest_digest},
                                     (Manifest(image.manifest_digest, OCI_MANIFEST, image.manifest),),
                                     tuple(blobs_of(image)), False, None)
    # Dragonfly's form, over plain HTTP to loopback without a map; a digest resolves no tag.
    by_url = resolve_image(f"http://{registry.host}/v2/{image.name}/manifests/{image.manifest_digest}", "all",
                           ANONYMOUS, {})
    assert by_url.manifests == resolved.manifests and by_url.blobs == resolved.blobs and by_url.tags == {}
    # Without the map a bare reference means https, which this registry does not speak.
    refused = api_error(resolve_image, f"{registry.host}/{image.name}:v1", "all", ANONYMOUS, {})
    assert refused.status == 502 and registry.host in refused.message
    missing = api_error(resolve, registry, f"{image.name}:no-such-tag")
    assert missing.status == 502 and registry.host in missing.message and "404" in missing.message


def test_an_index_gives_every_platform_or_the_one_asked_for(registry: Registry,
                                                             registry_client: RegistryClient) -> None:
    name = unique("resolve/multi")
    shared = random_layer(10_000, 9)
    amd64, arm64 = (small_image(name, arch, [shared]) for arch in ("amd64", "arm64"))
    for image in (amd64, arm64):
        push_image(registry_client, image)  # its tag is overwritten by the index below
    index = push_index(registry_client, name, "multi", [(amd64, {"os": "linux", "architecture": "amd64"}),
                                                         (arm64, {"os": "linux", "architecture": "arm64"})])
    top = Manifest(digest_of(index), OCI_INDEX, index)

    every = resolve(registry, f"{name}:multi")
    assert every.tags == {"multi": top.digest}
    assert every.manifests == (top, Manifest(amd64.manifest_digest, OCI_MANIFEST, amd64.manifest),
                               Manifest(arm64.manifest_digest, OCI_MANIFEST, arm64.manifest))
    # both platforms' configs and layers, the layer they share once
    assert every.blobs == tuple(dict.fromkeys([*blobs_of(amd64), *blobs_of(arm64)]))
    assert len(every.blobs) == len(blobs_of(amd64)) * 2 - 1

    one = resolve(registry, f"{name}:multi", "linux/arm64")
    assert one.manifests == (top, Manifest(arm64.manifest_digest, OCI_MANIFEST, arm64.manifest))
    assert one.blobs == tuple(blobs_of(arm64))

    absent = api_error(resolve, registry, f"{name}:multi", "linux/s390x")
    assert absent.status == 400 and "linux/amd64, linux/arm64" in absent.message and "s390x" in absent.message


def test_a_nydus_image_brings_its_bootstrap_and_blobs_and_sits_beside_its_oci_form(
        tmp_path: Path, registry: Registry, registry_client: RegistryClient) -> None:
    name = unique("resolve/nydus")
    source = small_image(name, "amd64", tag="oci")
    push_image(registry_client, source)
    client = BlockingRegistryClient(registry.host, plain_http=True)
    try:
        converted = convert(ImageRef.parse(f"{registry.host}/{name}:oci"), ImageRef.parse(f"{registry.host}/{name}:nydus"),
                            client, client, ChunkSettings(), work_dir=str(tmp_path))
        nydus_body, _, _ = client.manifest_bytes(name, "nydus")
    finally:
        client.close()
    nydus = json.loads(nydus_body)
    alone = resolve(registry, f"{name}:nydus")
    assert alone.manifests == (Manifest(converted.manifest_digest, OCI_MANIFEST, nydus_body),)
    assert [blob.digest for blob in alone.blobs] == [d["digest"] for d in [nydus["config"], *nydus["layers"]]]
    assert [blob.media_type for blob in alone.blobs[1:-1]] == [NYDUS_BLOB_TYPE] * len(converted.blobs)
    assert nydus["layers"][-1]["annotations"][BOOTSTRAP_ANNOTATION] == "true"  # the bootstrap is the last blob

    index = push_index(registry_client, name, "both", [
        (source, {"os": "linux", "architecture": "amd64"}),
        (nydus_body, {"os": "linux", "architecture": "amd64", "os.features": [NYDUS_FEATURE]})])
    for platform in ("all", "linux/amd64"):
        both = resolve(registry, f"{name}:both", platform)
        assert [m.digest for m in both.manifests] == [digest_of(index), source.manifest_digest, converted.manifest_digest]
        assert both.blobs == tuple(dict.fromkeys([*blobs_of(source), *alone.blobs]))


# --- private images ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    workdir = tmp_path_factory.mktemp("basic-registry")
    registry = Registry(workdir, auth=htpasswd_auth(workdir, USERS)).start()
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    tokens = TokenServer(tmp_path_factory.mktemp("tokens"),
                         users={user: (password, {"private/": ["pull", "push"]}) for user, password in USERS.items()})
    tokens.start()
    registry = Registry(tmp_path_factory.mktemp("token-registry"), auth=tokens.registry_auth_config()).start()
    yield registry
    registry.stop()
    tokens.stop()


@pytest.mark.parametrize("auth, scheme", [("basic_registry", "Basic "), ("token_registry", "Bearer ")])
def test_a_private_image_resolves_with_its_credentials_only(request: pytest.FixtureRequest, auth: str,
                                                            scheme: str) -> None:
    registry: Registry = request.getfixturevalue(auth)
    image = small_image(unique("private/app"))
    push_image(RegistryClient(registry.url, credentials=("alice", "wonderland")), image)

    anonymous = api_error(resolve, registry, image.name)
    assert anonymous.status == 502 and f"registry {registry.host} refused anonymous access" in anonymous.message
    wrong = api_error(resolve, registry, image.name, "all", Credentials("alice", "not-her-password"))
    assert wrong.status == 502 and f"registry {registry.host} refused the credentials" in wrong.message
    assert "not-her-password" not in wrong.message

    for credentials in (Credentials("alice", "wonderland"),
                        Credentials(headers={"Authorization": basic_auth("alice", "wonderland")})):
        resolved = resolve(registry, image.name, "all", credentials)
        assert resolved.private and resolved.blobs == tuple(blobs_of(image))
        assert resolved.authorization is not None and resolved.authorization.startswith(scheme)
        # What the seeds are handed reads the blobs.
        layer = image.layers[-1]
        blob = httpx.get(f"{registry.url}/v2/{image.name}/blobs/{layer.digest}",
                         headers={"Authorization": resolved.authorization}, timeout=10)
        assert blob.status_code == 200 and blob.content == layer.data

    layer = image.layers[0]
    file = resolve_file(f"{registry.url}/v2/{image.name}/blobs/{layer.digest}", layer.digest, {},
                        Credentials("alice", "wonderland"))
    assert file.private and file.authorization and file.blobs == (Blob(layer.digest, len(layer.data)),)


# --- registries that lie -------------------------------------------------------------------------------------------

def test_manifests_that_are_not_what_they_claim_are_refused() -> None:
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"digest": "sha256:" + "cd" * 32, "size": 2}, "layers": []}).encode()
    honest, other = digest_of(manifest), "sha256:" + "ef" * 32
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": other, "size": len(manifest),
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    schema1 = b'{"schemaVersion": 1, "name": "app", "fsLayers": []}'
    fake = ManifestRegistryFake({
        "honest": (manifest, OCI_MANIFEST, honest),
        "claims-other": (manifest, OCI_MANIFEST, other),  # Docker-Content-Digest names other bytes
        "index": (index, OCI_INDEX, None),
        other: (manifest, OCI_MANIFEST, None),  # asked for by digest, sends bytes of another
        "old": (schema1, "application/vnd.docker.distribution.manifest.v1+prettyjws", None),
        "huge": (b" " * (4 << 20) + manifest, OCI_MANIFEST, None),
    }).start()
    try:
        mapped = {fake.host: f"http://{fake.host}"}
        assert resolve_image(f"{fake.host}/app:honest", "all", ANONYMOUS, mapped).tags == {"honest": honest}
        for tag, words in (("claims-other", f"says the manifest is {other}"), ("index", f"sent for {other} hashes to"),
                           ("old", "schema 1"), ("huge", "more than")):
            refused = api_error(resolve_image, f"{fake.host}/app:{tag}", "all", ANONYMOUS, mapped)
            assert refused.status == 502 and f"registry {fake.host}" in refused.message and words in refused.message
    finally:
        fake.stop()


# --- files ---------------------------------------------------------------------------------------------------------

def test_a_file_is_one_registry_blob_of_its_digest(registry: Registry, registry_client: RegistryClient) -> None:
    data = os.urandom(12_345)
    name = unique("resolve/files")
    digest = registry_client.push_blob(name, data)
    url = f"http://{registry.host}/v2/{name}/blobs/{digest}"
    assert resolve_file(url, digest, {}, ANONYMOUS) == ResolvedImage(
        registry.host, name, {}, (), (Blob(digest, len(data)),), False, None)
    absent = "sha256:" + "0" * 64
    missing = api_error(resolve_file, url.replace(digest, absent), absent, {}, ANONYMOUS)
    assert missing.status == 502 and registry.host in missing.message
    elsewhere = api_error(resolve_file, f"http://{registry.host}/files/x.tar", digest, {}, ANONYMOUS)
    assert elsewhere.status == 400 and FILE_URL in elsewhere.message

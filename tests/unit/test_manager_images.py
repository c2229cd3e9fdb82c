"""The pure half of the preheat resolver: what a caller may name and where the manager then
goes, which platforms an index gives, what of a registry's answer is refused, and that
credentials show nowhere. No sockets."""

from __future__ import annotations

import hashlib
import json

import pytest

from damselfly.core.jobs import Blob
from damselfly.manager.errors import ApiError
from damselfly.manager.images import (FILE_URL, BadAnswer, Credentials, Platform, ResolvedImage, Target, blob_target,
                                      choose_entries, host_platform, image_target, manifest_blobs, manifest_digest,
                                      parse_platform, read_document, redact, resolve_file, resolve_image)
from damselfly.registry.rules import basic_authorization

DIGEST = "sha256:" + "ab" * 32
MAPPED = {"registry.corp": "http://10.0.0.5:5000", "docker.io": "https://hub-mirror.corp"}


# --- what a caller may name, and where the manager goes for it ----------------------------------------------------

@pytest.mark.parametrize("url, target", [
    ("127.0.0.1:5000/app:1", Target("127.0.0.1:5000", "https://127.0.0.1:5000", "app", "1")),
    ("ghcr.io/org/app", Target("ghcr.io", "https://ghcr.io", "org/app", "latest")),
    (f"ghcr.io/org/app@{DIGEST}", Target("ghcr.io", "https://ghcr.io", "org/app", DIGEST)),
    ("alpine:3.19", Target("docker.io", "https://hub-mirror.corp", "library/alpine", "3.19")),
    ("Registry.Corp/team/app:v2", Target("registry.corp", "http://10.0.0.5:5000", "team/app", "v2")),
    # Dragonfly's form: the manifest's URL; Docker Hub's API hosts are docker.io to peers
    ("https://index.docker.io/v2/library/alpine/manifests/3.19",
     Target("docker.io", "https://hub-mirror.corp", "library/alpine", "3.19")),
    ("https://quay.io/v2/org/app/manifests/" + DIGEST, Target("quay.io", "https://quay.io", "org/app", DIGEST)),
    ("http://127.0.0.1:5000/v2/a/b/manifests/t", Target("127.0.0.1:5000", "http://127.0.0.1:5000", "a/b", "t")),
    ("http://[::1]:5000/v2/a/manifests/t", Target("[::1]:5000", "http://[::1]:5000", "a", "t")),
    ("http://localhost:5000/v2/a/manifests/t", Target("localhost:5000", "http://localhost:5000", "a", "t")),
    ("HTTP://registry.corp/v2/a/manifests/t", Target("registry.corp", "http://10.0.0.5:5000", "a", "t")),
])
def test_an_image_url_names_the_registry_as_peers_do_and_where_the_manager_reaches_it(url: str, target: Target) -> None:
    assert image_target(url, MAPPED) == target


@pytest.mark.parametrize("url, words", [
    ("UPPER/Case:tag", "invalid"),
    ("ghcr.io/app@sha256:short", "digest"),
    (f"ghcr.io/app@sha512:{'ab' * 64}", "sha256"),
    ("ftp://ghcr.io/v2/app/manifests/1", "http or https"),
    ("https://ghcr.io/app:1", "path"),
    ("https://ghcr.io/v2/app/tags/list", "path"),
    ("https://ghcr.io/v2/app/manifests/1?ns=x", "query"),
    (f"https://ghcr.io/v2/app/blobs/{DIGEST}", "manifests"),
    ("https://ghcr.io/v2/UPPER/manifests/1", "repository"),
    ("https://ghcr.io/v2/app/manifests/bad%20tag", "tag"),
    ("https://bad_host/v2/app/manifests/1", "registry name"),
    # plain HTTP only to loopback or a registry in the manager's map
    ("http://10.0.0.7:5000/v2/app/manifests/1", "plain HTTP"),
    ("http://ghcr.io/v2/app/manifests/1", "plain HTTP"),
])
def test_an_image_url_that_is_none_or_asks_for_cleartext_elsewhere_is_refused(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        image_target(url, MAPPED)


def test_docker_hub_unmapped_is_its_api_host() -> None:
    assert image_target("alpine:3.19", {}).url == image_target("https://docker.io/v2/a/manifests/1", {}).url == (
        "https://registry-1.docker.io")


def test_a_bare_reference_takes_the_default_scheme_under_the_same_rule() -> None:
    """The tasks API's plain_http: cleartext to loopback or a mapped name only."""
    assert image_target("127.0.0.1:5000/app:1", {}, "http").url == "http://127.0.0.1:5000"
    assert image_target("registry.corp/app:1", MAPPED, "http").url == "http://10.0.0.5:5000"
    with pytest.raises(ValueError, match="plain HTTP .* not 192.0.2.7:5000"):
        image_target("192.0.2.7:5000/app:1", MAPPED, "http")


def test_a_password_in_the_url_is_refused_without_being_echoed() -> None:
    with pytest.raises(ValueError) as refused:
        image_target("https://alice:s3cret@ghcr.io/v2/app/manifests/1", {})
    assert "s3cret" not in str(refused.value) and "username and password" in str(refused.value)
    with pytest.raises(ApiError) as answered:
        resolve_image("https://alice:s3cret@ghcr.io/v2/app/manifests/1", "all", Credentials(), {})
    assert answered.value.status == 400 and "s3cret" not in answered.value.message


def test_a_file_is_a_registry_blob_url() -> None:
    assert blob_target(f"http://127.0.0.1:5000/v2/files/x/blobs/{DIGEST}", {}) == Target(
        "127.0.0.1:5000", "http://127.0.0.1:5000", "files/x", DIGEST)
    assert blob_target(f"https://registry.corp/v2/x/blobs/{DIGEST}", MAPPED).url == "http://10.0.0.5:5000"
    for url in ("https://example.com/file.tar", f"https://ghcr.io/v2/x/manifests/{DIGEST}",
                "https://ghcr.io/v2/x/blobs/latest", "ghcr.io/x:1", f"http://192.0.2.7/v2/x/blobs/{DIGEST}"):
        with pytest.raises(ValueError):
            blob_target(url, MAPPED)


@pytest.mark.parametrize("url, digest, words", [
    ("https://example.com/file.tar", DIGEST, FILE_URL),
    (f"http://192.0.2.7:5000/v2/x/blobs/{DIGEST}", DIGEST, "plain HTTP"),
    (f"https://ghcr.io/v2/x/blobs/{DIGEST}", "", "needs the file's digest"),
    (f"https://ghcr.io/v2/x/blobs/{DIGEST}", "md5:abc", "digest"),
    (f"https://ghcr.io/v2/x/blobs/{DIGEST}", "sha256:" + "cd" * 32, "not the digest"),
])
def test_a_file_preheat_is_refused_before_any_request(url: str, digest: str, words: str) -> None:
    with pytest.raises(ApiError) as refused:
        resolve_file(url, digest, MAPPED, Credentials())
    assert refused.value.status == 400 and words in refused.value.message


# --- platforms ----------------------------------------------------------------------------------------------------

def test_a_platform_is_all_or_os_and_architecture_with_a_variant() -> None:
    assert parse_platform("all") is None and parse_platform(" ALL ") is None
    assert parse_platform("linux/amd64") == Platform("linux", "amd64")
    assert parse_platform("Linux/ARM/v7") == Platform("linux", "arm", "v7")
    for text in ("", "linux", "linux/", "a/b/c/d", "linux/amd 64", "linux/../x", "*/*"):
        with pytest.raises(ValueError, match="os/architecture"):
            parse_platform(text)
    with pytest.raises(ApiError) as refused:
        resolve_image("ghcr.io/app:1", "linux", Credentials(), {})
    assert refused.value.status == 400 and refused.value.message.startswith("platform:")


def test_the_managers_own_platform_is_an_index_s_name_for_it() -> None:
    own = host_platform()
    assert own.os == "linux" and own.architecture in ("amd64", "arm64") and own.variant == ""


def _entry(os: str, arch: str, variant: str = "", **extra: object) -> dict:
    platform = {"os": os, "architecture": arch, **({"variant": variant} if variant else {})}
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + hashlib.sha256(
        json.dumps([os, arch, variant, extra]).encode()).hexdigest(), "size": 1, "platform": platform, **extra}


AMD64, ARM64, ARMV7 = _entry("linux", "amd64"), _entry("linux", "arm64", "v8"), _entry("linux", "arm", "v7")
NYDUS = _entry("linux", "amd64")
NYDUS["platform"]["os.features"] = ["nydus.remoteimage.v1"]
ATTESTATION = _entry("unknown", "unknown", annotations={"vnd.docker.reference.type": "attestation-manifest"})
INDEX = {"schemaVersion": 2, "manifests": [AMD64, NYDUS, ARM64, ARMV7, ATTESTATION]}


@pytest.mark.parametrize("platform, chosen", [
    (None, [AMD64, NYDUS, ARM64, ARMV7]),  # every platform, never an attestation
    (Platform("linux", "amd64"), [AMD64, NYDUS]),  # the OCI and the nydus manifest alike
    (Platform("linux", "arm64"), [ARM64]),  # no variant asked: any
    (Platform("linux", "arm", "v7"), [ARMV7]),
])
def test_an_index_gives_the_platforms_asked_for(platform: Platform | None, chosen: list[dict]) -> None:
    assert choose_entries(INDEX, platform) == chosen


def test_a_platform_the_index_lacks_is_the_callers_mistake_naming_those_it_has() -> None:
    with pytest.raises(ValueError) as absent:
        choose_entries(INDEX, Platform("linux", "arm", "v6"))
    assert str(absent.value) == "the index has no manifest for linux/arm/v6, only for linux/amd64, linux/arm64/v8, linux/arm/v7"
    for nonsense in ({}, {"manifests": "x"}, {"manifests": [1]}, {"manifests": [ATTESTATION]}):
        with pytest.raises(BadAnswer):
            choose_entries(nonsense, None)


# --- what of a registry's answer is refused -----------------------------------------------------------------------

def test_a_manifest_must_hash_to_the_digest_asked_for_and_the_one_claimed() -> None:
    body = b'{"schemaVersion": 2}'
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    assert manifest_digest(body, None, None) == digest == manifest_digest(body, digest, digest)
    with pytest.raises(BadAnswer, match="hashes to"):
        manifest_digest(body, DIGEST, None)
    with pytest.raises(BadAnswer, match=f"says the manifest is {DIGEST}"):
        manifest_digest(body, None, DIGEST)


@pytest.mark.parametrize("document, content_type, media_type, kind", [
    ({"mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}, "",
     "application/vnd.oci.image.index.v1+json", "index"),
    ({"mediaType": "application/vnd.docker.distribution.manifest.list.v2+json", "manifests": []}, "text/plain",
     "application/vnd.docker.distribution.manifest.list.v2+json", "index"),
    ({"schemaVersion": 2, "config": {}, "layers": []}, "application/vnd.oci.image.manifest.v1+json",
     "application/vnd.oci.image.manifest.v1+json", "manifest"),
    ({"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "config": {}, "layers": []}, "",
     "application/vnd.docker.distribution.manifest.v2+json", "manifest"),
    # no media type anywhere: told by its shape, recorded as OCI's
    ({"schemaVersion": 2, "manifests": []}, "application/json", "application/vnd.oci.image.index.v1+json", "index"),
    ({"schemaVersion": 2, "config": {}, "layers": []}, "", "application/vnd.oci.image.manifest.v1+json", "manifest"),
])
def test_a_manifest_is_an_image_manifest_or_an_index(document: dict, content_type: str, media_type: str,
                                                     kind: str) -> None:
    assert read_document(json.dumps(document).encode(), content_type) == (document, media_type, kind)


@pytest.mark.parametrize("body, content_type, words", [
    (b'{"schemaVersion": 1, "fsLayers": []}', "application/json", "schema 1"),
    (b'{"fsLayers": []}', "application/vnd.docker.distribution.manifest.v1+prettyjws", "schema 1"),
    (b"not json", "application/vnd.oci.image.manifest.v1+json", "not JSON"),
    (b"[]", "application/vnd.oci.image.manifest.v1+json", "not a JSON object"),
    (b'{"mediaType": "application/vnd.oci.artifact.manifest.v1+json", "blobs": []}', "", "neither"),
])
def test_what_is_no_manifest_a_pull_could_use_is_refused(body: bytes, content_type: str, words: str) -> None:
    with pytest.raises(BadAnswer, match=words):
        read_document(body, content_type)


def test_an_image_manifest_gives_its_config_and_layers_in_order() -> None:
    layer = {"mediaType": "application/vnd.oci.image.layer.nydus.blob.v1", "digest": "sha256:" + "cd" * 32, "size": 7}
    manifest = {"config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": DIGEST, "size": 3},
                "layers": [layer, {"digest": "sha256:" + "ef" * 32, "size": 0}]}
    assert manifest_blobs(manifest) == [Blob(DIGEST, 3, "application/vnd.oci.image.config.v1+json"),
                                        Blob("sha256:" + "cd" * 32, 7, "application/vnd.oci.image.layer.nydus.blob.v1"),
                                        Blob("sha256:" + "ef" * 32, 0, "")]
    for broken in ({"layers": []}, {"config": {"digest": DIGEST, "size": 1}},
                   {"config": {"digest": DIGEST}, "layers": []}, {"config": {"digest": DIGEST, "size": True}, "layers": []},
                   {"config": {"digest": "sha256:x", "size": 1}, "layers": []},
                   {"config": {"digest": DIGEST, "size": 1}, "layers": ["x"]}):
        with pytest.raises(BadAnswer):
            manifest_blobs(broken)


# --- credentials show nowhere ------------------------------------------------------------------------------------

def test_credentials_show_no_secret_in_their_repr_and_messages() -> None:
    credentials = Credentials("alice", "s3cret", {"Authorization": "Bearer t0ken", "X-Team": "blue"})
    shown = f"{credentials!r} {credentials} {[credentials]}"
    assert "alice" in shown and "X-Team" in shown
    assert not any(secret in shown for secret in ("s3cret", "t0ken", "blue"))
    basic = basic_authorization("alice", "s3cret")
    message = f"token service said s3cret\nand {basic} and {basic.removeprefix('Basic ')} and Bearer t0ken"
    assert redact(message, credentials) == "token service said *** and *** and *** and ***"
    assert Credentials().given is False and Credentials(headers={"X-Team": "blue"}).given is True  # any header may be a secret
    assert Credentials(headers={"authorization": "Basic eA=="}).given and Credentials("alice").given


def test_a_resolved_images_repr_hides_the_authorization() -> None:
    image = ResolvedImage("ghcr.io", "app", {}, (), (), True, "Basic YWxpY2U6czNjcmV0")
    assert "YWxpY2U6czNjcmV0" not in repr(image) and "ghcr.io" in repr(image)

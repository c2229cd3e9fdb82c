import json

import pytest

from damselfly.core.oci import (Digest, ImageRef, OCIError, error_body, is_digest_reference, registry_base_url,
                               validate_api_tail, validate_reference, validate_repository)


@pytest.mark.parametrize("name", ["a", "library/busybox", "a.b-c_d/e__f", "x/y/z/w", "a--b"])
def test_valid_names(name):
    assert validate_repository(name) == name


@pytest.mark.parametrize("name", ["", "A", "a/", "/a", "a//b", "a/../b", "..", "a_", "-a", "a" * 256, "a b", "a\n"])
def test_invalid_names(name):
    with pytest.raises(OCIError) as info:
        validate_repository(name)
    assert (info.value.status, info.value.code) == (400, "NAME_INVALID")


def test_digest_round_trip_and_hasher():
    text = "sha256:" + "0123456789abcdef" * 4
    digest = Digest.parse(text)
    assert str(digest) == text and digest.hasher().name == "sha256"
    assert Digest.parse("sha512:" + "f" * 128).algorithm == "sha512"


@pytest.mark.parametrize("text", ["", "sha256", "sha256:", "sha256:" + "a" * 63, "sha256:" + "A" * 64,
                                  "md5:" + "a" * 32, "sha256:" + "g" * 64, "sha256:../../etc/passwd" + "a" * 41])
def test_invalid_digests(text):
    with pytest.raises(OCIError) as info:
        Digest.parse(text)
    assert info.value.code == "DIGEST_INVALID"


def test_error_body_shape():
    assert json.loads(error_body("BLOB_UNKNOWN", "no such blob")) == {
        "errors": [{"code": "BLOB_UNKNOWN", "message": "no such blob", "detail": None}]}
    assert is_digest_reference("sha256:abc") and not is_digest_reference("latest")


@pytest.mark.parametrize("reference", ["latest", "v1.2.3-rc_1", "_x", "a" * 128, "sha256:" + "0" * 64])
def test_valid_references(reference):
    assert validate_reference(reference) == reference


@pytest.mark.parametrize("reference,code", [("-notatag", "TAG_INVALID"), (".x", "TAG_INVALID"), ("a" * 129, "TAG_INVALID"),
                                            ("latest\n", "TAG_INVALID"), ("", "TAG_INVALID"), ("l\u0101test", "TAG_INVALID"),
                                            ("sha256:1234", "DIGEST_INVALID")])
def test_invalid_references(reference, code):
    with pytest.raises(OCIError) as info:
        validate_reference(reference)
    assert (info.value.status, info.value.code) == (400, code)


@pytest.mark.parametrize("kind, rest", [
    ("tags", "../../../../internal"),
    ("tags", "list?/../../internal"),
    ("referrers", "../../internal"),
    ("blobs", "uploads/../../../../internal"),
    ("blobs", "uploads/.."),
    ("blobs", "uploads/a/b"),
    ("blobs", "../x"),
    ("manifests", "../../internal"),
])
def test_a_path_passed_upstream_cannot_climb_out_of_the_repository(kind: str, rest: str) -> None:
    with pytest.raises(OCIError) as refused:
        validate_api_tail(kind, rest)
    assert 400 <= refused.value.status < 500


@pytest.mark.parametrize("kind, rest", [
    ("tags", "list"), ("referrers", "sha256:" + "a" * 64), ("blobs", "uploads/"), ("blobs", "uploads"),
    ("blobs", "uploads/0f3c-uuid_with=padding"), ("blobs", "sha256:" + "b" * 64), ("manifests", "latest"),
])
def test_registry_api_tails_that_pass(kind: str, rest: str) -> None:
    validate_api_tail(kind, rest)


DIGEST = "sha256:" + "c" * 64


@pytest.mark.parametrize("text, registry, repository, reference", [
    ("busybox", "docker.io", "library/busybox", "latest"),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36"),
    ("user/app:v1", "docker.io", "user/app", "v1"),
    ("ghcr.io/org/app", "ghcr.io", "org/app", "latest"),
    ("localhost:5000/app:dev", "localhost:5000", "app", "dev"),
    ("localhost/app", "localhost", "app", "latest"),
    ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000", "a/b/c", "t"),
    (f"busybox@{DIGEST}", "docker.io", "library/busybox", DIGEST),
    (f"r.example/app@{DIGEST}", "r.example", "app", DIGEST),
])
def test_image_references(text: str, registry: str, repository: str, reference: str) -> None:
    ref = ImageRef.parse(text)
    assert ref == ImageRef(registry, repository, reference)
    assert ImageRef.parse(str(ref)) == ref


@pytest.mark.parametrize("text", ["", "Busybox", "busybox:", "busybox@sha256:abc", "busybox:t\u00e1g",
                                  "busybox:latest\n", "r.example/app:1@" + DIGEST, "a//b", "r.example/"])
def test_invalid_image_references_say_so(text: str) -> None:
    with pytest.raises(ValueError, match="invalid image reference"):
        ImageRef.parse(text)


@pytest.mark.parametrize("registry, plain_http, url", [
    ("docker.io", False, "https://registry-1.docker.io"),
    ("docker.io", True, "https://registry-1.docker.io"),  # Docker Hub speaks https only
    ("r.example:5000", False, "https://r.example:5000"),
    ("127.0.0.1:5000", True, "http://127.0.0.1:5000"),
])
def test_registry_base_url(registry: str, plain_http: bool, url: str) -> None:
    assert registry_base_url(registry, plain_http) == url

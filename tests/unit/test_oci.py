import json

import pytest

from damselfly.lib.oci import (Digest, OCIError, error_body, is_digest_reference, validate_api_tail, validate_reference,
                               validate_repository)


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

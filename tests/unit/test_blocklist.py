"""The block list's matching rules: bare digests everywhere, references in their repository,
tags for manifests only, a reference without tag or digest for its whole repository."""

from __future__ import annotations

import pytest

from damselfly.core.blocklist import BlockList, BlockRule, canonical_registry, refusal

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
LOCAL = "127.0.0.1:5000"


def blocks(entries: list[str]) -> BlockList:
    block_list, problems = BlockList.parse(entries)
    assert problems == []
    return block_list


def test_a_bare_digest_is_refused_as_a_blob_or_a_manifest_anywhere() -> None:
    block_list = blocks([A])
    assert block_list.blob(LOCAL, "team/app", A) == A
    assert block_list.blob("ghcr.io", "other", A) == A
    assert block_list.manifest("docker.io", "library/nginx", A) == A
    assert block_list.blob(LOCAL, "team/app", B) is None
    assert block_list.manifest(LOCAL, "team/app", "latest") is None


def test_a_reference_by_digest_is_refused_in_its_repository_only() -> None:
    entry = f"{LOCAL}/team/app@{A}"
    block_list = blocks([entry])
    assert block_list.blob(LOCAL, "team/app", A) == entry
    assert block_list.manifest(LOCAL, "team/app", A) == entry
    assert block_list.blob(LOCAL, "team/other", A) is None
    assert block_list.blob("ghcr.io", "team/app", A) is None
    assert block_list.manifest(LOCAL, "team/app", "v1") is None


def test_a_tag_refuses_its_manifest_and_no_blob() -> None:
    entry = f"{LOCAL}/team/app:v1"
    block_list = blocks([entry])
    assert block_list.manifest(LOCAL, "team/app", "v1") == entry
    assert block_list.manifest(LOCAL, "team/app", "v2") is None
    assert block_list.manifest(LOCAL, "team/app", A) is None
    assert block_list.blob(LOCAL, "team/app", A) is None


def test_a_reference_without_tag_or_digest_refuses_the_whole_repository() -> None:
    entry = f"{LOCAL}/team/app"
    block_list = blocks([entry])
    assert block_list.manifest(LOCAL, "team/app", "latest") == entry
    assert block_list.manifest(LOCAL, "team/app", A) == entry
    assert block_list.blob(LOCAL, "team/app", B) == entry
    assert block_list.blob(LOCAL, "team/app-2", B) is None


def test_latest_written_out_is_a_tag() -> None:
    block_list = blocks([f"{LOCAL}/team/app:latest"])
    assert block_list.manifest(LOCAL, "team/app", "latest") is not None
    assert block_list.manifest(LOCAL, "team/app", "v1") is None


@pytest.mark.parametrize("entry", ["nginx:1.27", "docker.io/nginx:1.27", "docker.io/library/nginx:1.27",
                                   "Docker.io/library/nginx:1.27"])
def test_docker_hub_names_follow_dockers_rules(entry: str) -> None:
    block_list = blocks([entry])
    for registry in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        assert block_list.manifest(registry, "library/nginx", "1.27") == entry


def test_registry_names_compare_in_lower_case() -> None:
    assert canonical_registry("GHCR.io") == "ghcr.io"
    assert blocks(["GHCR.io/team/app:v1"]).manifest("ghcr.io", "team/app", "v1") is not None


def test_a_registry_with_a_port_is_not_a_tag() -> None:
    rule = BlockRule.parse(f"{LOCAL}/app")
    assert (rule.registry, rule.repository, rule.tag, rule.digest) == (LOCAL, "app", None, None)


def test_entries_it_cannot_read_are_reported_and_the_rest_kept() -> None:
    block_list, problems = BlockList.parse(["not a reference!", A, "repo@sha256:abc"])
    assert len(block_list) == 1 and block_list.blob(LOCAL, "x", A) == A
    assert len(problems) == 2 and "not a reference!" in problems[0]


def test_the_refusal_is_one_line_naming_the_entry() -> None:
    line = refusal(f"blob {A}", A)
    assert "\n" not in line and A in line and "block list" in line

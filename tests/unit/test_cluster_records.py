"""The pure parts of the cluster's tag records: their wire form, what a manifest lists, and
the in-process KV's bound."""

from __future__ import annotations

import asyncio
import json

import pytest

from damselfly.core.wire import (MAX_INDEX_CHILDREN, ManifestRecord, TagConfirm, TagPublication, TagRecord,
                                 WireError)
from damselfly.lib.kv import MemoryKV
from damselfly.mirror.manifests import child_manifests, descriptor_sizes

DIGEST = "sha256:" + "a" * 64
MANIFEST = ManifestRecord("registry.test:5000", "team/app", DIGEST, 1234, "application/vnd.oci.image.manifest.v1+json",
                          private=False)


def test_a_publication_goes_over_the_wire_and_back() -> None:
    publication = TagPublication("seed-1", TagRecord("v1", MANIFEST, 1700000000.5), (MANIFEST,))
    assert TagPublication.from_json(json.loads(json.dumps(publication.to_json()))) == publication
    confirm = TagConfirm("registry.test:5000", "team/app", "v1", "Bearer x")
    assert TagConfirm.from_json(confirm.to_json()) == confirm


@pytest.mark.parametrize(("field", "value", "why"), [
    ("registry", "http://registry.test", "registry name"),
    ("repository", "Team/App", "repository"),
    ("tag", DIGEST, "not a digest"),
    ("tag", "bad tag", "invalid tag"),
    ("digest", "sha256:abc", "task id"),
    ("size", 4 * 1024 * 1024 + 1, "within"),
    ("size", 0, "within"),
    ("private", "no", "true or false"),
    ("resolved_at", -1, ">= 0"),
])
def test_a_malformed_tag_record_is_refused(field: str, value: object, why: str) -> None:
    record = {**TagRecord("v1", MANIFEST, 1.0).to_json(), field: value}
    with pytest.raises(WireError, match=why):
        TagRecord.from_json(record)


def test_a_publication_carries_an_index_and_at_most_its_bounded_children() -> None:
    record = TagRecord("v1", MANIFEST, 1.0).to_json()
    too_many = {"host_id": "seed-1", "tag": record, "manifests": [MANIFEST.to_json()] * (MAX_INDEX_CHILDREN + 2)}
    with pytest.raises(WireError, match="more than"):
        TagPublication.from_json(too_many)


def test_what_a_manifest_lists() -> None:
    layer, config = "sha256:" + "b" * 64, "sha256:" + "c" * 64
    image = json.dumps({"config": {"digest": config, "size": 7}, "layers": [
        {"digest": layer, "size": 42}, {"digest": "md5:nope", "size": 1}, {"digest": layer[:-1] + "d", "size": -1},
        "junk"]}).encode()
    assert descriptor_sizes(image) == {config: 7, layer: 42}
    index = json.dumps({"manifests": [{"digest": DIGEST}, {"digest": 3}, {}]}).encode()
    assert [str(d) for d in child_manifests(index)] == [DIGEST]
    for junk in (b"not json", b"[1, 2]", b'{"layers": 3}'):
        assert descriptor_sizes(junk) == {} and child_manifests(junk) == []


def test_the_in_process_kv_keeps_at_most_its_bound_dropping_the_least_recently_written() -> None:
    async def scenario() -> list[bytes | None]:
        kv = MemoryKV(max_values=2)
        await kv.put("a", b"1", 60)
        await kv.put("b", b"2", 60)
        await kv.put("a", b"3", 60)  # written again: now the most recent
        await kv.put("c", b"4", 60)
        return [await kv.get(key) for key in ("a", "b", "c")]

    assert asyncio.run(scenario()) == [b"3", None, b"4"]

"""The media type a host keeps for each preheated manifest (and for each tag's resolution,
served in outages as Content-Type) is signed with its digest: a placement that relabels a
manifest is refused. (An attacker's review found it came from the unsigned part.)"""

from __future__ import annotations

import base64
import hashlib
import json
import time

import pytest

from damselfly.core.jobs import JobError, ManifestPlacement, SignedStatement, Statement
from damselfly.lib.signed import Signer, Verifier

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def test_whoever_writes_redis_cannot_change_the_media_type_a_tag_is_served_with() -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    key = b"k" * 32
    statement = Statement(7, "registry.test:5000", "team/app", False, time.time() + 60, {"v1": digest},
                          {digest: OCI_INDEX}, {})
    signed = SignedStatement(statement, Signer.with_shared_key(key).sign(statement.canonical()))
    document = {"signed": signed.to_json(), "manifests": [
        {"digest": digest, "media_type": "application/vnd.docker.distribution.manifest.v1+prettyjws",
         "body": base64.b64encode(body).decode()}]}
    with pytest.raises(JobError, match="not one the statement names"):  # the media type is signed with the digest
        ManifestPlacement.from_json(json.loads(json.dumps(document)))
    document["manifests"][0]["media_type"] = OCI_INDEX
    placement = ManifestPlacement.from_json(document)
    Verifier(shared_key=key).verify(placement.signed.statement.canonical(), placement.signed.signature)
    assert placement.signed.statement.manifests[digest] == OCI_INDEX

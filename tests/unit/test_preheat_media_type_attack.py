"""A preheat's signed statement names digests, not media types: the media type a host keeps
for each manifest (and for each tag's resolution, served in outages as Content-Type) comes
from the unsigned part of the placement. The test asserts the SAFE behaviour."""

from __future__ import annotations

import base64
import hashlib
import json
import time

from damselfly.core.jobs import ManifestPlacement, SignedStatement, Statement
from damselfly.lib.signed import Signer, Verifier

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def test_whoever_writes_redis_cannot_change_the_media_type_a_tag_is_served_with() -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    key = b"k" * 32
    statement = Statement(7, "registry.test:5000", "team/app", False, time.time() + 60, {"v1": digest}, (digest,), {})
    signed = SignedStatement(statement, Signer.with_shared_key(key).sign(statement.canonical()))
    document = {"signed": signed.to_json(), "manifests": [
        {"digest": digest, "media_type": "application/vnd.docker.distribution.manifest.v1+prettyjws",
         "body": base64.b64encode(body).decode()}]}
    placement = ManifestPlacement.from_json(json.loads(json.dumps(document)))
    Verifier(shared_key=key).verify(placement.signed.statement.canonical(), placement.signed.signature)  # accepted
    kept_type = {m.digest: m.media_type for m in placement.manifests}[digest]
    assert kept_type == OCI_INDEX, f"a host keeps {digest} (tag v1) as {kept_type!r}: nothing signed says so"

"""Preheat jobs as pure rules: where a job goes, what a queue may hand a worker or a host,
how a job's state follows its clusters, and credentials sealed for one seed peer."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from damselfly.core.jobs import (BlobProgress, HostProgress, JobError, JobProgress, Manifest, ManifestPlacement,
                                 Member, PreheatJob, Selection, SignedStatement, Statement, choose_hosts,
                                 missing_summary, overall_state)
from damselfly.lib.sealed import (SealError, load_private_key, open_on_host, public_key_of_certificate,
                                  seal_for_host)
from damselfly.lib.signed import Signer, Verifier
from testkit.tls import tls_dir

BODY = b'{"schemaVersion":2}'
DIGEST = "sha256:" + hashlib.sha256(BODY).hexdigest()
BLOB = "sha256:" + "a" * 64
OCI = "application/vnd.oci.image.manifest.v1+json"

MEMBERS = [Member("seed-b", "https://10.0.0.2:8001", True, load=3), Member("seed-a", "https://10.0.0.1:8001", True,
                                                                           load=5),
           *(Member(f"peer-{i}", f"https://10.0.1.{i}:8001", False) for i in range(1, 11))]


def ids(members: list[Member]) -> list[str]:
    return [m.host_id for m in members]


def test_single_seed_peer_takes_the_least_loaded_seed_and_no_peer() -> None:
    seeds, peers = choose_hosts(Selection("single_seed_peer"), MEMBERS)
    assert ids(seeds) == ["seed-b"] and peers == []


def test_all_seed_peers_takes_every_seed() -> None:
    seeds, peers = choose_hosts(Selection("all_seed_peers"), MEMBERS)
    assert ids(seeds) == ["seed-a", "seed-b"] and peers == []


def test_all_peers_fills_the_seeds_first_then_the_peers_the_narrowing_names() -> None:
    seeds, peers = choose_hosts(Selection("all_peers"), MEMBERS)
    assert ids(seeds) == ["seed-a", "seed-b"] and len(peers) == 10
    assert ids(choose_hosts(Selection("all_peers", count=3), MEMBERS)[1]) == ["peer-1", "peer-10", "peer-2"]
    assert len(choose_hosts(Selection("all_peers", percentage=25), MEMBERS)[1]) == 3  # 2.5 rounded up
    only = choose_hosts(Selection("all_peers", ips=("10.0.1.4", "10.0.1.7", "192.0.2.1")), MEMBERS)[1]
    assert ids(only) == ["peer-4", "peer-7"]
    assert choose_hosts(Selection("all_peers"), [m for m in MEMBERS if not m.is_seed])[0] == []


def statement(**changes: object) -> Statement:
    fields: dict[str, object] = dict(job_id=7, registry="127.0.0.1:5000", repository="team/app", private=True,
                                     deadline=1e9, tags={"v1": DIGEST}, manifests={DIGEST: OCI}, blobs={BLOB: 123})
    fields.update(changes)
    return Statement(**fields)  # type: ignore[arg-type]


SIGNER = Signer.with_shared_key(b"k" * 32)


def signed(**changes: object) -> SignedStatement:
    said = statement(**changes)
    return SignedStatement(said, SIGNER.sign(said.canonical()))


def job(**changes: object) -> PreheatJob:
    return PreheatJob(id=7, cluster_id=1, signed=signed(**changes),
                      manifests=(Manifest(DIGEST, OCI, BODY),),
                      selection=Selection("all_peers", count=2, ips=("10.0.0.1",)), sealed={"seed-a": "sealed:x"})


def test_a_job_crosses_the_board_unchanged() -> None:
    original = job()
    assert PreheatJob.from_json(original.to_json()) == original
    assert original.statement.total_bytes == 123


@pytest.mark.parametrize("damage", [
    lambda d: d.pop("signed"),
    lambda d: d.update(id=-1),
    lambda d: d["signed"]["statement"].update(repository="../etc"),
    lambda d: d["signed"]["statement"].update(registry="http://evil.example"),
    lambda d: d["signed"]["statement"].update(private="no"),
    lambda d: d["selection"].update(scope="everyone"),
    lambda d: d["signed"]["statement"]["blobs"].update({"sha256:short": 1}),
    lambda d: d["manifests"][0].update(body=base64.b64encode(b"other bytes").decode()),
    lambda d: d["manifests"][0].update(body="not base64!"),
    lambda d: d["signed"]["statement"].update(tags=["v1"]),
    lambda d: d["signed"]["statement"].update(job_id=8),
    lambda d: d.update(manifests=[]),
])
def test_a_board_that_hands_over_garbage_gets_a_job_error_not_a_crash(damage) -> None:
    document = job().to_json()
    damage(document)
    with pytest.raises(JobError):
        PreheatJob.from_json(document)


def test_only_what_the_manager_signed_is_taken() -> None:
    verifier = Verifier(shared_key=b"k" * 32)
    good = signed()
    verifier.verify(good.statement.canonical(), good.signature)
    for changed in [statement(registry="capture.example"), statement(private=False),
                    statement(tags={"v1": BLOB}, manifests={DIGEST: OCI, BLOB: OCI}),
                    statement(manifests={DIGEST: "application/vnd.oci.image.index.v1+json"}), statement(deadline=2e9)]:
        with pytest.raises(SealError):
            verifier.verify(changed.canonical(), good.signature)
    with pytest.raises(SealError):
        Verifier(shared_key=b"other key" * 4).verify(good.statement.canonical(), good.signature)
    with pytest.raises(SealError, match="no 'hmac' signatures"):
        Verifier().verify(good.statement.canonical(), good.signature)  # a daemon without identity takes none


def test_a_manager_certificate_signs_and_any_other_member_certificate_does_not() -> None:
    manager, peer = tls_dir("sign-manager", "manager"), tls_dir("sign-peer", "peer")
    verifier = Verifier.of_tls_dir(peer)
    said = statement()
    verifier.verify(said.canonical(), Signer.of_tls_dir(manager).sign(said.canonical()))
    with pytest.raises(SealError, match="not a manager"):
        verifier.verify(said.canonical(), Signer.of_tls_dir(peer).sign(said.canonical()))
    forged = Signer.of_tls_dir(manager).sign(statement(private=False).canonical())
    with pytest.raises(SealError, match="does not match"):
        verifier.verify(said.canonical(), forged)


def test_a_host_refuses_manifests_the_statement_does_not_name() -> None:
    placement = ManifestPlacement(signed(), (Manifest(DIGEST, OCI, BODY),))
    assert ManifestPlacement.from_json(placement.to_json()) == placement
    relabelled = placement.to_json()
    relabelled["manifests"][0]["media_type"] = "application/vnd.oci.image.index.v1+json"
    with pytest.raises(JobError, match="not one the statement names"):  # the type is signed too
        ManifestPlacement.from_json(relabelled)
    other = b'{"schemaVersion":2,"other":1}'
    stranger = ManifestPlacement(signed(), (Manifest("sha256:" + hashlib.sha256(other).hexdigest(), OCI, other),))
    with pytest.raises(JobError, match="not one the statement names"):
        ManifestPlacement.from_json(stranger.to_json())
    with pytest.raises(JobError, match="not among the manifests"):
        Statement.from_json(dict(statement().to_json(), tags={"v1": BLOB}))


def test_a_job_ends_as_its_clusters_did() -> None:
    assert overall_state([]) == "PENDING"
    assert overall_state(["PENDING", "PENDING"]) == "PENDING"
    assert overall_state(["SUCCESS", "PENDING"]) == "RUNNING"
    assert overall_state(["SUCCESS", "SUCCESS"]) == "SUCCESS"
    assert overall_state(["FAILURE", "RUNNING"]) == "RUNNING"  # the other cluster may still place what it can
    assert overall_state(["FAILURE", "SUCCESS"]) == "FAILURE"
    assert overall_state(["CANCELLED", "FAILURE"]) == "CANCELLED"


def test_a_timed_out_job_says_what_is_missing() -> None:
    done = BlobProgress(DIGEST, 10, "manifest", (HostProgress("a", "done"),))
    missing = BlobProgress(BLOB, 10, "blob", (HostProgress("a", "done"), HostProgress("b", "fetching")))
    summary = missing_summary(JobProgress("RUNNING", (done, missing)))
    assert summary.startswith("1 of 2 not placed") and "on 1 hosts" in summary


def seed_identity(name: str):
    directory = tls_dir(name, "seed")
    certificate = x509.load_pem_x509_certificate((directory / "cert.pem").read_bytes())
    der = certificate.public_bytes(serialization.Encoding.DER)
    return public_key_of_certificate(der), load_private_key((directory / "key.pem").read_bytes())


def test_credentials_sealed_for_one_seed_open_only_there_and_only_for_that_job() -> None:
    public_a, private_a = seed_identity("seal-a")
    _, private_b = seed_identity("seal-b")
    context = statement().credentials_context("seal-a")
    sealed = seal_for_host("Basic c2VjcmV0", public_a, context)
    assert "c2VjcmV0" not in sealed
    assert open_on_host(sealed, private_a, context) == "Basic c2VjcmV0"
    for key, other in [(private_b, context), (private_a, statement(job_id=8).credentials_context("seal-a")),
                       (private_a, statement().credentials_context("seal-b")),
                       (private_a, statement(registry="capture.example").credentials_context("seal-a")),
                       (private_a, statement(repository="other/app").credentials_context("seal-a")),
                       (private_a, statement(deadline=2e9).credentials_context("seal-a"))]:
        with pytest.raises(SealError):
            open_on_host(sealed, key, other)
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(SealError):
        open_on_host(tampered, private_a, context)


def test_clear_credentials_open_only_where_there_is_no_cluster_identity() -> None:
    public_a, private_a = seed_identity("seal-a")
    clear = seal_for_host("Basic c2VjcmV0", None, "")
    assert open_on_host(clear, None, "any") == "Basic c2VjcmV0"
    with pytest.raises(SealError, match="with a cluster identity"):
        open_on_host(clear, private_a, "any")  # a keyed host takes nothing that crossed in clear
    with pytest.raises(SealError):
        open_on_host(seal_for_host("x", public_a, "c"), None, "c")

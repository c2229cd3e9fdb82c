"""The manager's pure parts, without sockets: cluster matching, component state, the RBAC
decision, component admission, the sign-in limiter, tokens and passwords, the request
models' bounds, the database URL rule, and the OpenAPI document built from the route table."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from damselfly.manager import credentials
from damselfly.manager.access import PERSONAL, SESSION, Principal, Verdict, admit_component, decide
from damselfly.manager.api import ROUTES, describe_validation
from damselfly.manager.database import database_url
from damselfly.manager.limits import FailureLimiter
from damselfly.manager.matching import Candidate, HostFacts, Scopes, choose_cluster, component_state, match_score
from damselfly.manager.models import (ClusterCreate, ClusterUpdate, ComponentRegistration, SignIn, TaskPeer,
                                      TokenCreate, UserCreate)
from damselfly.manager.routes import ACCESS_EXTENSION, Access, openapi_document
from damselfly.manager.tasks import furthest

# --- cluster matching ----------------------------------------------------------------------------------------


def test_a_cluster_without_scopes_takes_every_host() -> None:
    assert choose_cluster([Candidate(1)], HostFacts()) == 1
    assert choose_cluster([Candidate(1)], HostFacts("idc-a", "eu|fr", "10.0.0.1")) == 1


def test_no_cluster_matching_means_none_so_the_default_cluster() -> None:
    assert choose_cluster([], HostFacts("a")) is None
    assert choose_cluster([Candidate(1, Scopes(idc="b"))], HostFacts("a", "x", "10.0.0.1")) is None


def test_network_beats_idc_beats_location_beats_unscoped() -> None:
    host = HostFacts(idc="idc-a", location="eu|fr|paris", ip="10.1.2.3")
    clusters = [Candidate(1), Candidate(2, Scopes(location="eu")), Candidate(3, Scopes(idc="idc-a")),
                Candidate(4, Scopes(cidrs=("10.0.0.0/8",)))]
    assert choose_cluster(clusters, host) == 4
    assert choose_cluster(clusters[:3], host) == 3
    assert choose_cluster(clusters[:2], host) == 2


def test_the_longer_prefix_and_the_deeper_location_win() -> None:
    host = HostFacts(location="eu|fr|paris", ip="10.1.2.3")
    assert choose_cluster([Candidate(1, Scopes(cidrs=("10.0.0.0/8",))),
                           Candidate(2, Scopes(cidrs=("10.1.0.0/16",)))], host) == 2
    assert choose_cluster([Candidate(1, Scopes(location="eu")), Candidate(2, Scopes(location="eu|fr"))], host) == 2


def test_a_location_prefix_matches_whole_parts_only() -> None:
    assert match_score(Scopes(location="eu|fr"), HostFacts(location="eu|fr")) is not None
    assert match_score(Scopes(location="eu|fr"), HostFacts(location="eu|france")) is None
    assert match_score(Scopes(location="eu|fr|paris"), HostFacts(location="eu|fr")) is None


def test_idc_scopes_list_several_and_ignore_case() -> None:
    assert match_score(Scopes(idc="a|B"), HostFacts(idc="b")) is not None
    assert match_score(Scopes(idc="a|b"), HostFacts(idc="c")) is None


def test_addresses_of_the_other_family_or_malformed_never_match() -> None:
    assert match_score(Scopes(cidrs=("10.0.0.0/8",)), HostFacts(ip="::1")) is None
    assert match_score(Scopes(cidrs=("10.0.0.0/8",)), HostFacts(ip="not an address")) is None


def test_among_equals_the_oldest_cluster_wins() -> None:
    assert choose_cluster([Candidate(7), Candidate(3), Candidate(5)], HostFacts()) == 3


def test_component_state_flips_after_inactive_after() -> None:
    seen = datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert component_state(seen, seen + timedelta(seconds=15), 15) == "active"
    assert component_state(seen, seen + timedelta(seconds=15.001), 15) == "inactive"


# --- access ----------------------------------------------------------------------------------------------------


def _principal(role: str = "root", kind: str = SESSION, scopes: tuple[str, ...] = ()) -> Principal:
    return Principal(user_id=1, user_name="u", role=role, token_kind=kind, token_id=1,
                     token_name=None if kind == SESSION else "t", scopes=frozenset(scopes))


@pytest.mark.parametrize(("access", "scope", "principal", "verdict"), [
    (Access.PUBLIC, None, None, Verdict.ALLOW),
    (Access.COMPONENT, None, None, Verdict.ALLOW),
    (Access.READ, None, None, Verdict.UNAUTHENTICATED),
    (Access.ROOT, "cluster", None, Verdict.UNAUTHENTICATED),
    (Access.READ, None, _principal("guest"), Verdict.ALLOW),
    (Access.READ, None, _principal(kind=PERSONAL, scopes=("job",)), Verdict.ALLOW),
    (Access.ROOT, None, _principal("guest"), Verdict.FORBIDDEN),
    (Access.ROOT, "cluster", _principal("guest"), Verdict.FORBIDDEN),
    (Access.ROOT, None, _principal(), Verdict.ALLOW),
    (Access.ROOT, "cluster", _principal(), Verdict.ALLOW),
    (Access.ROOT, "cluster", _principal(kind=PERSONAL, scopes=("cluster",)), Verdict.ALLOW),
    (Access.ROOT, "cluster", _principal(kind=PERSONAL, scopes=("job",)), Verdict.FORBIDDEN),
    (Access.ROOT, None, _principal(kind=PERSONAL, scopes=("cluster", "job")), Verdict.FORBIDDEN),
    # A token is never more than its owner: a root demoted to guest takes its tokens along.
    (Access.ROOT, "cluster", _principal("guest", PERSONAL, ("cluster",)), Verdict.FORBIDDEN),
])
def test_rbac_decisions(access: Access, scope: str | None, principal: Principal | None, verdict: Verdict) -> None:
    decision = decide(access, scope, principal)
    assert decision.verdict is verdict
    assert decision.allowed == (verdict is Verdict.ALLOW)
    assert decision.allowed or decision.reason


def test_components_without_tls_only_from_loopback() -> None:
    assert admit_component(False, None, frozenset(), True, "peer", "h").allowed
    refused = admit_component(False, None, frozenset(), False, "peer", "h")
    assert refused.verdict is Verdict.FORBIDDEN and "loopback" in refused.reason


def test_components_with_tls_need_a_certificate_of_their_role_and_name() -> None:
    assert not admit_component(True, None, frozenset(), True, "peer", "h").allowed  # loopback is not enough
    assert admit_component(True, "h", frozenset({"peer"}), False, "peer", "h").allowed
    assert admit_component(True, "h", frozenset({"seed", "scheduler"}), False, "seed-peer", "h").allowed
    assert not admit_component(True, "h", frozenset({"peer"}), False, "scheduler", "h").allowed
    assert not admit_component(True, "h", frozenset({"peer"}), False, "peer", "other").allowed
    assert admit_component(True, "h", frozenset({"peer"}), False, None, None).allowed  # before the body is read


# --- sign-in limits ---------------------------------------------------------------------------------------------


def test_five_failures_a_minute_then_refused_until_the_oldest_leaves() -> None:
    now = [0.0]
    limiter = FailureLimiter(5, 60, clock=lambda: now[0])
    for _ in range(5):
        assert limiter.retry_after("name:root", "address:a") == 0
        limiter.record_failure("name:root", "address:a")
        now[0] += 1
    assert limiter.retry_after("name:root") == pytest.approx(55)
    assert limiter.retry_after("address:a") == pytest.approx(55)
    assert limiter.retry_after("name:other", "address:b") == 0
    now[0] = 60.5
    assert limiter.retry_after("name:root") == 0


def test_a_success_forgives_its_own_attempt_only() -> None:
    limiter = FailureLimiter(2, 60, clock=lambda: 0.0)
    limiter.record_failure("k")
    limiter.record_failure("k")
    limiter.forgive("k")
    assert limiter.retry_after("k") == 0
    limiter.record_failure("k")
    assert limiter.retry_after("k") > 0


def test_the_limiter_keeps_a_bounded_number_of_keys() -> None:
    limiter = FailureLimiter(1, 60, clock=lambda: 0.0, max_keys=10)
    for n in range(100):
        limiter.record_failure(f"name:{n}")
    assert len(limiter._failures) == 10
    assert limiter.retry_after("name:99") > 0


# --- credentials ------------------------------------------------------------------------------------------------


def test_tokens_are_random_prefixed_and_stored_only_as_a_hash() -> None:
    session, personal = credentials.new_token(SESSION), credentials.new_token(PERSONAL)
    assert session.startswith("dfs_") and personal.startswith("dfp_") and len(personal) > 40
    assert credentials.new_token(SESSION) != session
    digest = credentials.token_hash(personal)
    assert digest == credentials.token_hash(personal) and personal not in digest and len(digest) == 64


def test_passwords_are_argon2_and_an_unknown_user_never_matches() -> None:
    stored = credentials.hash_password("correct horse battery")
    assert stored.startswith("$argon2id$")
    assert credentials.verify_password(stored, "correct horse battery")
    assert not credentials.verify_password(stored, "wrong horse battery")
    assert not credentials.verify_password(None, "damselfly decoy password")
    assert not credentials.verify_password("not a hash", "x")


# --- request models -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "body"), [
    (ClusterCreate, {"name": "a", "extra": 1}),
    (ClusterCreate, {"name": "bad\x00name"}),
    (ClusterCreate, {"name": ""}),
    (ClusterCreate, {"name": "x" * 65}),
    (ClusterCreate, {"name": "a", "config": {"upload_rate": 0}}),
    (ClusterCreate, {"name": "a", "config": {"upload_rate": 1 << 63}}),
    (ClusterCreate, {"name": "a", "config": {"candidate_parent_limit": 0}}),
    (ClusterCreate, {"name": "a", "config": {"block_list": ["Not A Ref!"]}}),
    (ClusterCreate, {"name": "a", "scopes": {"cidrs": ["10.0.0.0/33"]}}),
    (ClusterCreate, {"name": "a", "scopes": {"idc": "a\nb"}}),
    (UserCreate, {"name": "guest", "password": "short", "role": "guest"}),
    (UserCreate, {"name": "guest", "password": "long enough password", "role": "admin"}),
    (TokenCreate, {"name": "t", "scopes": [], "expires_at": "2099-01-01T00:00:00Z"}),
    (TokenCreate, {"name": "t", "scopes": ["admin"], "expires_at": "2099-01-01T00:00:00Z"}),
    (TokenCreate, {"name": "t", "scopes": ["job"], "expires_at": "2099-01-01T00:00:00"}),  # no zone
    (TokenCreate, {"name": "t", "scopes": ["job"], "expires_at": "9999-12-31T23:59:59-23:59"}),  # past year 9999
    (ComponentRegistration, {"kind": "peer", "host_id": "h", "url": "ftp://x"}),
    (ComponentRegistration, {"kind": "peer", "host_id": "h", "url": "http://x", "ip": "300.1.1.1"}),
    (ComponentRegistration, {"kind": "robot", "host_id": "h", "url": "http://x"}),
])
def test_bad_bodies_are_refused(model: Any, body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate_json(json.dumps(body))


def test_good_bodies_are_normalized() -> None:
    cluster = ClusterCreate.model_validate({"name": "a", "scopes": {"cidrs": ["10.1.2.3/8"]},
                                            "config": {"block_list": ["busybox:1", "sha256:" + "a" * 64]}})
    assert cluster.scopes.cidrs == ["10.0.0.0/8"]
    assert cluster.config.candidate_parent_limit == 4 and cluster.config.back_to_source is None
    token = TokenCreate.model_validate({"name": "t", "scopes": ["job"], "expires_at": "2099-01-01T02:00:00+02:00"})
    assert token.expires_at == datetime(2099, 1, 1, tzinfo=timezone.utc)


def test_a_patch_tells_given_keys_from_defaults() -> None:
    patch = ClusterUpdate.model_validate({"config": {"upload_rate": None}})
    assert patch.config is not None and patch.config.model_fields_set == {"upload_rate"}


def test_errors_say_where_but_never_echo_the_value() -> None:
    with pytest.raises(ValidationError) as caught:
        SignIn.model_validate_json(json.dumps({"name": "root", "password": "p" * 2000}))
    message = describe_validation(caught.value)
    assert message.startswith("password:") and "ppp" not in message
    with pytest.raises(ValidationError) as caught:
        SignIn.model_validate_json(b"{bad")
    assert describe_validation(caught.value).startswith("the body is not valid JSON")


# --- database URLs ------------------------------------------------------------------------------------------------


def test_database_urls(tmp_path: Path) -> None:
    assert database_url(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/manager.db"
    assert database_url("sqlite:////var/x.db", tmp_path) == "sqlite:////var/x.db"
    assert database_url("postgresql://u:p@db:5432/m", tmp_path) == "postgresql+psycopg://u:p@db:5432/m"
    for bad in ("mysql://u@h/db", "sqlite://", "sqlite+pysqlite2:///x", "postgresql+asyncpg://u@h/db", "nonsense"):
        with pytest.raises(ValueError):
            database_url(bad, tmp_path)


def test_the_migrations_build_exactly_the_tables_of_the_models(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from damselfly.manager.database import Base, migrate, open_engine

    engine = open_engine(database_url(None, tmp_path))
    migrate(engine)
    migrate(engine)  # a second start finds the schema current
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}),
                                Base.metadata) == []
    engine.dispose()


# --- the OpenAPI document -----------------------------------------------------------------------------------------


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [*([node["$ref"]] if "$ref" in node else []), *(r for v in node.values() for r in _refs(v))]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_the_document_has_every_route_once_with_its_access() -> None:
    document = openapi_document(ROUTES, "t", "1")
    assert document["openapi"].startswith("3.1")
    operations = [(path, method, op) for path, item in document["paths"].items() for method, op in item.items()]
    assert len(operations) == len(ROUTES)
    assert len({op["operationId"] for _, _, op in operations}) == len(ROUTES)
    for path, method, op in operations:
        public = op[ACCESS_EXTENSION] in ("public", "component")
        assert (op["security"] == []) == public, (path, method)
        if not public:
            assert {"401", "403"} <= set(op["responses"]), (path, method)
        if "{id}" in path:
            assert "404" in op["responses"] and op["parameters"][0]["schema"]["type"] == "integer"
        if "requestBody" in op:
            assert {"400", "413"} <= set(op["responses"])


def test_every_reference_resolves_and_models_are_shared() -> None:
    document = openapi_document(ROUTES, "t", "1")
    schemas = document["components"]["schemas"]
    for ref in _refs(document):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    assert schemas["ErrorAnswer"]["required"] == ["error"]
    assert schemas["ClusterCreate"]["additionalProperties"] is False


def test_lists_are_arrays_and_deletes_have_no_body() -> None:
    document = openapi_document(ROUTES, "t", "1")
    clusters = document["paths"]["/api/v1/clusters"]["get"]["responses"]["200"]["content"]["application/json"]
    assert clusters["schema"] == {"type": "array", "items": {"$ref": "#/components/schemas/Cluster"}}
    assert "content" not in document["paths"]["/api/v1/clusters/{id}"]["delete"]["responses"]["204"]
    query = document["paths"]["/api/v1/tasks"]["get"]["parameters"]
    assert {p["name"] for p in query} == {"digest", "image", "plain_http", "cluster_id"}


def test_a_holder_two_schedulers_tell_of_is_one_row_the_furthest() -> None:
    def peer(host: str, pieces: int, done: bool, scheduler: str) -> TaskPeer:
        return TaskPeer(host_id=host, upload_url=None, pieces=pieces, piece_count=4, done=done,
                        scheduler_url=scheduler)

    rows = furthest([peer("a", 2, False, "s1"), peer("a", 4, True, "s2"), peer("b", 1, False, "s1"),
                     peer("a", 3, False, "s3")])
    assert [(p.host_id, p.pieces, p.scheduler_url) for p in rows] == [("a", 4, "s2"), ("b", 1, "s1")]

"""schemathesis against a running manager, as root: for every operation of its OpenAPI
document, generated requests (valid ones and, for bodies, broken ones) must never get a
5xx, and every answer must match the document (status, content type, body schema).

Every check runs but one: that each schema-valid request succeeds. Some rules are not in
the schema's vocabulary (a token's expiry in the future, a block-list entry that parses as
an image reference, a CIDR, one of ``digest=`` and ``image=``), so such requests rightly
get a 400; tests/unit/test_manager_rules.py covers those rules.

Two adjustments keep the run on this machine and the caller signed in: ``image=`` queries
are dropped (the manager would read manifests from whatever registry a random reference
names, on the internet), and user operations never target the signed-in root itself (a
generated new password would end the session the run uses). The rest is as generated.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from testkit.manager import Manager

EXAMPLES = 20  # per operation: about 20 operations, well under a minute


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manager]:
    # Schedulers it registers go inactive at once, so GET /tasks asks none of the made-up hosts.
    started = Manager(tmp_path_factory.mktemp("manager-fuzz"),
                      args=["--keepalive-interval", "0.1", "--inactive-after", "0.2"]).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def root_token(manager: Manager) -> str:
    return manager.sign_in()


def _schema(manager: Manager, root_id: int) -> Any:
    schema = schemathesis.openapi.from_url(f"{manager.api}/openapi.json")

    @schema.hook
    def map_query(context: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
        if query and "image" in query:
            query = {key: value for key, value in query.items() if key != "image"}
        return query

    @schema.hook
    def map_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> dict[str, Any] | None:
        operation_path = context.operation.path if context.operation is not None else ""
        if path_parameters and "/users/" in operation_path and path_parameters.get("id") == root_id:
            path_parameters = {**path_parameters, "id": root_id + 1}
        return path_parameters

    return schema


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_manager_answers_every_generated_request_as_documented(manager: Manager, root_token: str,
                                                                    mode: GenerationMode) -> None:
    """Each operation in turn (schemathesis's pytest loader does not run under this pytest,
    so the operations are walked here with its Hypothesis strategies)."""
    auth = {"Authorization": f"Bearer {root_token}"}
    root_id = httpx.get(f"{manager.api}/users/me", headers=auth).json()["id"]
    failures: list[str] = []
    operations = 0
    for result in _schema(manager, root_id).get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  phases=[Phase.explicit, Phase.generate])
        def call(case: Any) -> None:
            # A negative case may leave the token out on purpose: then it goes without one.
            headers = None if case.operation.schema.is_security_param_negated(case) else auth
            case.call_and_validate(headers=headers, timeout=30, excluded_checks=[positive_data_acceptance])

        try:
            call()
        except Exception as error:  # noqa: BLE001 - every operation is tried; all failures are reported
            failures.append(f"{operation.method.upper()} {operation.path}: {error}")
    assert operations >= 20
    assert not failures, "\n\n".join(failures)

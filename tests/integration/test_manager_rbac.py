"""Every operation of the manager's OpenAPI document, as a running manager serves it, called
without a token, with a bad one, as a guest and with tokens outside and inside their scopes:
401, 403 or through, as its ``x-damselfly-access`` says. The document is the list, so an
endpoint added later is checked without touching this test."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from testkit.manager import Manager

ACCESS = "x-damselfly-access"
SCOPE = "x-damselfly-scope"
SCOPES = ("cluster", "job")


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manager]:
    started = Manager(tmp_path_factory.mktemp("manager-rbac")).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def callers(manager: Manager) -> dict[str, str | None]:
    """A token (or None) for each kind of caller."""
    root = manager.sign_in()
    expires = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    tokens: dict[str, str | None] = {"anonymous": None, "bogus": "dfs_not-a-token-anyone-issued", "root": root}
    with manager.client(root) as client:
        for scope in SCOPES:
            answer = client.post("/personal-access-tokens", json={"name": f"only-{scope}", "scopes": [scope],
                                                                 "expires_at": expires})
            tokens[f"token:{scope}"] = answer.json()["token"]
        assert client.post("/users", json={"name": "visitor", "password": "visitor's password",
                                           "role": "guest"}).status_code == 201
    tokens["guest"] = manager.sign_in("visitor", "visitor's password")
    return tokens


def _operations(manager: Manager) -> list[tuple[str, str, dict[str, Any]]]:
    document = httpx.get(f"{manager.api}/openapi.json").json()
    return [(method.upper(), path, operation) for path, item in document["paths"].items()
            for method, operation in item.items()]


def _call(manager: Manager, method: str, path: str, token: str | None) -> httpx.Response:
    # The largest id (no such object) and an empty body: the access decision comes before
    # the path and the body are looked at, so neither changes it, and nothing is changed.
    url = manager.url + path.replace("{id}", "2147483647")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, url, headers=headers, json={} if method in ("POST", "PATCH") else None, timeout=30)


def test_the_document_lists_every_operation_with_its_access(manager: Manager) -> None:
    operations = _operations(manager)
    assert len(operations) >= 20
    for method, path, operation in operations:
        assert operation[ACCESS] in ("public", "component", "guest-read", "root"), (method, path)
        assert operation.get(SCOPE) in (None, *SCOPES), (method, path)
        if operation[ACCESS] == "guest-read":
            assert method == "GET", f"{method} {path}: a write open to guests"


def test_every_operation_answers_as_its_access_says(manager: Manager, callers: dict[str, str | None]) -> None:
    wrong: list[str] = []

    def expect(method: str, path: str, caller: str, allowed: set[int] | None, refused: int | None) -> None:
        status = _call(manager, method, path, callers[caller]).status_code
        if refused is not None and status != refused:
            wrong.append(f"{method} {path} as {caller}: {status}, want {refused}")
        if allowed is not None and status in (401, 403):
            wrong.append(f"{method} {path} as {caller}: {status}, want it let through")

    for method, path, operation in _operations(manager):
        access, scope = operation[ACCESS], operation.get(SCOPE)
        if access in ("public", "component"):
            expect(method, path, "anonymous", set(), None)  # no token needed (loopback for components)
            continue
        expect(method, path, "anonymous", None, 401)
        expect(method, path, "bogus", None, 401)
        expect(method, path, "root", set(), None)
        if access == "guest-read":
            for caller in ("guest", "token:cluster", "token:job"):
                expect(method, path, caller, set(), None)
            continue
        expect(method, path, "guest", None, 403)
        for token_scope in SCOPES:
            if token_scope == scope:
                expect(method, path, f"token:{token_scope}", set(), None)
            else:
                expect(method, path, f"token:{token_scope}", None, 403)
    assert not wrong, "\n".join(wrong)


def test_a_refusal_says_why_in_one_line(manager: Manager, callers: dict[str, str | None]) -> None:
    refused = _call(manager, "POST", "/api/v1/clusters", callers["token:job"])
    assert refused.status_code == 403
    assert refused.json() == {"error": "token only-job has scopes job; this needs scope cluster"}
    assert _call(manager, "GET", "/api/v1/users", callers["guest"]).json()["error"].startswith("user visitor is a guest")

"""The registry client's pure rules, which both faces (blocking and async) go through: the
Bearer challenge parser, the token answer, the check of a ranged blob answer, the
redirect policy. No sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from damselfly.lib.blockinghttp import Redirect, RedirectRefused, follow_redirect
from damselfly.registry.rules import (BearerChallenge, ChallengeInvalid, answers_blob, basic_authorization,
                                      blob_answer_problem, offers_basic, parse_bearer_challenge, range_header, realm_problem,
                                      token_in_answer, token_request_url, with_query)

# --- Bearer challenges ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header, challenge", [
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"',
     BearerChallenge("https://auth.docker.io/token", "registry.docker.io", "repository:library/busybox:pull")),
    # a scope naming two repositories: the comma inside the quotes is no separator
    ('Bearer realm="https://r.example/token",scope="repository:a:pull,push",service="r"',
     BearerChallenge("https://r.example/token", "r", "repository:a:pull,push")),
    # any case for scheme and names, blanks around "=" and after commas, token (unquoted) values
    ('bearer  Realm = "https://r.example/t" ,  SERVICE=r.example', BearerChallenge("https://r.example/t", "r.example")),
    # escaped quotes and backslashes in a quoted string
    (r'Bearer realm="https://r.example/t?x=\"y\"",service="a\\b"', BearerChallenge('https://r.example/t?x="y"', r"a\b")),
    # another challenge first (its parameters are its own), a Bearer one after it
    ('Basic realm="basic, with a comma", Bearer realm="https://r.example/t"', BearerChallenge("https://r.example/t")),
    # a token68 challenge, then the Bearer one
    ('Negotiate abc123==, Bearer realm="https://r.example/t"', BearerChallenge("https://r.example/t")),
    # a parameter given twice: the first counts; one that cannot be read is skipped
    ('Bearer realm="https://one.example", realm="https://two.example", junk, service', BearerChallenge("https://one.example")),
])
def test_a_bearer_challenge_is_read_whatever_its_quoting(header: str, challenge: BearerChallenge) -> None:
    assert parse_bearer_challenge(header) == challenge


@pytest.mark.parametrize("header", ["", 'Basic realm="registry"', "Negotiate", 'Bearerish realm="https://x"', ","])
def test_no_bearer_challenge_is_none(header: str) -> None:
    assert parse_bearer_challenge(header) is None


@pytest.mark.parametrize("header", ["Bearer", 'Bearer service="s"', 'Bearer realm=""', 'Bearer realm="unterminated',
                                    'Basic realm="x", Bearer scope="a:b:pull"'])
def test_a_bearer_challenge_without_a_realm_is_refused(header: str) -> None:
    with pytest.raises(ChallengeInvalid):
        parse_bearer_challenge(header)


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1), st.text(), st.text(), st.sampled_from([",", ", ", " ,\t"]))
def test_quoted_values_come_back_exactly(realm: str, service: str, scope: str, separator: str) -> None:
    header = separator.join([f"Bearer realm={_quoted(realm)}", f"service={_quoted(service)}",
                             f"scope={_quoted(scope)}"])
    assert parse_bearer_challenge(header) == BearerChallenge(realm, service, scope)


def test_the_token_is_asked_for_the_clients_own_scope() -> None:
    challenge = BearerChallenge("https://auth.example/token?tenant=1", "registry.example", "repository:a:pull")
    assert token_request_url(challenge, "repository:a:pull,push") == (
        "https://auth.example/token?tenant=1&service=registry.example&scope=repository%3Aa%3Apull%2Cpush")


@pytest.mark.parametrize("document, token", [
    ({"token": "t", "access_token": "a"}, "t"),
    ({"access_token": "a"}, "a"),
    ({"token": "", "access_token": "a"}, "a"),
    ({"token": 12}, ""),
    ({}, ""),
])
def test_the_token_of_a_token_answer(document: object, token: str) -> None:
    assert token_in_answer(document) == token


@pytest.mark.parametrize("document", [["t"], "t", None])
def test_a_token_answer_that_is_no_object_is_refused(document: object) -> None:
    with pytest.raises(ValueError, match="no JSON object"):
        token_in_answer(document)


def test_query_parameters_join_any_query_the_url_has() -> None:
    assert with_query("https://r/x", {"ns": "docker.io"}) == "https://r/x?ns=docker.io"
    assert with_query("https://r/x?a=1", {"digest": "sha256:0"}) == "https://r/x?a=1&digest=sha256%3A0"
    assert with_query("https://r/x", {}) == "https://r/x"


@pytest.mark.parametrize("header, basic", [
    ('Basic realm="htpasswd"', True),
    ('basic realm=x', True),
    ('Bearer realm="https://r.example/t", Basic realm="r"', True),
    ('Bearer realm="https://r.example/t",service="Basic"', False),  # a parameter's value is no scheme
    ("", False),
])
def test_a_basic_challenge_is_seen_among_others(header: str, basic: bool) -> None:
    assert offers_basic(header) is basic


def test_basic_credentials_are_rfc_7617s() -> None:
    assert basic_authorization("Aladdin", "open sesame") == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="


# --- ranged blob answers -------------------------------------------------------------------------------------------

def test_a_span_asks_for_its_inclusive_byte_range() -> None:
    assert range_header((50, 100)) == "bytes=50-149"
    assert range_header((0, 1)) == "bytes=0-0"


def test_which_statuses_carry_blob_bytes() -> None:
    assert answers_blob(200, None) and answers_blob(200, (0, 10)) and answers_blob(206, (5, 10))
    assert not answers_blob(206, None)  # a part where the whole blob was asked for
    assert not any(answers_blob(status, (0, 10)) for status in (301, 401, 404, 416, 500))


@pytest.mark.parametrize("status, content_range, length", [
    (206, "bytes 50-149/1000", 100),
    (206, "bytes 50-149/*", 100),
    (200, None, 100),  # the range was all of a 100-byte blob: the whole blob is those bytes
])
def test_a_range_answer_that_holds_exactly_the_bytes_asked_for(status: int, content_range: str | None,
                                                               length: int) -> None:
    span = (50, 100) if status == 206 else (0, 100)
    assert blob_answer_problem(status, content_range, length, span) is None


@pytest.mark.parametrize("status, content_range, length, problem", [
    (206, "bytes 0-99/1000", 100, "answered bytes 50+100 with bytes 0-99/1000, 100 bytes"),
    (206, "bytes 50-148/1000", 99, "answered bytes 50+100"),
    (206, "bytes 50-149/1000", 99, "answered bytes 50+100"),  # the header and the length disagree
    (206, "bytes 50-150/1000", 100, "answered bytes 50+100"),
    (206, None, 100, "with no Content-Range"),
    (206, "bytes 5\u0660-149/1000", 100, "answered bytes 50+100"),  # not an ASCII digit
    (206, "items 50-149/1000", 100, "answered bytes 50+100"),
    (200, None, 1000, "ignored the range request"),
    (206, "bytes 50-149/1000", None, "sent no Content-Length"),
])
def test_a_range_answer_with_other_bytes_is_refused(status: int, content_range: str | None, length: int | None,
                                                    problem: str) -> None:
    assert problem in (blob_answer_problem(status, content_range, length, (50, 100)) or "")


def test_a_whole_blob_answer_needs_only_its_length() -> None:
    assert blob_answer_problem(200, None, 12, None) is None
    assert blob_answer_problem(200, None, None, None) == "sent no Content-Length for a blob"


# --- the redirect policy of both faces -----------------------------------------------------------------------------

@pytest.mark.parametrize("method, status, location, redirect", [
    ("GET", 307, "/v2/b", Redirect("GET", "https://r.example/v2/b", (), drops_body=False)),
    ("GET", 302, "https://cdn.example/b?sig=1", Redirect("GET", "https://cdn.example/b?sig=1", ("Authorization",),
                                                         drops_body=False)),
    ("HEAD", 303, "/x", Redirect("HEAD", "https://r.example/x", (), drops_body=False)),
    ("PUT", 307, "/x", Redirect("PUT", "https://r.example/x", (), drops_body=False)),  # 307 keeps method and body
    ("POST", 302, "/x", Redirect("GET", "https://r.example/x", ("Content-Length", "Content-Type", "Transfer-Encoding"),
                                 drops_body=True)),
    ("PUT", 303, "https://o.example/x", Redirect("GET", "https://o.example/x", ("Authorization", "Content-Length",
                                                                               "Content-Type", "Transfer-Encoding"),
                                                 drops_body=True)),
])
def test_where_a_redirect_leads_and_what_stays_behind(method: str, status: int, location: str,
                                                      redirect: Redirect) -> None:
    assert follow_redirect(method, "https://r.example/v2/a", status, location) == redirect


@pytest.mark.parametrize("status, location", [(200, "/x"), (304, "/x"), (302, None), (302, "")])
def test_an_answer_that_redirects_nowhere_is_the_answer(status: int, location: str | None) -> None:
    assert follow_redirect("GET", "https://r.example/v2/a", status, location) is None


def test_a_redirect_down_to_plain_http_is_refused() -> None:
    with pytest.raises(RedirectRefused):
        follow_redirect("GET", "https://r.example/v2/a", 302, "http://r.example/v2/a")


def test_a_registry_over_https_cannot_send_its_client_to_plain_http_for_a_token():
    """A challenge is a redirect by other means: a guest of the manager naming a registry
    that answers realm="http://any-host/..." must not get a cleartext request sent there."""
    assert realm_problem("https://r.example/v2/a/manifests/1", "http://10.0.0.9:8080/steal") is not None
    assert realm_problem("https://r.example/v2/", "https://auth.r.example/token") is None
    assert realm_problem("http://127.0.0.1:5000/v2/", "http://127.0.0.1:5001/token") is None
    assert realm_problem("https://r.example/v2/", "file:///etc/passwd") is not None
    assert realm_problem("https://r.example/v2/", "/token") is not None

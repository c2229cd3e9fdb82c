"""What the registry client sends and what it accepts, as pure functions: the API's URLs,
a ranged blob request and the check of its answer, Bearer token challenges and the token
service's answer, Basic challenges and credentials.

Both faces (blocking.py for the nydus commands, client.py for the mirror and the seed)
go through these, so the two cannot drift apart; tests read them without a socket. The
redirect policy both follow is lib/blockinghttp.follow_redirect, which the blocking
session below every client uses too.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlencode

from damselfly.lib.netaddr import may_lead_to

# (start, length) of the bytes a ranged blob request asks for.
Span = tuple[int, int]


def blob_url(base: str, repository: str, digest: str) -> str:
    return f"{base}/v2/{repository}/blobs/{digest}"


def manifest_url(base: str, repository: str, reference: str) -> str:
    return f"{base}/v2/{repository}/manifests/{reference}"


def uploads_url(base: str, repository: str) -> str:
    """Where a blob upload starts (a POST answered with the upload's Location)."""
    return f"{base}/v2/{repository}/blobs/uploads/"


def with_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` added to whatever query it has (a token realm or an upload
    Location may carry one)."""
    query = urlencode(params)
    return url + ("&" if "?" in url else "?") + query if query else url


# --- ranged blob requests ------------------------------------------------------------------------------------------

def range_header(span: Span) -> str:
    start, length = span
    return f"bytes={start}-{start + length - 1}"


def answers_blob(status: int, span: Span | None) -> bool:
    """Whether an answer to a blob GET (of ``span`` of it, if given) carries the blob's bytes:
    200, or 206 to a range request; anything else is the registry's refusal."""
    return status == 200 or (span is not None and status == 206)


_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/(?:[0-9]{1,19}|\*)", re.ASCII)


def blob_answer_problem(status: int, content_range: str | None, length: int | None, span: Span | None) -> str | None:
    """What is wrong with a blob answer (``answers_blob``) of ``length`` bytes (its
    Content-Length), as the end of "upstream URL ...", or None when it holds exactly the
    bytes asked for. Those of a range are a 206 for them, or a 200 with the whole blob when
    the range was all of it (some storage answers so): any other bytes would be stored or
    decoded at the wrong offset."""
    if length is None:
        return "sent no Content-Length for a blob"
    if span is None:
        return None
    start, wanted = span
    if status != 206:
        return None if start == 0 and length == wanted else "ignored the range request"
    sent = _CONTENT_RANGE.fullmatch(content_range or "")
    if sent is None or int(sent[1]) != start or int(sent[2]) != start + wanted - 1 or length != wanted:
        return f"answered bytes {start}+{wanted} with {content_range or 'no Content-Range'}, {length} bytes"
    return None


# --- Bearer token challenges (RFC 6750, in the syntax of RFC 9110 section 11) -------------------------------------

class ChallengeInvalid(ValueError):
    """A Bearer challenge the client cannot follow (it names no realm)."""


@dataclass(frozen=True)
class BearerChallenge:
    """Where a registry sends a client for a token: ``realm`` (the token service's URL),
    with the ``service`` and ``scope`` the registry named."""

    realm: str
    service: str = ""
    scope: str = ""


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_SCHEME = re.compile(rf"({_TOKEN})(?:[ \t]+(.*))?", re.DOTALL)
_PARAMETER = re.compile(rf"({_TOKEN})[ \t]*=[ \t]*({_TOKEN}|\"(?:[^\"\\]|\\.)*\")", re.DOTALL)
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)


def parse_bearer_challenge(header: str) -> BearerChallenge | None:
    """The Bearer challenge of a ``WWW-Authenticate`` value, or None when it has none (Basic,
    say). Scheme and parameter names are case-insensitive, values are tokens or quoted
    strings (commas and escaped quotes inside them included); of a parameter given twice the
    first counts, and a parameter that cannot be read is skipped. ChallengeInvalid when the
    Bearer challenge names no realm."""
    for scheme, parameters in _challenges(header):
        if scheme == "bearer":
            if not parameters.get("realm"):
                raise ChallengeInvalid("a Bearer challenge without a realm")
            return BearerChallenge(parameters["realm"], parameters.get("service", ""), parameters.get("scope", ""))
    return None


def offers_basic(header: str) -> bool:
    """Whether a ``WWW-Authenticate`` value offers Basic authentication (an htpasswd registry's)."""
    return any(scheme == "basic" for scheme, _ in _challenges(header))


def basic_authorization(username: str, password: str) -> str:
    """The ``Authorization`` value of RFC 7617 for a user and password."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def _challenges(header: str) -> list[tuple[str, dict[str, str]]]:
    """(lower-case scheme, parameters by lower-case name) of each challenge in ``header``.

    The grammar separates challenges and their parameters with the same comma: an item
    that starts with a name not followed by "=" starts a challenge (its first parameter, or
    a token68, after a blank); any other item is a parameter of the challenge before it."""
    challenges: list[tuple[str, dict[str, str]]] = []
    for item in _outside_quotes(header):
        item = item.strip(" \t")
        scheme = _SCHEME.fullmatch(item)
        if scheme is not None and not (scheme[2] or "").startswith("="):
            challenges.append((scheme[1].lower(), {}))
            item = scheme[2] or ""
        parameter = _PARAMETER.fullmatch(item.strip(" \t"))
        if parameter is not None and challenges:
            value = parameter[2]
            if value.startswith('"'):
                value = _ESCAPED.sub(r"\1", value[1:-1])
            challenges[-1][1].setdefault(parameter[1].lower(), value)
    return challenges


def _outside_quotes(text: str) -> Iterator[str]:
    """``text`` cut at each comma outside a quoted string (in which a backslash escapes the
    next character)."""
    start, quoted, escaped = 0, False, False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            yield text[start:index]
            start = index + 1
    yield text[start:]


def realm_problem(registry_url: str, realm: str) -> str | None:
    """Why a registry's token service may not be asked, or None. A registry reached over
    https may not send its client to plain HTTP for a token (the redirect rule, which a
    challenge would otherwise get around); a realm is an absolute http(s) URL."""
    if not may_lead_to(registry_url, realm):
        return f"refused token service {realm!r}: not https, or plain HTTP from a registry reached over https"
    return None


def token_request_url(challenge: BearerChallenge, scope: str) -> str:
    """Where to ask for a token for ``scope``: the client's own scope, under which it keeps
    the token for its next requests."""
    return with_query(challenge.realm, {"service": challenge.service, "scope": scope})


def token_in_answer(document: object) -> str:
    """The token in a token service's JSON answer: ``token``, or OAuth2's ``access_token``;
    "" when it has neither (the request is then sent again without one). ValueError for an answer
    that is no JSON object."""
    if not isinstance(document, dict):
        raise ValueError("the answer is no JSON object")
    for name in ("token", "access_token"):
        token = document.get(name)
        if isinstance(token, str) and token:
            return token
    return ""

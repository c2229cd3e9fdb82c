"""Property-based tests of the parsers that read what clients and registries send.

Each parser may refuse its input only with its own documented error; a crash would be
a 500 (or worse, a request the mirror should not make). Where a value round-trips, it does.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from damselfly.lib.httprange import ByteRange, RangeInvalid, RangeNotSatisfiable, parse_range
from damselfly.core.oci import Digest, OCIError, validate_reference, validate_repository
from damselfly.core.oci import DOCKER_HUB_UPSTREAM, normalize_upstream, split_registry
from damselfly.core.oci import parse_registry_mapping
from damselfly.mirror.upstream import UpstreamResolver
from damselfly.registry.rules import ChallengeInvalid, parse_bearer_challenge

FUZZ = settings(max_examples=300, deadline=None)

# Text made of what parsers get wrong: non-ASCII digits and case folds, Unicode blanks, newlines, separators.
TRICKY = st.sampled_from(["\u0661", "\u00b9", "\uff11", "\u2003", "\u00a0", "\n", "\t", " ", ",", "-", "=", ":", "/",
                          "@", "?", "#", "%", "[", "]", ".", "\u212a", "\u0130"])
TEXT = st.one_of(st.text(), st.lists(st.one_of(TRICKY, st.text(alphabet="bytesBYTES0123456789", max_size=4)))
                 .map("".join))


# --- Range ---------------------------------------------------------------------------------

POSITION = st.one_of(st.integers(0, 10**25).map(str), st.just(""), st.just("9" * 5000),
                     st.text(alphabet="0123456789\u0661\u00b9\uff11", min_size=1, max_size=6))
BLANK = st.sampled_from(["", " ", "\t", "\u2003"])
RANGE_HEADER = st.one_of(
    TEXT,
    st.builds(lambda unit, b1, first, b2, last: f"{unit}{b1}={b1}{first}{b2}-{b2}{last}",
              st.sampled_from(["bytes", "BYTES", "Bytes", "items", ""]), BLANK, POSITION, BLANK, POSITION),
)
LENGTH = st.integers(0, 2**40)


@FUZZ
@given(RANGE_HEADER, LENGTH)
def test_a_range_header_gives_a_range_inside_the_length_or_the_parsers_own_error(header, length):
    try:
        byte_range = parse_range(header, length)
    except (RangeInvalid, RangeNotSatisfiable):
        return
    assert byte_range is not None
    assert 0 <= byte_range.first <= byte_range.last < length
    assert header.isascii(), "only ASCII digits and blanks make a range"


NON_ASCII_DIGITS = st.text(st.characters(categories=["Nd", "No"]).filter(lambda c: not c.isascii()),
                           min_size=1, max_size=3)
NON_ASCII_RANGE = st.one_of(
    st.builds("bytes={}-{}".format, NON_ASCII_DIGITS, st.one_of(st.just(""), NON_ASCII_DIGITS, POSITION)),
    st.builds("bytes={}-{}".format, st.one_of(st.just(""), POSITION), NON_ASCII_DIGITS),
    st.text(min_size=1).filter(lambda t: not t.isascii()).map("bytes=".__add__),
)


@FUZZ
@given(NON_ASCII_RANGE, LENGTH)
def test_a_header_with_any_non_ascii_character_is_malformed(header, length):
    with pytest.raises(RangeInvalid):
        parse_range(header, length)


@FUZZ
@given(st.integers(0, 2**40), st.integers(0, 2**40), st.integers(1, 2**40))
def test_a_valid_range_keeps_first_and_clamps_last_to_the_length(first, span, length):
    last = first + span
    if first >= length:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(f"bytes={first}-{last}", length)
        return
    assert parse_range(f"bytes={first}-{last}", length) == ByteRange(first, min(last, length - 1))
    assert parse_range(f"bytes={first}-", length) == ByteRange(first, length - 1)


@FUZZ
@given(st.integers(1, 2**40), st.integers(1, 2**40))
def test_a_suffix_range_is_the_last_bytes(suffix, length):
    byte_range = parse_range(f"bytes=-{suffix}", length)
    assert byte_range is not None
    assert (byte_range.last, byte_range.count) == (length - 1, min(suffix, length))


# --- Repository names, tags and digests ------------------------------------------------------

# The spec's component grammar with bounded repeats, so that names stay under 255 characters.
NAME_COMPONENT = st.from_regex(r"\A[a-z0-9]{1,5}(?:(?:[._]|__|-{1,3})[a-z0-9]{1,5}){0,3}\Z")
VALID_NAME = st.lists(NAME_COMPONENT, min_size=1, max_size=6).map("/".join)
VALID_TAG = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
HEX = "0123456789abcdef"
VALID_DIGEST = st.one_of(st.text(HEX, min_size=64, max_size=64).map("sha256:".__add__),
                         st.text(HEX, min_size=128, max_size=128).map("sha512:".__add__))


@FUZZ
@given(st.one_of(TEXT, VALID_NAME.map(lambda n: n + "\n")))
def test_a_repository_name_is_valid_or_name_invalid(name):
    try:
        assert validate_repository(name) == name
    except OCIError as error:
        assert (error.status, error.code) == (400, "NAME_INVALID")
        return
    assert name.isascii() and "\n" not in name and len(name) <= 255


@FUZZ
@given(VALID_NAME)
def test_every_name_the_spec_allows_is_accepted(name):
    assert validate_repository(name) == name


@FUZZ
@given(st.one_of(TEXT, VALID_TAG, VALID_DIGEST, VALID_TAG.map(lambda t: t + "\n")))
def test_a_manifest_reference_is_a_tag_a_digest_or_refused(reference):
    try:
        assert validate_reference(reference) == reference
    except OCIError as error:
        assert (error.status, error.code) in {(400, "TAG_INVALID"), (400, "DIGEST_INVALID")}
        return
    assert reference.isascii() and "\n" not in reference


@FUZZ
@given(VALID_TAG)
def test_every_valid_tag_is_accepted(tag):
    assert validate_reference(tag) == tag


@FUZZ
@given(st.one_of(TEXT, VALID_DIGEST, VALID_DIGEST.map(str.upper), VALID_DIGEST.map(lambda d: d + "\n")))
def test_a_digest_parses_and_prints_back_or_is_digest_invalid(text):
    try:
        digest = Digest.parse(text)
    except OCIError as error:
        assert (error.status, error.code) == (400, "DIGEST_INVALID")
        return
    assert str(digest) == text


@FUZZ
@given(VALID_DIGEST)
def test_every_valid_digest_round_trips(text):
    digest = Digest.parse(text)
    assert str(digest) == text and Digest.parse(str(digest)) == digest
    assert digest.hasher().digest_size * 2 == len(digest.hex)


# --- Registry names and upstreams ------------------------------------------------------------

def maybe(*flaws: str) -> st.SearchStrategy[str]:
    """Nothing half the time, else one of ``flaws``: each flaw alone, often enough."""
    return st.one_of(st.just(""), st.sampled_from(flaws))


LABEL = st.from_regex(r"\A[A-Za-z0-9](?:[A-Za-z0-9-]{0,10}[A-Za-z0-9])?\Z")
HOST = st.one_of(st.lists(LABEL, min_size=1, max_size=4).map(".".join),
                 st.ip_addresses(v=6).map(lambda a: f"[{a}]"), st.ip_addresses(v=4).map(str))
VALID_REGISTRY = st.builds(lambda host, port: host if port is None else f"{host}:{port}",
                           HOST, st.none() | st.integers(1, 65535))
REGISTRY_TEXT = st.one_of(
    TEXT,
    st.builds(lambda scheme, user, name, port, path: f"{scheme}{user}{name}{port}{path}",
              st.sampled_from(["", "http://", "https://", "HTTP://", "ftp://", "//", "http:/"]),
              maybe("user@", "user:pw@"), VALID_REGISTRY, maybe(":0", ":65536", ":\u0661\u0662", ":"),
              maybe("/", "/v2", "?x=1", "#f", "%2F")),
)
LOCAL = "127.0.0.1:5000"
RESOLVER = UpstreamResolver({LOCAL: "http://127.0.0.1:5000"}, default="http://10.0.0.1:5000")
CONFIGURED = {"http://127.0.0.1:5000", "http://10.0.0.1:5000"}


@FUZZ
@given(REGISTRY_TEXT)
def test_registry_parsers_refuse_only_with_value_error(text):
    for parse in (normalize_upstream, parse_registry_mapping):
        try:
            parsed = parse(text)
        except ValueError:
            continue
        assert str(parsed).isascii(), "a registry is reached by an ASCII host and port"


@FUZZ
@given(VALID_REGISTRY, st.sampled_from(["", "https://", "HTTPS://"]), st.sampled_from(["", "/"]))
def test_a_valid_registry_reduces_to_its_lower_case_name(name, scheme, slash):
    assert split_registry(f"{scheme}{name}{slash}")[1] == name.lower()
    assert normalize_upstream(f"https://{name}") == f"https://{name.lower()}"
    assert RESOLVER.name_of(f"{scheme}{name}{slash}", None) == RESOLVER.name_of(None, name) == name.lower()


@FUZZ
@given(st.one_of(st.none(), REGISTRY_TEXT), st.one_of(st.none(), REGISTRY_TEXT))
def test_a_request_reaches_https_or_a_registry_the_operator_named(header, ns):
    try:
        name = RESOLVER.name_of(header, ns)
        url = RESOLVER.resolve(header, ns)
    except OCIError as error:
        assert error.status == 400 and "\n" not in error.message
        return
    assert url == RESOLVER.for_name(name)
    assert url in CONFIGURED or url == DOCKER_HUB_UPSTREAM or url == f"https://{name}"
    assert re.fullmatch(r"[a-z0-9.:\[\]-]+", name), "a registry name is lower-case ASCII host[:port]"


@FUZZ
@given(REGISTRY_TEXT)
def test_for_name_refuses_only_with_a_400(name):
    try:
        url = RESOLVER.for_name(name)
    except OCIError as error:
        assert error.status == 400
        return
    assert url in CONFIGURED or url.startswith("https://")


# --- WWW-Authenticate challenges (the registry client's token fetch) ----------------------------

CHALLENGE = st.one_of(
    TEXT,
    st.builds(lambda scheme, params: scheme + ",".join(f'{k}="{v}"' for k, v in params),
              st.sampled_from(["Bearer ", "bearer ", "Basic ", ""]),
              st.lists(st.tuples(st.sampled_from(["realm", "service", "scope", "Realm", "réalm"]),
                                 st.text().filter(lambda v: '"' not in v)), max_size=4)),
)


@FUZZ
@given(CHALLENGE)
def test_a_challenge_names_a_realm_to_ask_or_is_refused(challenge):
    try:
        parsed = parse_bearer_challenge(challenge)
    except ChallengeInvalid:
        assert "bearer" in challenge.lower()
        return
    if parsed is not None:  # a realm from the text, whatever backslashes escaped in it
        assert "bearer" in challenge.lower() and parsed.realm
        assert parsed.realm.replace("\\", "") in challenge.replace("\\", "")

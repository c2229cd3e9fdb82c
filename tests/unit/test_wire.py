"""The wire messages: every one survives a round trip, and malformed input is a WireError."""

from __future__ import annotations

import json
from typing import Any

import pytest

from damselfly.core.wire import (
    PIECE_TRAILER_SIZE,
    parse_piece_trailer,
    piece_trailer,
    run_body_length,
    MAX_PIECES,
    MAX_REASON,
    AnnounceAnswer,
    BadParentReport,
    DoneReport,
    HostAnnounce,
    ParentInfo,
    PieceAnswer,
    PieceNews,
    PieceReport,
    Schedule,
    SeedAccepted,
    SeedInfo,
    SeedTrigger,
    TaskRegister,
    TriggerFailed,
    WireError,
    parse_number,
    parse_task_id,
)

TASK = "sha256:" + "ab" * 32
PIECE = "blake3:" + "cd" * 32

MESSAGES = [
    HostAnnounce("peer-1", "http://10.0.0.1:65001", idc="idc1", location="cn|hz", seed=True, upload_slots=8),
    AnnounceAnswer(5.0),
    TaskRegister("peer-1", length=10_000, piece_length=4096, pieces=(0, 2), seeding=True, ranged=True),
    Schedule("download", reason="r", version=7, epoch="abcd", verified=True, swarm=3, digests={0: PIECE, 2: PIECE},
             parents=(ParentInfo("p2", "https://p2:1", is_seed=False, seeding=True, bitmap=b"\x05\x00"),),
             seeds=(SeedInfo("s1", "https://s1:2"),)),
    Schedule("wait"),
    PieceReport("peer-1", (PieceNews(0, PIECE, 0.25, "p2"), PieceNews(1)), from_origin=True),
    PieceAnswer((3, 4)),
    BadParentReport("peer-1", parent_id="p2", reason="timed out"),
    BadParentReport("peer-1", parent_url="http://p3:1"),
    TriggerFailed("peer-1", "s1", "answered 503"),
    DoneReport("peer-1", success=False, reason="digest mismatch", could_not_start=True, digest_mismatch=True),
    SeedTrigger(length=10, piece_length=4, registry="registry.example:5000", repository="library/alpine",
                ranged=True, authorization="Bearer x"),
    SeedAccepted(TASK),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_survives_a_json_round_trip(message: Any) -> None:
    assert type(message).from_json(json.loads(json.dumps(message.to_json()))) == message


def test_defaults_fill_absent_optional_fields_and_unknown_keys_are_ignored() -> None:
    assert HostAnnounce.from_json({"id": "h", "upload_url": "http://h:1", "status": 200}) == HostAnnounce(
        "h", "http://h:1")
    assert DoneReport.from_json({"host_id": "h", "success": True}) == DoneReport("h", True)
    assert Schedule.from_json({"action": "seed", "status": 200}).seeds == ()


def test_task_ids_are_sha256_digests() -> None:
    assert parse_task_id(TASK) == TASK
    for bad in ("sha256:" + "AB" * 32, "sha256:abc", "../etc", "sha512:" + "ab" * 64, TASK + "\n", ""):
        with pytest.raises(WireError, match="task id"):
            parse_task_id(bad)


def test_a_long_reason_is_cut_not_refused() -> None:
    report = DoneReport.from_json({"host_id": "h", "success": False, "reason": "x" * 5000})
    assert len(report.reason) == MAX_REASON
    assert len(DoneReport("h", False, "y" * 5000).to_json()["reason"]) == MAX_REASON


MALFORMED: list[tuple[type, Any, str]] = [
    (HostAnnounce, [], "expected a JSON object"),
    (HostAnnounce, {"upload_url": "http://h:1"}, "missing field 'id'"),
    (HostAnnounce, {"id": "", "upload_url": "http://h:1"}, "must not be empty"),
    (HostAnnounce, {"id": "h\n", "upload_url": "http://h:1"}, "control characters"),
    (HostAnnounce, {"id": "h" * 300, "upload_url": "http://h:1"}, "longer than"),
    (HostAnnounce, {"id": "h", "upload_url": "file:///etc/passwd"}, "http\\(s\\) URL"),
    (HostAnnounce, {"id": "h", "upload_url": "http://h:1", "seed": "yes"}, "true or false"),
    (HostAnnounce, {"id": "h", "upload_url": "http://h:1", "upload_slots": True}, "integer, not bool"),
    (HostAnnounce, {"id": "h", "upload_url": "http://h:1", "upload_slots": 0}, "within"),
    (TaskRegister, {"host_id": "h", "length": "10", "piece_length": 4}, "integer, not str"),
    (TaskRegister, {"host_id": "h", "length": 10.0, "piece_length": 4}, "integer, not float"),
    (TaskRegister, {"host_id": "h", "length": -1, "piece_length": 4}, "within"),
    (TaskRegister, {"host_id": "h", "length": 10, "piece_length": 0}, "within"),
    (TaskRegister, {"host_id": "h", "length": 10, "piece_length": 4, "pieces": [-1]}, "item must be within"),
    (TaskRegister, {"host_id": "h", "length": 10, "piece_length": 4, "pieces": [None]}, "item must be an integer"),
    (TaskRegister, {"host_id": "h", "length": 10, "piece_length": 4, "pieces": list(range(MAX_PIECES + 1))},
     "more than"),
    (TaskRegister, {"host_id": "h", "length": 10, "piece_length": 4, "pieces": "0,1"}, "must be a list"),
    (Schedule, {"action": "explode"}, "one of"),
    (Schedule, {"action": "download", "digests": {"x": PIECE}}, "piece index"),
    (Schedule, {"action": "download", "digests": {"0": "md5:00"}}, "piece digest"),
    (Schedule, {"action": "download", "digests": []}, "must be an object"),
    (Schedule, {"action": "download", "parents": [{"host_id": "p", "upload_url": "http://p:1", "is_seed": False,
                                                   "seeding": False, "bitmap": "!!"}]}, "not base64"),
    (Schedule, {"action": "download", "parents": [{"host_id": "p"}]}, "missing field 'upload_url'"),
    (Schedule, {"action": "seed", "seeds": [{"host_id": "s"} for _ in range(100)]}, "more than"),
    (PieceReport, {"host_id": "h", "pieces": [[0, PIECE, 1.0, "p", "extra"]]}, "expected a list"),
    (PieceReport, {"host_id": "h", "pieces": [[True]]}, "index must be an integer"),
    (PieceReport, {"host_id": "h", "pieces": [[0, 42]]}, "digest must be a piece digest"),
    (PieceReport, {"host_id": "h", "pieces": [[0, None, float("nan")]]}, "finite"),
    (PieceReport, {"host_id": "h", "pieces": [[0, None, -1]]}, "finite"),
    (PieceReport, {"host_id": "h", "pieces": [[0, None, None, 7]]}, "parent must be"),
    (BadParentReport, {"host_id": "h"}, "parent_id or parent_url"),
    (BadParentReport, {"host_id": "h", "parent_url": "p:1"}, "URL"),
    (TriggerFailed, {"host_id": "h"}, "missing field 'seed_id'"),
    (DoneReport, {"host_id": "h"}, "missing field 'success'"),
    (DoneReport, {"host_id": "h", "success": 1}, "true or false"),
    (DoneReport, {"host_id": "h", "success": False, "reason": 3}, "must be a string"),
    (SeedTrigger, {"length": 1, "piece_length": 1, "registry": "https://evil", "repository": "a"}, "registry name"),
    (SeedTrigger, {"length": 1, "piece_length": 1, "registry": "r", "repository": "../../etc"}, "invalid repository"),
    (SeedTrigger, {"length": 1, "piece_length": 1, "registry": "r", "repository": "a",
                   "authorization": "Bearer x\r\nX-Evil: 1"}, "control characters"),
    (SeedAccepted, {"accepted": "nope"}, "task id"),
    (AnnounceAnswer, {"keepalive_interval": "5"}, "must be a number"),
    (PieceAnswer, {"rejected": [1.5]}, "must be an integer"),
]


@pytest.mark.parametrize(("cls", "obj", "message"), MALFORMED, ids=[m for _, _, m in MALFORMED])
def test_malformed_input_is_a_wire_error_of_one_line(cls: type, obj: Any, message: str) -> None:
    with pytest.raises(WireError, match=message) as caught:
        cls.from_json(obj)
    assert "\n" not in str(caught.value)


def test_ipv6_and_port_registry_names_are_names() -> None:
    for name in ("[::1]:5000", "localhost", "registry-1.docker.io", "10.0.0.1:443"):
        assert SeedTrigger.from_json({"length": 1, "piece_length": 1, "registry": name,
                                      "repository": "a/b"}).registry == name


@pytest.mark.parametrize("text", ["٣", "1_0", "+2", " 2", "2 ", "", "0x10", "1" * 20, "²"])
def test_path_and_query_numbers_are_ascii_digits_only(text: str) -> None:
    with pytest.raises(WireError):
        parse_number(text)


def test_path_and_query_numbers_in_range() -> None:
    assert parse_number("-1") == -1 and parse_number("63", 1, 64) == 63
    with pytest.raises(WireError):
        parse_number("65", 1, 64)


def test_a_piece_trailer_names_a_digest_or_none_in_a_fixed_width():
    digest = "blake3:" + "ab" * 32
    assert len(piece_trailer(digest)) == len(piece_trailer(None)) == PIECE_TRAILER_SIZE
    assert parse_piece_trailer(piece_trailer(digest)) == digest
    assert parse_piece_trailer(piece_trailer("cd" * 32)) == "cd" * 32  # sha256, as earlier versions named pieces
    assert parse_piece_trailer(piece_trailer(None)) is None
    assert run_body_length([4, 3]) == 7 + 2 * PIECE_TRAILER_SIZE


@pytest.mark.parametrize("trailer", [
    b"", b"\n", piece_trailer(None)[:-1] + b" ", b"blake3:" + b"g" * 64 + b"\n",
    (b"blake3:" + b"A" * 64).ljust(PIECE_TRAILER_SIZE - 1) + b"\n", b"\xff" * (PIECE_TRAILER_SIZE - 1) + b"\n",
])
def test_a_malformed_piece_trailer_is_a_wire_error(trailer):
    with pytest.raises(WireError, match="malformed piece trailer"):
        parse_piece_trailer(trailer)

"""Attacks on the manager's side of preheat jobs, without processes: what a registry answers
and what a job's arguments say. Each test asserts the SAFE behaviour (it fails while the
hole is open)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from damselfly.core.jobs import JobProgress
from damselfly.manager.errors import ApiError
from damselfly.manager.images import Credentials, resolve_file, resolve_image
from damselfly.manager.models import PreheatArgs
from testkit.processes import QuietRequestHandler, ThreadedHTTPServer
from testkit.wait import free_port

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": "sha256:" + "b" * 64, "size": 2}, "layers": []}).encode()
TOKEN = "eyJtoken-issued-for-the-job-credentials-0123456789"


def serve(answer: Callable[[BaseHTTPRequestHandler], None]) -> Iterator[str]:
    port = free_port()

    class Handler(QuietRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            answer(self)

        do_HEAD = do_GET  # noqa: N815

    server = ThreadedHTTPServer(Handler, port)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", **headers: str) -> None:
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


@pytest.fixture
def header_registry() -> Iterator[str]:
    """A registry that reads its manifests only for a caller with X-Registry-Token (an API
    key header, as some registries and fronting proxies take)."""
    def answer(handler: BaseHTTPRequestHandler) -> None:
        if handler.headers.get("X-Registry-Token") != "team-api-key":
            _reply(handler, 403, b'{"errors":[{"code":"DENIED"}]}')
        elif "/manifests/" in handler.path:
            _reply(handler, 200, MANIFEST, Content_Type=OCI_MANIFEST,
                   Docker_Content_Digest="sha256:" + hashlib.sha256(MANIFEST).hexdigest())
        else:
            _reply(handler, 404)
    yield from serve(answer)


def test_credentials_in_a_header_other_than_authorization_make_the_job_private(header_registry: str) -> None:
    """PreheatArgs.private counts every header as credentials (the API says private: true,
    and the Redis-without-TLS check applies), but Credentials.given counts Authorization
    only, so ResolvedImage.private is False: the image's manifests and tags, read with the
    secret header, are placed on every host as PUBLIC (served to anyone in an outage)."""
    args = PreheatArgs.model_validate({"type": "image", "url": f"{header_registry}/team/app:v1",
                                       "headers": {"X-Registry-Token": "team-api-key"}})
    assert args.private
    resolved = resolve_image(f"http://{header_registry}/v2/team/app/manifests/v1", "all",
                             Credentials(headers=dict(args.headers)), {})
    assert resolved.private, "a manifest read with a secret header is placed as public"


@pytest.fixture
def echoing_token_registry() -> Iterator[str]:
    """A token-auth registry whose refusal echoes the request's Authorization (as some
    proxies' and registries' debugging error bodies do)."""
    def answer(handler: BaseHTTPRequestHandler) -> None:
        host = handler.headers.get("Host")
        if handler.path.startswith("/token"):
            _reply(handler, 200, json.dumps({"token": TOKEN}).encode(), Content_Type="application/json")
        elif handler.headers.get("Authorization") != f"Bearer {TOKEN}":
            _reply(handler, 401, WWW_Authenticate=f'Bearer realm="http://{host}/token",service="x"')
        else:
            _reply(handler, 403, f"denied: {handler.headers.get('Authorization')} lacks pull".encode())
    yield from serve(answer)


def test_a_token_the_job_credentials_earned_never_shows_in_the_job_error(echoing_token_registry: str) -> None:
    """redact() removes the password, the header values and the Basic form, but not the
    Bearer token the token service gave for them: an error body that echoes it lands in
    the job's ``error``, which every guest reads in /jobs."""
    with pytest.raises(ApiError) as refused:
        resolve_image(f"http://{echoing_token_registry}/v2/team/app/manifests/v1", "all",
                      Credentials("alice", "alice-password"), {})
    assert TOKEN not in refused.value.message, refused.value.message


@pytest.fixture
def odd_length_registry() -> Iterator[str]:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "\u00b2")  # a digit to str.isdigit, not to int()
        handler.end_headers()
    yield from serve(answer)


def test_a_registry_answer_the_manager_cannot_parse_fails_the_job_not_the_dispatcher(odd_length_registry: str) -> None:
    """Only ApiError is caught around resolution (JobDispatcher._post); anything else
    escapes tick(), which then stops at this job every second: no later job is posted
    and this one never times out. blob_length checks Content-Length with str.isdigit,
    then int() raises ValueError for '²'."""
    digest = "sha256:" + "c" * 64
    try:
        resolve_file(f"http://{odd_length_registry}/v2/team/file/blobs/{digest}", digest, {}, Credentials())
    except ApiError:
        pass  # the safe answer: a job FAILURE with a 502-like message


def test_progress_from_the_board_is_checked_before_the_manager_uses_it() -> None:
    """A host's error of any JSON type passes JobProgress.from_json (the board is not
    trusted to be sane), then breaks the manager's JobHost model in _collect."""
    document = {"state": "RUNNING", "blobs": [{"digest": "sha256:" + "d" * 64, "size": 1,
                                               "hosts": [{"host_id": "h", "state": "failed", "error": {"x": 1}}]}]}
    try:
        progress = JobProgress.from_json(document)
    except ValueError:
        return  # refused: safe
    assert all(isinstance(h.error, (str, type(None))) for b in progress.blobs for h in b.hosts)

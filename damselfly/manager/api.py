"""The manager's HTTP service: the route table, one dispatcher that applies it (access,
path, query, body, answer), and the handlers, each a few lines over the store.

``start_manager(settings)`` opens the database (migrations applied, ``root`` created on
the first start) and returns a ``ManagerService``; its ``application()`` is the aiohttp
app, so that `damselfly manager` serves it alone and `damselfly run` can embed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Awaitable, Callable

import pydantic_core
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ValidationError

from damselfly import __version__
from damselfly.lib.kv import KV_ERRORS, RedisKV, connect
from damselfly.lib.sealed import SealError, public_key_of_certificate
from damselfly.lib.signed import Signer
from damselfly.lib.serve import add_health_routes
from damselfly.lib.tls import ClusterTLS, is_loopback, request_identity
from damselfly.manager import credentials
from damselfly.manager.access import SESSION, Decision, Principal, admit_component, decide
from damselfly.manager.console import add_console_routes
from damselfly.manager.database import database_url, describe_database_error, migrate, open_engine, redacted_url
from damselfly.manager.errors import ApiError
from damselfly.manager.images import check_url
from damselfly.manager.jobs import JobDispatcher
from damselfly.manager.limits import FailureLimiter
from damselfly.manager.models import (MAX_ID, AuditEntry, AuditQuery, Cluster, ClusterCreate, ClusterUpdate,
                                      Component, ComponentQuery, ComponentRegistration, CreatedToken, ErrorAnswer,
                                      Job, JobCreate, JobQuery, Keepalive, KeepaliveAnswer, PersonalAccessToken,
                                      Registration, SignIn,
                                      SignInAnswer, TaskQuery, TasksAnswer, TokenCreate, User, UserCreate, UserUpdate)
from damselfly.manager.routes import API_PREFIX, Access, Route, openapi_document
from damselfly.manager.store import Audit, Store
from damselfly.manager.tasks import SchedulerAsker, image_digests, locate, parse_digest
from damselfly.network.jobboard import JobBoard
from damselfly.settings import ManagerSettings

log = logging.getLogger(__name__)
OPENAPI_PATH = f"{API_PREFIX}/openapi.json"
BODY_TIMEOUT = 10.0  # seconds a client may take to send a body (a few hundred bytes)
TOKEN_SWEEP_INTERVAL = 3600.0  # expired sessions and tokens are deleted this often
CLUSTER_SCOPE = "cluster"
JOB_SCOPE = "job"

ROUTES: list[Route] = [
    Route("POST", "/users/signin", "sign_in", "Sign in: a token for Authorization: Bearer.", Access.PUBLIC,
          SignInAnswer, body=SignIn, errors=(401, 429), tag="users"),
    Route("GET", "/users/me", "me", "The signed-in user (the owner of a token).", Access.READ, User, tag="users"),
    Route("GET", "/users", "list_users", "Every user.", Access.ROOT, User, many=True, tag="users"),
    Route("POST", "/users", "create_user", "Create a user (root or guest).", Access.ROOT, User, status=201,
          body=UserCreate, errors=(409,), tag="users"),
    Route("PATCH", "/users/{id}", "update_user", "Change a user's role or password (a new password ends its "
          "sessions).", Access.ROOT, User, body=UserUpdate, errors=(409,), tag="users"),
    Route("DELETE", "/users/{id}", "delete_user", "Delete a user and its tokens.", Access.ROOT, status=204,
          errors=(409,), tag="users"),
    Route("GET", "/personal-access-tokens", "list_tokens", "Every personal access token (never the token itself).",
          Access.ROOT, PersonalAccessToken, many=True, tag="tokens"),
    Route("POST", "/personal-access-tokens", "create_token", "Create a token; the answer shows it, once.",
          Access.ROOT, CreatedToken, status=201, body=TokenCreate, errors=(409,), tag="tokens"),
    Route("DELETE", "/personal-access-tokens/{id}", "delete_token", "Revoke a token.", Access.ROOT, status=204,
          tag="tokens"),
    Route("GET", "/clusters", "list_clusters", "Every cluster.", Access.READ, Cluster, many=True, tag="clusters"),
    Route("POST", "/clusters", "create_cluster", "Create a cluster; a name alone is enough.", Access.ROOT, Cluster,
          status=201, body=ClusterCreate, scope=CLUSTER_SCOPE, errors=(409,), tag="clusters"),
    Route("GET", "/clusters/{id}", "get_cluster", "One cluster.", Access.READ, Cluster, tag="clusters"),
    Route("PATCH", "/clusters/{id}", "update_cluster", "Change a cluster's name, configuration keys or scopes.",
          Access.ROOT, Cluster, body=ClusterUpdate, scope=CLUSTER_SCOPE, errors=(409,), tag="clusters"),
    Route("DELETE", "/clusters/{id}", "delete_cluster", "Delete a cluster; its members are placed again at their "
          "next keepalive.", Access.ROOT, status=204, scope=CLUSTER_SCOPE, tag="clusters"),
    Route("GET", "/schedulers", "list_schedulers", "Schedulers, active and inactive.", Access.READ, Component,
          many=True, query=ComponentQuery, tag="components"),
    Route("GET", "/seed-peers", "list_seed_peers", "Seed peers, active and inactive.", Access.READ, Component,
          many=True, query=ComponentQuery, tag="components"),
    Route("GET", "/peers", "list_peers", "Peers, active and inactive.", Access.READ, Component, many=True,
          query=ComponentQuery, tag="components"),
    Route("GET", "/tasks", "find_task", "Which peers hold a blob (digest=) or each blob of an image (image=), as "
          "the active schedulers tell.", Access.READ, TasksAnswer, query=TaskQuery, errors=(502,), tag="tasks"),
    Route("POST", "/jobs", "create_job", "Preheat an image or a file onto the seed peers or peers of clusters. "
          "Credentials in args serve this job only and are never shown.", Access.ROOT, Job, status=201,
          body=JobCreate, scope=JOB_SCOPE, errors=(409,), tag="jobs"),
    Route("GET", "/jobs", "list_jobs", "Jobs, newest first.", Access.READ, Job, many=True, query=JobQuery,
          tag="jobs"),
    Route("GET", "/jobs/{id}", "get_job", "One job, with each part and the hosts that hold it, fetch it or failed.",
          Access.READ, Job, tag="jobs"),
    Route("DELETE", "/jobs/{id}", "cancel_job", "Cancel a job: nothing more is placed.", Access.ROOT, Job,
          scope=JOB_SCOPE, errors=(409,), tag="jobs"),
    Route("GET", "/audit", "list_audit", "Every write, newest first: who, when, from where.", Access.ROOT,
          AuditEntry, many=True, query=AuditQuery, tag="audit"),
    Route("POST", "/components", "register_component", "A scheduler, seed peer or peer registers (again); a "
          "peer naming a cluster that does not exist yet is a 404 (a scheduler's registration creates it).",
          Access.COMPONENT, Registration, body=ComponentRegistration, errors=(404, 409), tag="components"),
    Route("POST", "/components/{id}/keepalive", "keepalive", "A component is alive; the answer carries its "
          "cluster's configuration and schedulers.", Access.COMPONENT, KeepaliveAnswer, body=Keepalive,
          tag="components"),
]

DESCRIPTION = ("Damselfly's manager: clusters and their configuration, schedulers, seed peers and peers, users, "
               "tokens and the audit log. See docs/manager.md.")


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def describe_validation(error: ValidationError) -> str:
    """A pydantic error as one line: where and what, never the value sent (it may be a password)."""
    parts = []
    for item in error.errors()[:3]:
        if item["type"] == "json_invalid":
            return f"the body is not valid JSON: {item.get('ctx', {}).get('error', 'parse error')}"
        where = ".".join(str(part) for part in item["loc"])
        what = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        parts.append(f"{where}: {what}" if where else what)
    more = len(error.errors()) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=ErrorAnswer(error=message).model_dump_json(),
                        content_type="application/json", headers=headers)


def server_context(tls: ClusterTLS) -> ssl.SSLContext:
    """HTTPS for everyone, certificates checked for those who show one: components prove
    membership with theirs; people at the console and API clients have none."""
    context = tls.server_context()
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


@dataclass
class Call:
    """One request as a handler sees it: validated, its caller known."""

    request: web.Request
    principal: Principal | None
    ids: dict[str, int]
    query: Any
    body: Any
    address: str
    now: datetime

    def audit(self, actor: str | None = None, credential: str | None = None) -> Audit:
        principal = self.principal
        return Audit(actor or (principal.user_name if principal else "?"),
                     credential or (principal.credential if principal else "?"), self.address,
                     self.request.method, self.request.path)


Handler = Callable[[Call], Awaitable[Any]]


class ManagerService:
    def __init__(self, settings: ManagerSettings, store: Store, board: JobBoard | None = None,
                 signer: Signer | None = None) -> None:
        """``board``: where jobs go to schedulers (Redis, or `run`'s own process); ``signer``:
        how hosts know a job's statement is this manager's (its certificate, or `run`'s
        shared key). Without both, jobs are refused."""
        self.settings = settings
        self.store = store
        self.seed_keys: dict[str, ec.EllipticCurvePublicKey] = {}  # seed peer host id: its certificate's key
        if signer is None and settings.tls is not None:
            signer = Signer.of_tls_dir(settings.tls.directory)
        self.jobs = (JobDispatcher(store, board, signer, settings.registries, settings.tls is not None,
                                   self.seed_keys) if board is not None and signer is not None else None)
        self.jobs_refused = ("this manager has no job board: start it and the schedulers with one --redis"
                             if board is None else "without --tls-dir the manager cannot sign jobs for the hosts: "
                             "preheat needs the cluster's certificates, or `damselfly run`")
        self.signin_failures = FailureLimiter(settings.signin_failures)
        self.asker = SchedulerAsker(settings.scheduler_timeout, settings.tls)
        self.metrics = CollectorRegistry()
        self.requests = Counter("damselfly_manager_requests_total", "API requests by operation and status",
                                ["operation", "code"], registry=self.metrics)
        self.failed_signins = Counter("damselfly_manager_signin_failures_total", "Sign-ins refused (401 and 429)",
                                      registry=self.metrics)
        self.openapi = openapi_document(ROUTES, "Damselfly manager", __version__, DESCRIPTION)

    @classmethod
    def open(cls, settings: ManagerSettings, board: JobBoard | None = None,
             signer: Signer | None = None) -> "ManagerService":
        """Open the database, apply migrations and create ``root`` on the first start (blocking)."""
        url = database_url(settings.database, settings.data_dir)
        engine = open_engine(url)
        try:
            migrate(engine)
        except Exception as error:
            engine.dispose()
            raise RuntimeError(f"cannot open the database {redacted_url(url)}: {describe_database_error(error)}"
                               ) from error
        log.info("database %s is at the newest schema", redacted_url(url))
        store = Store(engine, settings.inactive_after)
        password = settings.root_password or credentials.random_password()
        if store.ensure_root(lambda: credentials.hash_password(password), now_utc()):
            if settings.root_password:
                log.warning("created user root with the password of DAMSELFLY_ROOT_PASSWORD")
            else:
                log.warning("created user root with password %s (shown this once: sign in and change it)", password)
        elif settings.root_password:
            log.info("users exist: DAMSELFLY_ROOT_PASSWORD is used only on the first start, and is ignored")
        if board is None and settings.redis:
            board = JobBoard(RedisKV(connect(settings.redis)))
        return cls(settings, store, board, signer)

    async def close(self) -> None:
        await self.asker.close()
        await asyncio.to_thread(self.store.engine.dispose)

    # --- the app -------------------------------------------------------------------------------------------

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body, middlewares=[self._errors])
        for route in ROUTES:
            handler: Handler = getattr(self, route.handler)
            app.router.add_route(route.method, _aiohttp_path(route.full_path), self._endpoint(route, handler))
        app.router.add_get(OPENAPI_PATH, self._openapi)
        add_health_routes(app, self.metrics)
        add_console_routes(app)
        app.cleanup_ctx.append(self._sweeper)
        return app

    async def _sweeper(self, _: web.Application) -> AsyncIterator[None]:
        async def sweep() -> None:
            while True:
                try:
                    removed = await asyncio.to_thread(self.store.delete_expired_tokens, now_utc())
                    if removed:
                        log.info("forgot %d expired sessions and tokens", removed)
                except Exception:  # noqa: BLE001 - a database hiccup must not end the sweeps
                    log.exception("could not delete expired tokens; trying again in %.0f s", TOKEN_SWEEP_INTERVAL)
                await asyncio.sleep(TOKEN_SWEEP_INTERVAL)

        tasks = [asyncio.create_task(sweep(), name="manager token sweep")]
        if self.jobs is not None:
            tasks.append(asyncio.create_task(self.jobs.run(), name="preheat jobs"))
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.asker.close()

    async def _openapi(self, _: web.Request) -> web.Response:
        return web.json_response(self.openapi)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
        """Every API error as ``{"error": ...}``, and never a traceback to the caller."""
        try:
            return await handler(request)
        except ApiError as error:
            return error_response(error.status, error.message, error.headers)
        except web.HTTPException as error:
            if not request.path.startswith(API_PREFIX) or error.status < 400:
                raise
            message = {404: f"no such endpoint: {request.path}",
                       405: f"{request.method} is not allowed on {request.path}",
                       413: f"the body is larger than {self.settings.max_body} bytes"}.get(error.status, error.reason)
            headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
            return error_response(error.status, message, headers)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return error_response(500, "internal error: the manager's log has the details")

    def _endpoint(self, route: Route, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def endpoint(request: web.Request) -> web.StreamResponse:
            status = 500
            try:
                response = await self._dispatch(route, handler, request)
                status = response.status
                return response
            except ApiError as error:
                status = error.status
                raise
            finally:
                self.requests.labels(route.handler, str(status)).inc()
        return endpoint

    async def _dispatch(self, route: Route, handler: Handler, request: web.Request) -> web.StreamResponse:
        address = request.remote or ""
        principal = None
        if route.access in (Access.READ, Access.ROOT):
            principal = await self._principal(request)
        _enforce(decide(route.access, route.scope, principal))
        if route.access is Access.COMPONENT:
            self._admit_component(request, None, None)
        ids = {name: _path_id(request.match_info[name], request.path) for name in route.path_parameters}
        query = _validated_query(route.query, request) if route.query is not None else None
        body = await self._validated_body(route.body, request) if route.body is not None else None
        call = Call(request, principal, ids, query, body, address, now_utc())
        result = await handler(call)
        if route.status == 204:
            return web.Response(status=204)
        if isinstance(result, web.StreamResponse):
            return result
        text = pydantic_core.to_json(result).decode() if isinstance(result, list) else result.model_dump_json()
        return web.Response(status=route.status, text=text, content_type="application/json")

    async def _principal(self, request: web.Request) -> Principal | None:
        """The caller of a bearer token; None without one; 401 for a token that is no good."""
        header = request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "send Authorization: Bearer <token>")
        found = await asyncio.to_thread(self.store.principal, credentials.token_hash(token.strip()), now_utc())
        if isinstance(found, str):
            raise ApiError(401, found)
        return found

    def _admit_component(self, request: web.Request, kind: str | None, host_id: str | None) -> None:
        identity = request_identity(request) if self.settings.tls is not None else None
        decision = admit_component(self.settings.tls is not None, identity.name if identity else None,
                                   identity.roles | {identity.role} if identity else frozenset(),
                                   is_loopback(request.remote or ""), kind, host_id)
        if not decision.allowed:
            log.warning("refused a component call from %s: %s", request.remote, decision.reason)
        _enforce(decision)

    async def _validated_body(self, model: type[BaseModel], request: web.Request) -> BaseModel:
        if request.content_length is not None and request.content_length > self.settings.max_body:
            raise ApiError(413, f"the body is larger than {self.settings.max_body} bytes")
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                raw = await request.read()
        except TimeoutError:
            raise ApiError(408, f"the body did not arrive within {BODY_TIMEOUT:g} s") from None
        if not raw.strip():
            raise ApiError(400, "the body must be a JSON object")
        try:
            return model.model_validate_json(raw)
        except ValidationError as error:
            raise ApiError(400, describe_validation(error)) from None

    # --- users and sign-in ---------------------------------------------------------------------------------

    async def sign_in(self, call: Call) -> SignInAnswer:
        body: SignIn = call.body
        keys = (f"name:{body.name.lower()}", f"address:{call.address}")
        wait = self.signin_failures.retry_after(*keys)
        if wait > 0:
            self.failed_signins.inc()
            seconds = max(1, math.ceil(wait))
            raise ApiError(429, f"too many failed sign-ins for this name or from this address: retry in {seconds} s",
                           {"Retry-After": str(seconds)})
        # Counted before the (slow) check, so parallel guesses cannot all slip under the limit.
        self.signin_failures.record_failure(*keys)
        found = await asyncio.to_thread(self.store.password_of, body.name)
        if not await asyncio.to_thread(credentials.verify_password, found[1] if found else None, body.password):
            self.failed_signins.inc()
            log.warning("failed sign-in as %r from %s", body.name[:64], call.address)
            raise ApiError(401, "wrong name or password")
        self.signin_failures.forgive(*keys)
        assert found is not None
        token = credentials.new_token(SESSION)
        expires_at = credentials.session_expiry(call.now, self.settings.session_ttl)
        await asyncio.to_thread(self.store.create_session, found[0], credentials.token_hash(token), expires_at,
                                call.audit(body.name, "password"), call.now)
        return SignInAnswer(token=token, expires_at=expires_at)

    async def me(self, call: Call) -> User:
        assert call.principal is not None
        return await asyncio.to_thread(self.store.get_user, call.principal.user_id)

    async def list_users(self, _: Call) -> list[User]:
        return await asyncio.to_thread(self.store.list_users)

    async def create_user(self, call: Call) -> User:
        body: UserCreate = call.body
        password_hash = await asyncio.to_thread(credentials.hash_password, body.password)
        return await asyncio.to_thread(self.store.create_user, body, password_hash, call.audit(), call.now)

    async def update_user(self, call: Call) -> User:
        body: UserUpdate = call.body
        if "role" in body.model_fields_set and body.role is None:
            raise ApiError(400, "role: a user keeps a role (root or guest)")
        password_hash = (await asyncio.to_thread(credentials.hash_password, body.password)
                         if body.password is not None else None)
        return await asyncio.to_thread(self.store.update_user, call.ids["id"], body.role, password_hash,
                                       call.audit(), call.now)

    async def delete_user(self, call: Call) -> None:
        await asyncio.to_thread(self.store.delete_user, call.ids["id"], call.audit(), call.now)

    # --- tokens --------------------------------------------------------------------------------------------

    async def list_tokens(self, _: Call) -> list[PersonalAccessToken]:
        return await asyncio.to_thread(self.store.list_tokens)

    async def create_token(self, call: Call) -> CreatedToken:
        assert call.principal is not None
        token = credentials.new_token("personal")
        return await asyncio.to_thread(self.store.create_token, call.principal, call.body, token,
                                       credentials.token_hash(token), call.audit(), call.now)

    async def delete_token(self, call: Call) -> None:
        await asyncio.to_thread(self.store.delete_token, call.ids["id"], call.audit(), call.now)

    # --- clusters ------------------------------------------------------------------------------------------

    async def list_clusters(self, _: Call) -> list[Cluster]:
        return await asyncio.to_thread(self.store.list_clusters)

    async def get_cluster(self, call: Call) -> Cluster:
        return await asyncio.to_thread(self.store.get_cluster, call.ids["id"])

    async def create_cluster(self, call: Call) -> Cluster:
        body: ClusterCreate = call.body
        return await asyncio.to_thread(self.store.create_cluster, body, call.audit(), call.now)

    async def update_cluster(self, call: Call) -> Cluster:
        body: ClusterUpdate = call.body
        return await asyncio.to_thread(self.store.update_cluster, call.ids["id"], body, call.audit(), call.now)

    async def delete_cluster(self, call: Call) -> None:
        await asyncio.to_thread(self.store.delete_cluster, call.ids["id"], call.audit(), call.now)

    # --- components ----------------------------------------------------------------------------------------

    async def list_schedulers(self, call: Call) -> list[Component]:
        return await asyncio.to_thread(self.store.list_components, "scheduler", call.query, call.now)

    async def list_seed_peers(self, call: Call) -> list[Component]:
        return await asyncio.to_thread(self.store.list_components, "seed-peer", call.query, call.now)

    async def list_peers(self, call: Call) -> list[Component]:
        return await asyncio.to_thread(self.store.list_components, "peer", call.query, call.now)

    async def register_component(self, call: Call) -> Registration:
        body: ComponentRegistration = call.body
        self._admit_component(call.request, body.kind, body.host_id)
        credential = "certificate" if self.settings.tls is not None else "loopback"
        registration = await asyncio.to_thread(self.store.register, body, call.address,
                                               call.audit(body.host_id, credential), call.now,
                                               self.settings.keepalive_interval)
        log.info("%s %s (%s) registered as component %d in cluster %d", body.kind, body.host_id, body.url,
                 registration.id, registration.cluster_id)
        self._remember_seed_key(call.request, body.kind, body.host_id)
        return registration

    def _remember_seed_key(self, request: web.Request, kind: str, host_id: str) -> None:
        """A seed peer's key, from the certificate it proved membership with: what a private
        preheat's credentials are sealed for."""
        if kind != "seed-peer" or self.settings.tls is None or request.transport is None:
            return
        ssl_object = request.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            try:
                self.seed_keys[host_id] = public_key_of_certificate(der)
            except SealError as error:
                log.warning("seed peer %s: %s; private preheats cannot use it", host_id, error)

    async def keepalive(self, call: Call) -> KeepaliveAnswer:
        component_id = call.ids["id"]
        if self.settings.tls is not None:
            known = await asyncio.to_thread(self.store.component_host, component_id)
            if known is None:
                raise ApiError(404, f"no component with id {component_id}: register again")
            host_id, kind = known
            self._admit_component(call.request, kind, host_id)  # a peer's certificate keeps no scheduler alive
            self._remember_seed_key(call.request, kind, host_id)
        return await asyncio.to_thread(self.store.keepalive, component_id, call.body, call.now)

    # --- tasks and audit -----------------------------------------------------------------------------------

    async def find_task(self, call: Call) -> TasksAnswer:
        query: TaskQuery = call.query
        if (query.digest is None) == (query.image is None):
            raise ApiError(400, "give one of digest= and image=")
        if query.digest is not None:
            digests = [parse_digest(query.digest)]
        else:
            assert query.image is not None
            digests = await asyncio.to_thread(image_digests, query.image, query.plain_http,
                                              self.settings.registries)
        schedulers = await asyncio.to_thread(self.store.schedulers_to_ask, query.cluster_id, call.now)
        return await locate(digests, schedulers, self.asker, query.image)

    # --- jobs -----------------------------------------------------------------------------------------------

    async def create_job(self, call: Call) -> Job:
        body: JobCreate = call.body
        if self.jobs is None:
            raise ApiError(409, self.jobs_refused)
        check_url(body.args.type, body.args.url, self.settings.registries)
        if body.args.type == "file" and body.args.digest is None:
            raise ApiError(400, "args.digest: a file preheat needs the file's digest")
        if body.args.digest is not None:
            parse_digest(body.args.digest)
        job = await asyncio.to_thread(self.store.create_job, body, call.audit().actor, call.audit(), call.now)
        self.jobs.accept(job, body.args)
        log.info("job %d: preheat %s (%s) in clusters %s for %s", job.id, body.args.url, body.args.scope,
                 job.cluster_ids, job.created_by)
        return job

    async def list_jobs(self, call: Call) -> list[Job]:
        return await asyncio.to_thread(self.store.list_jobs, call.query)

    async def get_job(self, call: Call) -> Job:
        return await asyncio.to_thread(self.store.get_job, call.ids["id"])

    async def cancel_job(self, call: Call) -> Job:
        job = await asyncio.to_thread(self.store.cancel_job, call.ids["id"], call.audit(), call.now)
        if self.jobs is not None:
            with contextlib.suppress(*KV_ERRORS):  # the board down: workers stop at the deadline
                await self.jobs.cancel(job)
        return job

    async def list_audit(self, call: Call) -> list[AuditEntry]:
        query: AuditQuery = call.query
        return await asyncio.to_thread(self.store.list_audit, query)


def _aiohttp_path(path: str) -> str:
    """``/clusters/{id}`` as aiohttp routes it: digits only, so ``/users/signin`` and
    ``/users/abc`` never reach a handler that wants an id."""
    return path.replace("{id}", "{id:[0-9]+}")


def _path_id(text: str, path: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_ID:
        raise ApiError(404, f"no such object: {path}")
    return value


def _validated_query(model: type[BaseModel], request: web.Request) -> BaseModel:
    values: dict[str, str] = {}
    for key, value in request.query.items():
        if key in values:
            raise ApiError(400, f"{key}: given more than once")
        values[key] = value
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise ApiError(400, describe_validation(error)) from None


def _enforce(decision: Decision) -> None:
    if not decision.allowed:
        raise ApiError(decision.verdict.value, decision.reason)


async def start_manager(settings: ManagerSettings, board: JobBoard | None = None,
                        signer: Signer | None = None) -> ManagerService:
    """Open the manager's database (migrations, first ``root``) off the event loop; serve
    ``service.application()`` and ``await service.close()`` when done."""
    return await asyncio.to_thread(ManagerService.open, settings, board, signer)

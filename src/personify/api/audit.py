"""The audit log over HTTP: the routes that read it (scope ``audit:read``: owners and admins),
and the ASGI middleware that writes it (docs/privacy.md).

``AuditMiddleware`` sees every Litestar route and records, after the answer was sent:

* every request that is not GET, HEAD or OPTIONS (a change, or an attempt at one);
* every GET or HEAD of a route marked ``opt["per_user"] = True`` (a read of per-user data),
  while ``settings.audit_reads`` is on;
* every 401 and 403 answer (a denied attempt), whatever the method.

Two things are never recorded: the collector's event routes, answered by its fast path in
front of Litestar (events are data, not changes, and at their rate would flood the log), and
``POST /v1/decide`` (a decision reads the user's data by design, at high volume; its
exposures are events already).

The action is the method and the route's path template (``PATCH /v1/experiments/{key}``),
the resource the concrete path (``/v1/experiments/hero-test``), the actor the principal the
guard left in ``connection.state`` (``principal``, or before scopes ``api_key``) or, for a
request the guard refused, the presented credential's first ten characters (its stored
prefix) or ``anonymous``. An audit write that fails never changes the answer: it is logged and
counted in ``AuditMiddleware.audit_failures``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from datetime import datetime
from typing import Annotated, Any, Final

import anyio.to_thread
import msgspec
import sqlalchemy as sa
from litestar import Router, get
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency
from litestar.enums import ScopeType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter
from litestar.response import Stream
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from personify.api.admin import NO_NUL
from personify.api.collector import collector_handlers
from personify.api.documents import admin_responses
from personify.api.guards import BEARER_SECURITY, authorize, needs
from personify.auth.audit import MAX_QUERY_ROWS, AuditLog, AuditRecord, outcome_of
from personify.errors import PersonifyError

__all__ = [
    "NDJSON",
    "UNAUDITED_PATHS",
    "AuditMiddleware",
    "audit_router",
]

logger = logging.getLogger(__name__)

NDJSON: Final = "application/x-ndjson"
# the scope the routes need (owner and admin)
AUDIT_READ: Final = needs("audit:read")

_READS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
# path parameters that name a person
PERSON_PARAMS: Final = frozenset({"id", "user_id"})
_PARAM: Final = re.compile(r"\{(\w+)(?::[^}]*)?\}")
_DENIED: Final = frozenset({401, 403})
# the stored prefix of a key or write key is its first ten characters
_PREFIX_CHARS: Final = 10


def _unaudited_paths() -> frozenset[str]:
    collector = {path for handler in collector_handlers() for path in handler.paths}
    return frozenset({"/v1/decide", *collector})


# the path templates never audited (see the module docstring)
UNAUDITED_PATHS: Final = _unaudited_paths()


# -- the middleware ------------------------------------------------------------------------


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return ""


def _presented(scope: Scope) -> tuple[str, str, dict[str, Any] | None]:
    """The actor of a request no guard admitted: the credential's kind and prefix."""
    header = _header(scope, b"authorization").strip()
    scheme, _, credential = header.partition(" ")
    credential = credential.strip()
    if scheme.lower() == "bearer" and credential:
        if credential.count(".") == 2:
            # an unverified JWT's first characters are its header, the same for everyone
            return "anonymous", "anonymous", {"credential": "token"}
        return "api_key", credential[:_PREFIX_CHARS], None
    if scheme.lower() == "basic" and credential:
        try:
            user = base64.b64decode(credential, validate=True).decode("utf-8").split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            user = ""
        if user:
            return "write_key", user[:_PREFIX_CHARS], None
    return "anonymous", "anonymous", None


def _actor(scope: Scope) -> tuple[str, str, str | None, dict[str, Any] | None]:
    """Who made the request: kind, id, role and details (the principal's name)."""
    state = scope.get("state") or {}
    principal = state.get("principal")
    if principal is None:
        principal = state.get("api_key")
    if principal is not None:
        kind = str(getattr(principal, "kind", "api_key"))
        name = getattr(principal, "name", None)
        role = getattr(principal, "role", None)
        details = {"name": str(name)} if name else None
        return kind, str(principal.id), str(role) if role is not None else None, details
    kind, actor, details = _presented(scope)
    return kind, actor, None, details


class AuditMiddleware:
    """Writes an audit record for the requests the module docstring lists, after the answer.

    Give the instance to ``Litestar(middleware=[...])``: Litestar calls it with each route's
    ASGI app and gets back that app wrapped (``AuditedRoute``), so one instance, and its
    ``audit_failures`` count, serves every route.
    """

    def __init__(
        self,
        audit: AuditLog,
        *,
        audit_reads: bool = True,
        unaudited_paths: Collection[str] = UNAUDITED_PATHS,
        pseudonymize: Callable[[str], str] | None = None,
    ) -> None:
        self.audit = audit
        self.audit_reads = audit_reads
        # a person's id in a path (``{id}``, ``{user_id}``) is recorded as its keyed hash:
        # the audit log is never erased, so it must not hold who the person was
        self.pseudonymize = pseudonymize
        self.unaudited_paths = frozenset(unaudited_paths)
        self._failures = 0
        self._lock = threading.Lock()

    @property
    def audit_failures(self) -> int:
        """Audit records that could not be written since start (each one is logged)."""
        return self._failures

    def __call__(self, app: ASGIApp) -> ASGIApp:
        """Wrap one route's ASGI app (Litestar calls this with ``app=``)."""
        return AuditedRoute(app, self)

    def is_audited(self, scope: HTTPScope, status: int) -> bool:
        """Whether the request in ``scope``, answered with ``status``, gets a record."""
        if scope.get("path_template") in self.unaudited_paths:
            return False
        if status in _DENIED or scope["method"] not in _READS:
            return True
        if scope["method"] == "OPTIONS" or not self.audit_reads:
            return False
        handler = scope.get("route_handler")
        return handler is not None and bool(handler.opt.get("per_user"))

    def record_for(self, scope: HTTPScope, status: int, at: datetime) -> AuditRecord:
        """The record of one answered request."""
        kind, actor, role, details = _actor(scope)
        template = scope.get("path_template") or scope["path"]
        client = scope.get("client")
        return AuditRecord(
            at=at,
            actor_kind=kind,
            actor=actor,
            role=role,
            action=f"{scope['method']} {template}",
            resource=self._resource(scope, template),
            status=status,
            outcome=outcome_of(status),
            source=str(client[0]) if client else None,
            details=details,
        )

    def _resource(self, scope: HTTPScope, template: str) -> str:
        """The concrete path, with a person's ids pseudonymized."""
        params = scope.get("path_params") or {}
        if self.pseudonymize is None or not PERSON_PARAMS.intersection(params):
            return scope["path"]
        pseudonymize = self.pseudonymize

        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            value = str(params.get(name, match.group(0)))
            return pseudonymize(value) if name in PERSON_PARAMS else value

        return _PARAM.sub(fill, template)

    def write(self, record: AuditRecord) -> None:
        """Append ``record``; a failure is logged and counted, never raised."""
        try:
            self.audit.append(record)
        # the state database down or refusing the row: the answer stands, the gap is counted
        except (PersonifyError, sa.exc.SQLAlchemyError, OSError):
            with self._lock:
                self._failures += 1
            logger.exception("audit record not written: %s %s", record.action, record.resource)


class AuditedRoute:
    """One route's ASGI app, audited by its ``AuditMiddleware``."""

    def __init__(self, app: ASGIApp, middleware: AuditMiddleware) -> None:
        self.app = app
        self.middleware = middleware

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request, then write its record in a thread (if it is audited)."""
        if (
            scope["type"] != ScopeType.HTTP
            or scope.get("path_template") in self.middleware.unaudited_paths
        ):
            await self.app(scope, receive, send)
            return
        at = self.middleware.audit.clock.now()
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            # an error past every handler still tried a change: recorded as failed, re-raised
            await self._record(scope, status or 500, at)
            raise
        await self._record(scope, status, at)

    async def _record(self, scope: HTTPScope, status: int, at: datetime) -> None:
        if not self.middleware.is_audited(scope, status):
            return
        record = self.middleware.record_for(scope, status, at)
        await anyio.to_thread.run_sync(self.middleware.write, record)


# -- the routes ----------------------------------------------------------------------------


class AuditEntryDocument(msgspec.Struct):
    """One audit record and its place in the chain."""

    id: int
    at: Annotated[str, msgspec.Meta(description="ISO-8601 UTC")]
    actorKind: Annotated[
        str, msgspec.Meta(description="api_key, token, write_key, cli, system or anonymous")
    ]
    actor: Annotated[str, msgspec.Meta(description="the key's id, the subject, or a prefix")]
    role: str | None
    action: Annotated[str, msgspec.Meta(description="e.g. PATCH /v1/experiments/{key}")]
    resource: Annotated[str, msgspec.Meta(description="e.g. /v1/experiments/hero-test")]
    status: Annotated[int, msgspec.Meta(description="the HTTP status or the CLI's exit code")]
    outcome: Annotated[str, msgspec.Meta(description="ok, denied or failed")]
    source: Annotated[str | None, msgspec.Meta(description="the client's address or host")]
    details: dict[str, Any] | None
    prevHash: str
    hash: str


class AuditPage(msgspec.Struct):
    """Audit records oldest first; ``next`` is the ``after`` of the next page."""

    data: list[AuditEntryDocument]
    next: int | None


class AuditVerification(msgspec.Struct):
    """The chain checked end to end: ``ok``, or the first broken record and why."""

    ok: bool
    records: Annotated[int, msgspec.Meta(description="records checked before any break")]
    headId: int | None
    headHash: Annotated[str | None, msgspec.Meta(description="keep it elsewhere as an anchor")]
    brokenId: int | None
    reason: Annotated[str | None, msgspec.Meta(description="altered, removed or head_mismatch")]
    message: str | None


Actor = Annotated[
    str | None,
    QueryParameter(max_length=512, pattern=NO_NUL, description="only this actor's (a key's id…)"),
]
Action = Annotated[
    str | None,
    QueryParameter(
        max_length=300, pattern=NO_NUL, description="only this action (PATCH /v1/segments/{key})"
    ),
]
Resource = Annotated[
    str | None,
    QueryParameter(
        max_length=1000, pattern=NO_NUL, description="only resources starting with this path"
    ),
]
Since = Annotated[
    datetime | None, QueryParameter(description="records at or after this time (ISO-8601)")
]
Until = Annotated[
    datetime | None, QueryParameter(description="records before this time (ISO-8601)")
]


@get("/v1/audit", opt=AUDIT_READ, responses=admin_responses())
async def list_audit(
    audit: NamedDependency[AuditLog],
    actor: Actor = None,
    action: Action = None,
    resource: Resource = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_QUERY_ROWS, description="page size")] = 100,
    after: Annotated[
        int, QueryParameter(ge=0, le=2**62, description="the `next` of the previous page")
    ] = 0,
) -> AuditPage:
    """Audit records oldest first, by actor, action, resource prefix and time."""
    found = await sync_to_thread(
        audit.query,
        actor=actor,
        action=action,
        resource_prefix=resource,
        since=since,
        until=until,
        limit=limit,
        after_id=after,
    )
    return AuditPage(
        data=[msgspec.convert(entry.to_document(), AuditEntryDocument) for entry in found],
        next=found[-1].id if len(found) == limit else None,
    )


def _chunks(lines: Iterator[bytes], size: int = 500) -> Callable[[], bytes]:
    """A function giving the next ``size`` lines as one chunk (empty at the end)."""

    def take() -> bytes:
        chunk = bytearray()
        for _ in range(size):
            line = next(lines, None)
            if line is None:
                break
            chunk += line
        return bytes(chunk)

    return take


async def _streamed(lines: Iterator[bytes]) -> AsyncIterator[bytes]:
    # a thread hop per chunk of lines, not per line
    take = _chunks(lines)
    while chunk := await sync_to_thread(take):
        yield chunk


@get(
    "/v1/audit/export",
    opt=AUDIT_READ,
    media_type=NDJSON,
    responses={
        200: ResponseSpec(
            str,
            description="JSON lines, one record each (as in GET /v1/audit), oldest first",
            media_type=NDJSON,
        ),
        **admin_responses(),
    },
)
async def export_audit(
    audit: NamedDependency[AuditLog],
    actor: Actor = None,
    action: Action = None,
    resource: Resource = None,
    since: Since = None,
    until: Until = None,
) -> Stream:
    """Every matching audit record as JSON lines, with their hashes (the chain goes along)."""
    lines = audit.export(
        actor=actor, action=action, resource_prefix=resource, since=since, until=until
    )
    return Stream(
        _streamed(lines),
        media_type=NDJSON,
        headers={
            "content-disposition": 'attachment; filename="audit.jsonl"',
            "cache-control": "no-store",
        },
    )


@get("/v1/audit/verify", opt=AUDIT_READ, responses=admin_responses(parameters=False))
async def verify_audit(audit: NamedDependency[AuditLog]) -> AuditVerification:
    """Walk the whole chain: every hash, every link, no gaps, and the head at the end."""
    report = await sync_to_thread(audit.verify)
    return msgspec.convert(report.to_document(), AuditVerification)


def audit_router() -> Router:
    """The audit log's routes, behind the API key guard (scope ``audit:read``)."""
    return Router(
        "/",
        route_handlers=[list_audit, export_audit, verify_audit],
        guards=[authorize],
        security=BEARER_SECURITY,
        tags=["audit"],
    )

"""The sources-and-keys page (``/console/keys``): sources with their write keys, API keys with
their roles, expiry and last use; create, rotate and revoke them (scope ``keys:write``).

A new secret (a source's write key, a key's secret after creation or rotation) is shown once,
on the page the form's POST answers with: it is never stored (only its hash is), never put in
a redirect's URL, and the page is ``Cache-Control: no-store``. Revocations answer with a
redirect back to the list (post/redirect/get).

The same repositories as ``personify sources`` and ``personify keys`` do the work
(``runtime.sources``, ``runtime.api_keys``). Owner keys are managed only by a role with the
``owner`` scope (``personify.auth.roles``): an admin may neither create one nor rotate or
revoke one.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Final

from litestar import Request, Response, get, post
from litestar.concurrency import sync_to_thread
from litestar.enums import RequestEncodingType
from litestar.params import Body, PathParameter, QueryParameter
from litestar.response import Redirect

from personify.auth.keys import ApiKey
from personify.auth.roles import ROLES, SCOPES, allows
from personify.errors import Forbidden, NotFound, ValidationError
from personify.runtime import Runtime
from personify.ui.rendering import page_headers, render
from personify.ui.session import current_session, page, runtime_of

__all__ = ["ROUTES"]

_SCOPE: Final = "keys:write"
_PAGE: Final = "/console/keys"
_MAX_NAME_CHARS: Final = 200
# bounds of the forms' numbers: ten years of expiry, a year of overlap
_MAX_EXPIRY_DAYS: Final = 3650
_MAX_OVERLAP_HOURS: Final = 8760
_DEFAULT_OVERLAP_HOURS: Final = 24
# what a redirect back to the list may say (a code in the URL, never free text)
_NOTICES: Final = {
    "source_revoked": "The source's write key is revoked: its events are refused from now on.",
    "key_revoked": "The key is revoked: it and its console sessions no longer work.",
}

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
SourceId = Annotated[str, PathParameter(max_length=_MAX_NAME_CHARS, description="a source's id")]
KeyId = Annotated[str, PathParameter(max_length=_MAX_NAME_CHARS, description="an API key's id")]


def _manages_owners(request: Request[Any, Any, Any]) -> bool:
    return allows(current_session(request).role, "owner")


def _refuse_owner_key(request: Request[Any, Any, Any], role: str) -> None:
    """Owner keys are an owner's to create, rotate and revoke."""
    if role == "owner" and not _manages_owners(request):
        raise Forbidden(
            f"owner keys are managed by an owner only ({SCOPES['owner']})",
            code="owner_key",
        )


def _name(data: dict[str, str]) -> str:
    name = data.get("name", "").strip()
    if not name:
        raise ValidationError("give it a name", code="invalid_name")
    if len(name) > _MAX_NAME_CHARS or "\x00" in name:
        raise ValidationError(
            f"a name has at most {_MAX_NAME_CHARS} characters", code="invalid_name"
        )
    return name


def _whole_number(data: dict[str, str], field: str, low: int, high: int) -> int | None:
    """A form's optional whole number between ``low`` and ``high``."""
    text = data.get(field, "").strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise ValidationError(
            f"{field.replace('_', ' ')} is a whole number from {low} to {high}",
            code="invalid_parameter",
            details={"parameter": field},
        )
    return int(text)


def _key_of(runtime: Runtime, key_id: str) -> ApiKey:
    for key in runtime.api_keys.list():
        if key.id == key_id:
            return key
    raise NotFound(f"no API key {key_id!r}", code="key_not_found")


def _state(key: ApiKey, runtime: Runtime) -> str:
    now = runtime.clock.now()
    if not key.is_active:
        return "revoked"
    if key.has_expired(now):
        return "expired"
    if key.previous_expires_at is not None and key.previous_expires_at > now:
        return "rotating"
    return "active"


def _secret_page(
    request: Request[Any, Any, Any],
    *,
    heading: str,
    what: str,
    name: str,
    secret: str,
    note: str,
    status_code: int = 200,
) -> Response[str]:
    return render(
        request,
        "keys_secret.html",
        status_code=status_code,
        title=heading,
        heading=heading,
        what=what,
        name=name,
        secret=secret,
        note=note,
    )


@get("/keys", opt=page(_SCOPE), name="console:keys")
async def keys_page(
    request: Request[Any, Any, Any],
    notice: Annotated[str | None, QueryParameter(max_length=40)] = None,
) -> Response[str]:
    """Sources and API keys, with the forms that change them."""
    runtime = runtime_of(request)
    sources = await sync_to_thread(runtime.sources.list)
    keys = await sync_to_thread(runtime.api_keys.list)
    owners = _manages_owners(request)
    return render(
        request,
        "keys.html",
        title="Sources & keys",
        notice=_NOTICES.get(notice or ""),
        sources=sources,
        keys=[{"key": key, "state": _state(key, runtime)} for key in keys],
        roles=[role for role in ROLES if role != "owner" or owners],
        manages_owners=owners,
        default_overlap_hours=_DEFAULT_OVERLAP_HOURS,
        max_overlap_hours=_MAX_OVERLAP_HOURS,
        max_expiry_days=_MAX_EXPIRY_DAYS,
    )


@post("/keys/sources", opt=page(_SCOPE), name="console:keys-create-source", status_code=201)
async def create_source(request: Request[Any, Any, Any], data: Form) -> Response[str]:
    """A new source; its write key is shown on this answer only."""
    name = _name(data)
    source, write_key = await sync_to_thread(runtime_of(request).sources.create, name)
    return _secret_page(
        request,
        heading="Source created",
        what="write key",
        name=source.name,
        secret=write_key,
        note="Give it to the tracker or SDK that sends this source's events.",
        status_code=201,
    )


@post(
    "/keys/sources/{source_id:str}/revoke",
    opt=page(_SCOPE),
    name="console:keys-revoke-source",
    status_code=303,
)
async def revoke_source(request: Request[Any, Any, Any], source_id: SourceId) -> Redirect:
    """Revoke a source's write key."""
    await sync_to_thread(runtime_of(request).sources.revoke, source_id)
    return Redirect(f"{_PAGE}?notice=source_revoked", status_code=303, headers=page_headers())


@post("/keys/api-keys", opt=page(_SCOPE), name="console:keys-create-key", status_code=201)
async def create_key(request: Request[Any, Any, Any], data: Form) -> Response[str]:
    """A new API key with a role and an optional expiry; its secret is shown once."""
    runtime = runtime_of(request)
    name = _name(data)
    role = data.get("role", "")
    if role not in ROLES:
        raise ValidationError(f"role must be one of {', '.join(ROLES)}", code="invalid_role")
    _refuse_owner_key(request, role)
    days = _whole_number(data, "expires_days", 1, _MAX_EXPIRY_DAYS)
    expires_at = runtime.clock.now() + timedelta(days=days) if days is not None else None
    key, secret = await sync_to_thread(
        lambda: runtime.api_keys.create(name, role, expires_at=expires_at)
    )
    until = f", until {key.expires_at:%Y-%m-%d %H:%M} UTC" if key.expires_at else ""
    return _secret_page(
        request,
        heading="API key created",
        what=f"API key ({key.role}{until})",
        name=key.name,
        secret=secret,
        note="Send it as Authorization: Bearer <key>, or sign in to the console with it.",
        status_code=201,
    )


@post(
    "/keys/api-keys/{key_id:str}/rotate",
    opt=page(_SCOPE),
    name="console:keys-rotate-key",
    status_code=200,
)
async def rotate_key(request: Request[Any, Any, Any], key_id: KeyId, data: Form) -> Response[str]:
    """Give a key a new secret (shown once); the old one works for the overlap's hours."""
    runtime = runtime_of(request)
    hours = _whole_number(data, "overlap_hours", 0, _MAX_OVERLAP_HOURS)
    overlap = timedelta(hours=_DEFAULT_OVERLAP_HOURS if hours is None else hours)
    key = await sync_to_thread(_key_of, runtime, key_id)
    _refuse_owner_key(request, key.role)
    rotated, secret = await sync_to_thread(lambda: runtime.api_keys.rotate(key.id, overlap=overlap))
    old = (
        f"The old secret works until {rotated.previous_expires_at:%Y-%m-%d %H:%M} UTC."
        if overlap and rotated.previous_expires_at
        else "The old secret no longer works."
    )
    return _secret_page(
        request,
        heading="API key rotated",
        what=f"API key ({rotated.role})",
        name=rotated.name,
        secret=secret,
        note=f"{old} Move its clients over to this one.",
    )


@post(
    "/keys/api-keys/{key_id:str}/revoke",
    opt=page(_SCOPE),
    name="console:keys-revoke-key",
    status_code=303,
)
async def revoke_key(request: Request[Any, Any, Any], key_id: KeyId) -> Redirect:
    """Revoke an API key (its console sessions end with it)."""
    runtime = runtime_of(request)
    key = await sync_to_thread(_key_of, runtime, key_id)
    _refuse_owner_key(request, key.role)
    await sync_to_thread(runtime.api_keys.revoke, key.id)
    return Redirect(f"{_PAGE}?notice=key_revoked", status_code=303, headers=page_headers())


ROUTES = [keys_page, create_source, revoke_source, create_key, rotate_key, revoke_key]

"""Roles and scopes: what each kind of caller may do (docs/security.md).

Every API route declares the one scope it needs (``opt={"scope": ...}``, shown in the OpenAPI
document); one guard admits a caller whose role grants that scope. A role is a fixed set of
scopes:

* ``owner``: everything;
* ``admin``: everything but managing owner keys;
* ``editor``: content, segments, experiments (read and change), and aggregates;
* ``analyst``: reads: profiles and other per-user data, segments and their members,
  experiments' results, models, content, SQL, aggregates;
* ``viewer``: aggregates only: definitions, sizes, results, no per-user data;
* ``service``: decisions and recommendations only.

Write keys are not roles: they send events and ask for the public decision shape.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ROLES", "ROLE_SCOPES", "SCOPES", "allows", "legacy_role"]

# every scope a route may need, with what it admits
SCOPES: Final[dict[str, str]] = {
    "aggregates:read": "counts, sizes, statistics, definitions: nothing about one user",
    "profiles:read": "per-user data: profiles, histories, members, predictions, exports",
    "profiles:write": "change or erase per-user data (privacy requests, consent)",
    "segments:read": "segment definitions and statistics",
    "segments:write": "create, change, backfill and delete segments and clusterings",
    "content:read": "the content catalog and placements",
    "content:write": "change the catalog, placements and content webhooks",
    "experiments:read": "experiment definitions and results",
    "experiments:write": "create, start, stop and change experiments",
    "models:read": "models, their evaluations and monitoring",
    "models:write": "train, promote and roll back models",
    "decide": "decisions with their trace, and recommendations",
    "sql": "read-only SQL over the warehouse",
    "ops:read": "the worker's state, dead letters, quality checks",
    "ops:write": "replay dead letters, run jobs",
    "keys:write": "create, rotate and revoke sources and API keys (not owner keys)",
    "owner": "create, rotate and revoke owner keys",
    "audit:read": "the audit log",
}

_READS: Final = frozenset(
    {
        "aggregates:read",
        "profiles:read",
        "segments:read",
        "content:read",
        "experiments:read",
        "models:read",
        "sql",
        "ops:read",
    }
)

ROLE_SCOPES: Final[dict[str, frozenset[str]]] = {
    "owner": frozenset(SCOPES),
    "admin": frozenset(SCOPES) - {"owner"},
    "editor": frozenset(
        {
            "aggregates:read",
            "segments:read",
            "segments:write",
            "content:read",
            "content:write",
            "experiments:read",
            "experiments:write",
        }
    ),
    "analyst": _READS,
    "viewer": frozenset(
        {"aggregates:read", "segments:read", "content:read", "experiments:read", "models:read"}
    ),
    "service": frozenset({"decide"}),
}

ROLES: Final = tuple(ROLE_SCOPES)


def allows(role: str, scope: str) -> bool:
    """Whether ``role`` grants ``scope`` (an unknown role grants nothing)."""
    return scope in ROLE_SCOPES.get(role, frozenset())


def legacy_role(role: str) -> str:
    """The role a key created before roles had scopes has now (``read`` became
    ``analyst``)."""
    return "analyst" if role == "read" else role

"""Each profile's current predictions (``profile_predictions``): what the worker's prediction
stage wrote for it, read by the profile document and by segment conditions.

A value is the JSON the API shows under ``predictions.<target>``: for ``churn``
``{"probability", "model", "version", "scoredAt", "reasons", "coldStart"}``, for ``clv``
``{"expectedRevenue", "expectedOrders", …}``; or ``{"status": "unavailable", "reason"}`` when
the served model could not be used (the profile says so, nothing else stops).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import msgspec
import sqlalchemy as sa

from personify.profiles.tables import profile_predictions

__all__ = ["forget_predictions", "read_predictions", "write_predictions"]

# IN lists are cut to this many values (SQLite binds at most 32,766 parameters)
_CHUNK = 500
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


# built once: a decision reads one profile's predictions whenever its facts are not cached
_READ: Final = sa.select(
    profile_predictions.c.profile_id, profile_predictions.c.target, profile_predictions.c.value
).where(profile_predictions.c.profile_id.in_(sa.bindparam("ids", expanding=True)))


def read_predictions(conn: sa.Connection, profile_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The predictions of ``profile_ids``: profile -> target -> value (profiles without any
    are left out)."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(profile_ids), _CHUNK):
        chunk = list(profile_ids[start : start + _CHUNK])
        for pid, target, value in conn.execute(_READ, {"ids": chunk}):
            found.setdefault(str(pid), {})[str(target)] = _decode(value)
    return found


def forget_predictions(conn: sa.Connection, profile_ids: Iterable[str]) -> None:
    """Drop every prediction of ``profile_ids`` (merged away, or consent withdrawn)."""
    gone = list(profile_ids)
    c = profile_predictions.c
    for start in range(0, len(gone), _CHUNK):
        conn.execute(
            profile_predictions.delete().where(c.profile_id.in_(gone[start : start + _CHUNK]))
        )


def write_predictions(
    conn: sa.Connection,
    target: str,
    values: Mapping[str, tuple[int | None, Mapping[str, Any]]],
    scored_at: datetime,
) -> None:
    """Replace ``target``'s prediction of each profile in ``values`` (profile -> (model id,
    value))."""
    c = profile_predictions.c
    stale = list(values)
    for start in range(0, len(stale), _CHUNK):
        conn.execute(
            profile_predictions.delete().where(
                c.target == target, c.profile_id.in_(stale[start : start + _CHUNK])
            )
        )
    rows = [
        {
            "profile_id": pid,
            "target": target,
            "model_id": model_id,
            "value": _encode(value).decode(),
            "scored_at": scored_at,
        }
        for pid, (model_id, value) in values.items()
    ]
    if rows:
        conn.execute(profile_predictions.insert(), rows)

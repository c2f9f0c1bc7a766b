"""The model registry: every trained version of a target with its file, checksum, features,
lineage and report, and the promotions that decide which version is served.

A version's file lies in the models folder (``PERSONIFY_MODELS_DIR``, by default ``models``
beside the lake in ``data_dir``); the registry keeps its SHA-256, and ``load`` checks it
before reading the file (``personify.predict.learning.load_model``: JSON and LightGBM's text
format, never a pickle).

Promotions are append-only: a target's served version is the one its newest promotion names,
so ``rollback`` is a new promotion of the version served before.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa

from personify.clock import Clock, SystemClock, format_timestamp
from personify.errors import Conflict, NotFound
from personify.predict.learning import Model, checksum, dump_model, load_model
from personify.predict.tables import prediction_models, prediction_promotions
from personify.predict.targets import Target
from personify.store.database import Database

__all__ = ["ModelRegistry", "ModelVersion"]

_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One registered version of a target's model."""

    id: int
    target: Target
    number: int
    status: str
    file: str
    sha256: str
    features: dict[str, Any]
    definitions: str
    lineage_id: str | None
    report: dict[str, Any]
    as_of: datetime
    created_at: datetime
    served: bool = False

    def to_dict(self, *, full: bool = False) -> dict[str, Any]:
        """The version as the API and the CLI show it (``full``: the whole report)."""
        summary: dict[str, Any] = {
            "id": self.id,
            "target": self.target.name,
            "targetKey": self.target.key,
            "horizonDays": self.target.horizon_days,
            "event": self.target.event,
            "version": self.number,
            "status": self.status,
            "served": self.served,
            "asOf": format_timestamp(self.as_of),
            "createdAt": format_timestamp(self.created_at),
            "kind": self.report.get("kind"),
            "validation": self.report.get("validation", {}).get("method"),
            "metric": self.report.get("gate", {}).get("metric"),
            "value": self.report.get("gate", {}).get("candidate"),
            "baselineValue": self.report.get("gate", {}).get("baseline"),
            "gate": self.report.get("gate", {}).get("decision"),
            "sha256": self.sha256,
            "lineageId": self.lineage_id,
        }
        if full:
            summary["file"] = self.file
            summary["features"] = self.features
            summary["definitions"] = self.definitions
            summary["report"] = self.report
        return summary


class ModelRegistry:
    """Model versions and promotions in the state database, files in ``models_dir``."""

    def __init__(self, db: Database, models_dir: Path, *, clock: Clock | None = None) -> None:
        self._db = db
        self._dir = Path(models_dir)
        self._clock = clock or SystemClock()
        self._loaded: dict[int, Model] = {}
        self._lock = threading.Lock()

    # -- writing -----------------------------------------------------------------------------

    def register(
        self,
        model: Model,
        *,
        as_of: datetime,
        definitions: str,
        lineage_id: str | None,
        report: Mapping[str, Any],
        status: str,
    ) -> ModelVersion:
        """Write the model's file and record it as the target's next version."""
        target = model.target
        data = dump_model(model)
        digest = checksum(data)
        folder = self._dir / _SLUG.sub("-", target.key.lower()).strip("-")
        folder.mkdir(parents=True, exist_ok=True)
        now = self._clock.now()
        with self._db.engine.begin() as conn:
            number = 1 + int(
                conn.execute(
                    sa.select(sa.func.coalesce(sa.func.max(prediction_models.c.number), 0)).where(
                        prediction_models.c.target_key == target.key
                    )
                ).scalar_one()
            )
            path = folder / f"v{number}-{digest[:12]}.json"
            tmp = path.with_suffix(".json.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
            inserted = conn.execute(
                prediction_models.insert().values(
                    target_key=target.key,
                    target=target.name,
                    horizon_days=target.horizon_days,
                    event=target.event,
                    number=number,
                    status=status,
                    file=str(path),
                    sha256=digest,
                    features=msgspec.json.encode(model.spec.to_dict()).decode(),
                    definitions=definitions,
                    lineage_id=lineage_id,
                    report=msgspec.json.encode(report).decode(),
                    as_of=as_of,
                    created_at=now,
                )
            ).inserted_primary_key
            assert inserted is not None
            row_id = inserted[0]
        with self._lock:
            self._loaded[int(row_id)] = model
        return self.get(int(row_id))

    def promote(self, model_id: int, *, reason: str = "manual") -> ModelVersion:
        """Serve ``model_id`` for its target from now on (its file must still check out)."""
        version = self.get(model_id)
        self.load(version)
        with self._db.engine.begin() as conn:
            conn.execute(
                prediction_promotions.insert().values(
                    target_key=version.target.key,
                    target=version.target.name,
                    model_id=version.id,
                    reason=reason,
                    promoted_at=self._clock.now(),
                )
            )
            conn.execute(
                prediction_models.update()
                .where(prediction_models.c.id == version.id)
                .values(status="promoted")
            )
        return self.get(model_id)

    def rollback(self, target_name: str) -> ModelVersion:
        """Serve again the version served before the current one.

        Raises ``NotFound`` when nothing is served, ``Conflict`` when nothing was before."""
        history = self.promotions(target_name)
        if not history:
            raise NotFound(f"no {target_name} model is served", code="no_served_model")
        current = history[0]["modelId"]
        earlier = next((p["modelId"] for p in history if p["modelId"] != current), None)
        if earlier is None:
            raise Conflict(
                f"no {target_name} model was served before version {current}: nothing to roll "
                "back to",
                code="nothing_to_roll_back",
            )
        return self.promote(earlier, reason="rollback")

    # -- reading -----------------------------------------------------------------------------

    def promotions(self, target_name: str) -> list[dict[str, Any]]:
        """A target's promotions, newest first."""
        with self._db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(prediction_promotions)
                .where(prediction_promotions.c.target == target_name)
                .order_by(prediction_promotions.c.id.desc())
            ).all()
        return [
            {
                "modelId": int(r.model_id),
                "targetKey": r.target_key,
                "reason": r.reason,
                "promotedAt": format_timestamp(r.promoted_at),
            }
            for r in rows
        ]

    def served_ids(self) -> dict[str, int]:
        """Each target's served version id (``churn``, ``clv``)."""
        newest = (
            sa.select(sa.func.max(prediction_promotions.c.id))
            .group_by(prediction_promotions.c.target)
            .scalar_subquery()
        )
        with self._db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(prediction_promotions.c.target, prediction_promotions.c.model_id).where(
                    prediction_promotions.c.id.in_(newest)
                )
            ).all()
        return {r.target: int(r.model_id) for r in rows}

    def served(self, target_name: str) -> ModelVersion | None:
        """The version served for a target, if any."""
        model_id = self.served_ids().get(target_name)
        return None if model_id is None else self.get(model_id)

    def get(self, model_id: int) -> ModelVersion:
        """One version; raises ``NotFound``."""
        with self._db.engine.connect() as conn:
            row = conn.execute(
                sa.select(prediction_models).where(prediction_models.c.id == model_id)
            ).first()
        if row is None:
            raise NotFound(f"no model version {model_id}", code="model_not_found")
        return self._version(row, self.served_ids())

    def versions(self, target_name: str | None = None) -> list[ModelVersion]:
        """Every version (of one target), newest first."""
        query = sa.select(prediction_models).order_by(prediction_models.c.id.desc())
        if target_name is not None:
            query = query.where(prediction_models.c.target == target_name)
        served = self.served_ids()
        with self._db.engine.connect() as conn:
            return [self._version(r, served) for r in conn.execute(query).all()]

    def served_for(self, target: Target) -> ModelVersion | None:
        """The served version when it is of exactly this target (horizon and event too)."""
        version = self.served(target.name)
        return version if version is not None and version.target.key == target.key else None

    def load(self, version: ModelVersion) -> Model:
        """The version's model, read once and kept (its checksum checked on that read)."""
        with self._lock:
            model = self._loaded.get(version.id)
        if model is not None:
            return model
        try:
            data = Path(version.file).read_bytes()
        except OSError as exc:
            raise NotFound(
                f"the file of model version {version.id} is missing ({version.file})",
                code="model_file_missing",
            ) from exc
        model = load_model(data, version.sha256)
        with self._lock:
            self._loaded[version.id] = model
        return model

    @staticmethod
    def _version(row: Any, served: Mapping[str, int]) -> ModelVersion:
        return ModelVersion(
            id=int(row.id),
            target=Target(row.target, float(row.horizon_days), row.event),
            number=int(row.number),
            status=row.status,
            file=row.file,
            sha256=row.sha256,
            features=msgspec.json.decode(row.features),
            definitions=row.definitions,
            lineage_id=row.lineage_id,
            report=msgspec.json.decode(row.report),
            as_of=row.as_of,
            created_at=row.created_at,
            served=served.get(row.target) == int(row.id),
        )

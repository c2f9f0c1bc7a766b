"""The tables predictions own: model versions (the registry), the history of promotions and
the monitoring checks.
(Each profile's current predictions are part of the profile: ``personify.profiles.tables``.)"""

from __future__ import annotations

import sqlalchemy as sa

from personify.store.tables import RowId, Timestamp, metadata

# every trained version of a target (``churn:30d:*``), numbered from 1 per target; the file
# beside it holds the model itself, ``sha256`` the file's checksum
prediction_models = sa.Table(
    "prediction_models",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("target_key", sa.String(300), nullable=False),
    sa.Column("target", sa.String(16), nullable=False),
    sa.Column("horizon_days", sa.Float, nullable=False),
    sa.Column("event", sa.String(200), nullable=True),
    sa.Column("number", sa.Integer, nullable=False),
    # "promoted" when the gate let it through once, "kept" when it did not
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("file", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    # the feature columns it reads (JSON), and the feature definitions' digest
    sa.Column("features", sa.Text, nullable=False),
    sa.Column("definitions", sa.String(64), nullable=False),
    sa.Column("lineage_id", sa.String(64), nullable=True),
    # the training report (JSON): validation metrics beside the baseline's and the current
    # version's, the gate's decision, the monitoring reference
    sa.Column("report", sa.Text, nullable=False),
    sa.Column("as_of", Timestamp(), nullable=False),
    sa.Column("created_at", Timestamp(), nullable=False),
    sa.UniqueConstraint("target_key", "number", name="prediction_models_number"),
)

# every promotion, rollbacks included; a target's served version is its newest row
prediction_promotions = sa.Table(
    "prediction_promotions",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("target_key", sa.String(300), nullable=False),
    sa.Column("target", sa.String(16), nullable=False),
    sa.Column("model_id", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.String(16), nullable=False),
    sa.Column("promoted_at", Timestamp(), nullable=False),
    sa.Index("prediction_promotions_target", "target", "id"),
)

# every monitoring check of a served model: drift of its features and scores against its
# training, the realised performance of cohorts whose horizon has passed, and the alerts
prediction_checks = sa.Table(
    "prediction_checks",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("target", sa.String(16), nullable=False),
    sa.Column("model_id", sa.BigInteger, nullable=False),
    sa.Column("checked_at", Timestamp(), nullable=False),
    sa.Column("alert", sa.Boolean, nullable=False),
    sa.Column("report", sa.Text, nullable=False),
    sa.Index("prediction_checks_target", "target", "id"),
)

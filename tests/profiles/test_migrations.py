"""A database made before profiles, by the pre-Alembic migrations, keeps its data and gains the
profile tables when it is adopted by Alembic."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from personify.ingest.tables import sources
from personify.profiles.events import view_event
from personify.profiles.features import FeatureSet
from personify.profiles.processor import ProfileProcessor
from personify.profiles.repository import ProfileRepository
from personify.store import migrations
from personify.store.database import Database
from tests.profiles.factory import event

PROFILE_TABLES = {
    "identities",
    "profiles",
    "profile_versions",
    "applied_events",
    "profile_merges",
    "worker_heartbeats",
}
# what the first two pre-Alembic migrations created (the third added the profile tables)
BEFORE_PROFILES = ["sources", "api_keys", "failed_events", "quality_runs", "lineage"]


def test_upgrade_from_the_schema_before_profiles_keeps_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = sa.create_engine(url)
    schema = migrations.target_metadata()
    schema_version = sa.Table(
        "schema_version",
        sa.MetaData(),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    )
    now = datetime.now(UTC)
    with engine.begin() as conn:
        schema_version.create(conn)
        schema.create_all(conn, tables=[schema.tables[name] for name in BEFORE_PROFILES])
        conn.execute(
            schema_version.insert(),
            [{"version": 1, "applied_at": now}, {"version": 2, "applied_at": now}],
        )
        conn.execute(
            sources.insert().values(
                id="s1",
                name="web",
                write_key_hash="h" * 64,
                write_key_prefix="wk_123",
                created_at=now,
            )
        )
    assert not PROFILE_TABLES & set(sa.inspect(engine).get_table_names())
    engine.dispose()

    db = Database(url)
    try:
        tables = set(sa.inspect(db.engine).get_table_names())
        assert tables >= PROFILE_TABLES
        assert "schema_version" not in tables
        with db.engine.connect() as conn:
            assert conn.execute(sa.select(sources.c.name)).scalars().all() == ["web"]
            assert migrations.current_revision(conn) == migrations.head()
        features = FeatureSet()
        ProfileProcessor(db, features).apply([view_event(event("page", "m", 0, user_id="jo"))])
        assert ProfileRepository(db, features).find("jo") is not None
        assert db.upgrade() == []
    finally:
        db.dispose()

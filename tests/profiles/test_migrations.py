"""Upgrading a database from before profiles keeps its data and adds the profile tables."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from personify.profiles.events import view_event
from personify.profiles.features import FeatureSet
from personify.profiles.processor import ProfileProcessor
from personify.profiles.repository import ProfileRepository
from personify.store import migrations, tables
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


def test_upgrade_from_the_schema_before_profiles_keeps_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = sa.create_engine(url)
    mine = migrations.MIGRATIONS.index(migrations._profiles_and_worker)
    with engine.begin() as conn:
        migrations.current_version(conn)
        for number, migration in enumerate(migrations.MIGRATIONS[:mine], start=1):
            migration(conn)
            conn.execute(
                tables.schema_version.insert().values(version=number, applied_at=datetime.now(UTC))
            )
        conn.execute(
            tables.sources.insert().values(
                id="s1",
                name="web",
                write_key_hash="h" * 64,
                write_key_prefix="wk_123",
                created_at=datetime.now(UTC),
            )
        )
    assert not PROFILE_TABLES & set(sa.inspect(engine).get_table_names())
    engine.dispose()

    db = Database(url)
    try:
        assert set(sa.inspect(db.engine).get_table_names()) >= PROFILE_TABLES
        with db.engine.connect() as conn:
            assert conn.execute(sa.select(tables.sources.c.name)).scalars().all() == ["web"]
        features = FeatureSet()
        ProfileProcessor(db, features).apply([view_event(event("page", "m", 0, user_id="jo"))])
        assert ProfileRepository(db, features).find("jo") is not None
        assert db.upgrade() == []
    finally:
        db.dispose()

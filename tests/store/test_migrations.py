"""Alembic migrations on real engines: from empty, from the first revision with data, from a
database made before Alembic, concurrently, from the command line, and in step with the tables.

Every test runs on a SQLite file and on a fresh PostgreSQL schema (``state_url``).
"""

from __future__ import annotations

import copy
import importlib
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from click.testing import CliRunner

import personify
from personify.auth.keys import ApiKeyRepository
from personify.cli.main import main
from personify.ingest.sources import SourceRepository
from personify.profiles.events import view_event
from personify.profiles.features import FeatureSet
from personify.profiles.processor import ProfileProcessor
from personify.profiles.repository import ProfileRepository
from personify.store import migrations
from personify.store.database import Database
from personify.store.failed_events import FailedEventRepository, NewFailedEvent
from personify.store.tables import metadata
from tests.profiles.factory import event

FEATURES = FeatureSet()
T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def _chain() -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(migrations.config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def _tables(db: Database) -> set[str]:
    return set(sa.inspect(db.engine).get_table_names())


def _schema_diff(db: Database) -> list[object]:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, migrations.target_metadata()))


def _revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return migrations.current_revision(conn)


def _fill(db: Database) -> tuple[str, str]:
    """Data in every package's tables; returns a write key and an API key secret."""
    _, write_key = SourceRepository(db).create("web")
    _, secret = ApiKeyRepository(db).create("ops", "admin")
    FailedEventRepository(db).add_many(
        [NewFailedEvent(stage="ingest", code="invalid", reason="r", payload={"a": 1})]
    )
    # profiles as today's worker writes them, moved into the old schema's columns (the
    # worker writes columns later revisions added)
    scratch = Database("sqlite://")
    try:
        ProfileProcessor(scratch, FEATURES).apply(
            [
                view_event(event("page", "m1", 0, anonymous_id="dev-1")),
                view_event(event("identify", "m2", 1, user_id="jo", anonymous_id="dev-1")),
            ]
        )
        old = sa.MetaData()
        with scratch.engine.connect() as source, db.engine.begin() as target:
            for name in ("identities", "profiles", "applied_events", "profile_versions"):
                table = sa.Table(name, old, autoload_with=target)
                rows = source.execute(sa.select(metadata.tables[name])).mappings().all()
                target.execute(
                    table.insert(), [{c.name: row[c.name] for c in table.columns} for row in rows]
                )
    finally:
        scratch.dispose()
    return write_key, secret


def _assert_filled(db: Database, write_key: str, secret: str) -> None:
    assert SourceRepository(db).resolve(write_key) is not None
    assert ApiKeyRepository(db).resolve(secret) is not None
    assert [f.payload for f in FailedEventRepository(db).list()] == [{"a": 1}]
    stored = ProfileRepository(db, FEATURES).find("dev-1")
    assert stored is not None
    assert stored.profile_id == "jo"
    assert stored.state().events == 2


def test_an_empty_database_is_upgraded_to_head(state_url: str) -> None:
    db = Database(state_url, auto_upgrade=False)
    try:
        assert db.upgrade() == _chain()
        assert db.upgrade() == []
        assert _revision(db) == migrations.head()
        assert _tables(db) >= set(migrations.target_metadata().tables)
        write_key, secret = _fill(db)
        _assert_filled(db, write_key, secret)
    finally:
        db.dispose()


def test_a_database_at_the_first_revision_keeps_its_data_up_to_head(state_url: str) -> None:
    db = Database(state_url, auto_upgrade=False)
    try:
        with db.engine.begin() as conn:
            command.upgrade(migrations.config(conn), migrations.BASELINE)
        assert _revision(db) == migrations.BASELINE
        write_key, secret = _fill(db)

        assert db.upgrade() == _chain()[1:]
        assert _revision(db) == migrations.head()
        _assert_filled(db, write_key, secret)
        assert _schema_diff(db) == []
    finally:
        db.dispose()


def test_the_table_definitions_and_the_migration_head_agree(state_url: str) -> None:
    db = Database(state_url)
    try:
        assert _schema_diff(db) == [], (
            "the tables and the migrations disagree: add a revision (see docs/migrations.md)"
        )
    finally:
        db.dispose()


def test_the_comparison_sees_a_table_edited_without_a_revision(state_url: str) -> None:
    # the agreement test above is only worth something if an edit shows up as a difference
    db = Database(state_url)
    try:
        edited = copy.deepcopy(migrations.target_metadata())
        edited.tables["profiles"].append_column(sa.Column("segment", sa.String(64)))
        with db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, edited)
        assert [d[0] for d in diff if isinstance(d, tuple)] == ["add_column"]
    finally:
        db.dispose()


def test_every_tables_module_is_known_to_the_migrations() -> None:
    root = Path(personify.__file__).parent
    found = {
        "personify." + ".".join(path.relative_to(root).with_suffix("").parts)
        for path in root.rglob("tables.py")
    }
    assert found == set(migrations.TABLE_MODULES)
    for name in migrations.TABLE_MODULES:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, sa.Table):
                assert value.metadata is metadata, (
                    f"{name}.{value.name} is not on the shared metadata"
                )


def _legacy(db: Database, version: int) -> None:
    """A database as the pre-Alembic ``create()`` migrations left it at ``version``: their
    tables are the first revision's (which was written from them), with no Alembic stamp."""
    legacy = sa.Table(
        "schema_version",
        sa.MetaData(),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    )
    with db.engine.begin() as conn:
        command.upgrade(migrations.config(conn), migrations.BASELINE)
        conn.execute(sa.text("DROP TABLE alembic_version"))
        legacy.create(conn)
        conn.execute(
            legacy.insert(), [{"version": v, "applied_at": T0} for v in range(1, version + 1)]
        )


def test_a_database_made_before_alembic_is_adopted_not_recreated(state_url: str) -> None:
    db = Database(state_url, auto_upgrade=False)
    try:
        _legacy(db, version=3)
        write_key, secret = _fill(db)

        assert db.upgrade() == _chain()
        assert _revision(db) == migrations.head()
        assert "schema_version" not in _tables(db)
        _assert_filled(db, write_key, secret)
        assert _schema_diff(db) == []
        assert db.upgrade() == []
    finally:
        db.dispose()


def test_processes_starting_together_upgrade_once(state_url: str) -> None:
    errors: list[BaseException] = []
    opened: list[Database] = []
    start = threading.Barrier(4)

    def boot() -> None:
        start.wait()
        try:
            opened.append(Database(state_url))
        except Exception as exc:  # noqa: BLE001 - any failure of a racing upgrade is the bug
            errors.append(exc)

    threads = [threading.Thread(target=boot) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert _revision(opened[0]) == migrations.head()
        with opened[0].engine.connect() as conn:
            stamps = conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar_one()
        assert stamps == 1
    finally:
        for db in opened:
            db.dispose()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_the_db_upgrade_command(
    engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    data_dir = tmp_path / "data"
    env = {
        "PERSONIFY_DATA_DIR": str(data_dir),
        "PERSONIFY_PII_HASH_KEY": "x",
        "PERSONIFY_ENVIRONMENT": "test",
    }
    if engine == "postgresql":
        env["PERSONIFY_STATE_URL"] = request.getfixturevalue("state_url_postgresql")
    # the CLI reads .env from the working directory; run it where there is none
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    first = runner.invoke(main, ["db", "upgrade"], env=env, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert f"applied migrations: {', '.join(_chain())} (now at {migrations.head()})" in first.output
    again = runner.invoke(main, ["db", "upgrade"], env=env, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert f"schema is up to date (at {migrations.head()})" in again.output
    if engine == "sqlite":
        db = Database(f"sqlite:///{data_dir / 'personify.db'}", auto_upgrade=False)
        try:
            assert _revision(db) == migrations.head()
        finally:
            db.dispose()

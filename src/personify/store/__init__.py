"""The state database (system of record): SQLAlchemy Core engine, tables, migrations, repositories."""

from __future__ import annotations

from personify.store.database import Database, open_database

__all__ = ["Database", "open_database"]

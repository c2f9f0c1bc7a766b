"""The warehouse: DuckDB over the lake through Arrow, with a star schema of views.

The Delta table is handed to an in-memory DuckDB as a pyarrow dataset (``events_raw``), so
no DuckDB extension is downloaded at run time (automatic extension install and load are
switched off). Views:

* ``fact_events`` — one row per event (deduplicated by source and ``messageId``), with the
  canonical ``user_key``, the ``item_id`` it is about, ``revenue`` and every lake column;
* ``dim_users`` — one row per canonical user: ids, first/last seen, traits;
* ``dim_items`` — content and products seen in events (``properties`` and ``products[]``);
* ``dim_date`` — one row per day the events span.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from personify.errors import BackendUnavailable, NotFound, PersonifyError, ValidationError
from personify.lake.schema import STABLE_SCHEMA
from personify.lake.table import Lake

if TYPE_CHECKING:
    from personify.store.database import Database

OutputFormat = Literal["table", "csv", "json", "parquet"]

# fact_events: every event once, with the canonical user and the item it is about
_FACT_EVENTS = """
CREATE OR REPLACE VIEW fact_events AS
SELECT
    coalesce(by_user.user_key, by_device.user_key, e.user_id, e.anonymous_id) AS user_key,
    coalesce(
        json_extract_string(e.properties, '$.product_id'),
        json_extract_string(e.properties, '$.sku'),
        json_extract_string(e.properties, '$.content_id')
    ) AS item_id,
    CASE WHEN e.type = 'track' AND e.event = 'Order Completed' THEN coalesce(
        TRY_CAST(json_extract_string(e.properties, '$.revenue') AS DOUBLE),
        TRY_CAST(json_extract_string(e.properties, '$.total') AS DOUBLE)
    ) END AS revenue,
    e.*
FROM events_raw AS e
LEFT JOIN identity_map AS by_user ON by_user.identity = e.user_id
LEFT JOIN identity_map AS by_device ON by_device.identity = e.anonymous_id
QUALIFY row_number() OVER (
    PARTITION BY e.source_id, e.message_id ORDER BY e.received_at, e.log_offset
) = 1
"""

# without profiles: an anonymousId belongs to the userId it was last seen with
_IDENTITY_MAP_FROM_EVENTS = """
CREATE OR REPLACE VIEW identity_map AS
SELECT anonymous_id AS identity, arg_max(user_id, timestamp) AS user_key
FROM events_raw
WHERE anonymous_id IS NOT NULL AND user_id IS NOT NULL
GROUP BY anonymous_id
"""

# with profiles: the worker's identity graph, every id -> canonical profile id
_IDENTITY_MAP_FROM_PROFILES = """
CREATE OR REPLACE VIEW identity_map AS
SELECT identity, profile_id AS user_key FROM state_identities
"""

_DIM_USERS_FROM_PROFILES = """
CREATE OR REPLACE VIEW dim_users AS SELECT * FROM state_profiles
"""

_DIM_USERS_FROM_EVENTS = """
CREATE OR REPLACE VIEW dim_users AS
SELECT
    user_key,
    min(user_id) AS user_id,
    list_sort(list_distinct(list(user_id) FILTER (WHERE user_id IS NOT NULL))) AS user_ids,
    list_sort(list_distinct(list(anonymous_id) FILTER (WHERE anonymous_id IS NOT NULL)))
        AS anonymous_ids,
    min(timestamp) AS first_seen,
    max(timestamp) AS last_seen,
    count(*) AS events,
    arg_max(traits, timestamp) FILTER (WHERE type = 'identify' AND traits IS NOT NULL)
        AS traits,
    CAST(NULL AS BOOLEAN) AS personalization_allowed,
    CAST(NULL AS INTEGER) AS profile_version,
    'events' AS profile_source
FROM fact_events
GROUP BY user_key
"""

_DIM_ITEMS = """
CREATE OR REPLACE VIEW dim_items AS
WITH single AS (
    SELECT
        coalesce(
            json_extract_string(properties, '$.product_id'),
            json_extract_string(properties, '$.sku'),
            json_extract_string(properties, '$.content_id')
        ) AS item_id,
        CASE WHEN json_extract_string(properties, '$.content_id') IS NOT NULL
             AND json_extract_string(properties, '$.product_id') IS NULL
             AND json_extract_string(properties, '$.sku') IS NULL
             THEN 'content' ELSE 'product' END AS item_type,
        json_extract_string(properties, '$.sku') AS sku,
        coalesce(json_extract_string(properties, '$.name'),
                 json_extract_string(properties, '$.title')) AS name,
        json_extract_string(properties, '$.category') AS category,
        json_extract_string(properties, '$.brand') AS brand,
        TRY_CAST(json_extract_string(properties, '$.price') AS DOUBLE) AS price,
        timestamp
    FROM fact_events
    WHERE properties IS NOT NULL
),
listed AS (
    SELECT
        coalesce(json_extract_string(p, '$.product_id'), json_extract_string(p, '$.sku'))
            AS item_id,
        'product' AS item_type,
        json_extract_string(p, '$.sku') AS sku,
        json_extract_string(p, '$.name') AS name,
        json_extract_string(p, '$.category') AS category,
        json_extract_string(p, '$.brand') AS brand,
        TRY_CAST(json_extract_string(p, '$.price') AS DOUBLE) AS price,
        timestamp
    FROM (
        SELECT unnest(json_extract(properties, '$.products[*]')) AS p, timestamp
        FROM fact_events
        WHERE properties IS NOT NULL AND json_type(properties, '$.products') = 'ARRAY'
    )
)
SELECT
    item_id,
    arg_max(item_type, timestamp) AS item_type,
    arg_max(sku, timestamp) FILTER (WHERE sku IS NOT NULL) AS sku,
    arg_max(name, timestamp) FILTER (WHERE name IS NOT NULL) AS name,
    arg_max(category, timestamp) FILTER (WHERE category IS NOT NULL) AS category,
    arg_max(brand, timestamp) FILTER (WHERE brand IS NOT NULL) AS brand,
    arg_max(price, timestamp) FILTER (WHERE price IS NOT NULL) AS price,
    min(timestamp) AS first_seen,
    max(timestamp) AS last_seen,
    count(*) AS events
FROM (SELECT * FROM single UNION ALL SELECT * FROM listed)
WHERE item_id IS NOT NULL
GROUP BY item_id
"""

_DIM_DATE = """
CREATE OR REPLACE VIEW dim_date AS
SELECT
    CAST(day AS DATE) AS date_key,
    year(day) AS year,
    quarter(day) AS quarter,
    month(day) AS month,
    monthname(day) AS month_name,
    weekofyear(day) AS iso_week,
    day(day) AS day_of_month,
    isodow(day) AS iso_day_of_week,
    dayname(day) AS day_name,
    isodow(day) >= 6 AS is_weekend
FROM (
    SELECT unnest(generate_series(
        (SELECT min(event_date) FROM events_raw),
        (SELECT max(event_date) FROM events_raw),
        INTERVAL 1 DAY
    )) AS day
)
"""

VIEWS = ("fact_events", "dim_users", "dim_items", "dim_date")


def _sql_error(exc: duckdb.Error) -> PersonifyError:
    if isinstance(exc, duckdb.IOException):
        return BackendUnavailable(f"the lake could not be read: {exc}", code="lake_unavailable")
    if isinstance(exc, duckdb.ParserException):
        return ValidationError(f"SQL syntax error: {exc}", code="invalid_sql")
    if isinstance(exc, duckdb.CatalogException | duckdb.BinderException):
        return ValidationError(f"SQL error: {exc}", code="invalid_sql")
    return ValidationError(f"the query failed: {exc}", code="query_failed")


PROFILE_SCHEMA = pa.schema(
    [
        pa.field("user_key", pa.string()),
        pa.field("user_id", pa.string()),
        pa.field("user_ids", pa.list_(pa.string())),
        pa.field("anonymous_ids", pa.list_(pa.string())),
        pa.field("first_seen", pa.timestamp("ms", tz="UTC")),
        pa.field("last_seen", pa.timestamp("ms", tz="UTC")),
        pa.field("events", pa.int64()),
        pa.field("traits", pa.string()),
        pa.field("personalization_allowed", pa.bool_()),
        pa.field("profile_version", pa.int32()),
        pa.field("profile_source", pa.string()),
    ]
)
IDENTITY_SCHEMA = pa.schema(
    [pa.field("identity", pa.string()), pa.field("profile_id", pa.string())]
)


class StateProfiles:
    """The worker's canonical profiles and identity graph, read from the state database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def available(self) -> bool:
        """Whether the state database holds profiles (the worker has run)."""
        import sqlalchemy as sa

        from personify.profiles.tables import identities
        from personify.store.database import state_unavailable

        try:
            with self._db.engine.connect() as conn:
                if not sa.inspect(conn).has_table("identities"):
                    return False
                return conn.execute(sa.select(identities.c.identity).limit(1)).first() is not None
        except sa.exc.OperationalError as exc:
            raise state_unavailable(exc) from exc

    def identities(self) -> pa.Table:
        """Every known id and the canonical profile id it resolves to."""
        import sqlalchemy as sa

        from personify.profiles.tables import identities

        with self._db.engine.connect() as conn:
            rows = conn.execute(sa.select(identities.c.identity, identities.c.profile_id)).all()
        return pa.table(
            {
                "identity": pa.array([r[0] for r in rows], pa.string()),
                "profile_id": pa.array([r[1] for r in rows], pa.string()),
            }
        )

    def profiles(self) -> pa.Table:
        """One row per canonical profile: ids, first/last seen, events, traits, consent."""
        import sqlalchemy as sa

        from personify.profiles.state import decode_state
        from personify.profiles.tables import profiles

        query = sa.select(
            profiles.c.profile_id,
            profiles.c.version,
            profiles.c.state,
            profiles.c.personalization_allowed,
        )
        rows: list[dict[str, object]] = []
        with self._db.engine.connect() as conn:
            for profile_id, version, blob, allowed in conn.execute(query):
                state = decode_state(blob)
                traits = {k: s.value for k, s in sorted(state.traits.items())}
                rows.append(
                    {
                        "user_key": profile_id,
                        "user_id": min(state.user_ids) if state.user_ids else None,
                        "user_ids": sorted(state.user_ids),
                        "anonymous_ids": sorted(state.anonymous_ids | state.previous_ids),
                        "first_seen": state.first_seen,
                        "last_seen": state.last_seen,
                        "events": state.events,
                        "traits": _json(traits) if traits else None,
                        "personalization_allowed": bool(allowed),
                        "profile_version": int(version),
                        "profile_source": "profiles",
                    }
                )
        return pa.Table.from_pylist(rows, schema=PROFILE_SCHEMA)


def _json(value: object) -> str:
    import msgspec

    return msgspec.json.encode(value).decode()


class Warehouse:
    """An in-memory DuckDB with the lake (at one version) and the star-schema views.

    With ``profiles`` (the state database) and once the worker has built profiles, users are
    the worker's canonical profiles and ``fact_events.user_key`` follows its identity graph;
    before that, both are derived from the events.
    """

    def __init__(
        self,
        lake: Lake,
        *,
        version: int | None = None,
        profiles: StateProfiles | None = None,
    ) -> None:
        self.lake = lake
        self.version: int | None = None
        self._profiles = profiles
        self._profiles_loaded = False
        self._conn = duckdb.connect(
            config={
                # everything needed (json, parquet) is built in; never fetch code at run time
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
            }
        )
        try:
            self._conn.execute("SET TimeZone = 'UTC'")
            self._conn.execute("SET enable_progress_bar = false")
            self._register(version)
        except duckdb.Error as exc:
            self._conn.close()
            raise BackendUnavailable(
                f"the warehouse could not start: {exc}", code="warehouse_unavailable"
            ) from exc

    def _register(self, version: int | None) -> None:
        if self.lake.exists():
            table = self.lake.open(version)
            self.version = int(table.version())
            self._conn.register("events_raw", self.lake.dataset(self.version))
        elif version is not None:
            raise NotFound(f"the lake at {self.lake.uri} has no version {version}")
        else:
            self._conn.register("events_raw", STABLE_SCHEMA.empty_table())
        use_profiles = self._profiles is not None and self._profiles.available()
        if use_profiles and self._profiles is not None:
            self._conn.register("state_identities", self._profiles.identities())
            # profiles are read only when a query names dim_users (decoding them costs)
            self._conn.register("state_profiles", PROFILE_SCHEMA.empty_table())
            self._conn.execute(_IDENTITY_MAP_FROM_PROFILES)
            self._conn.execute(_FACT_EVENTS)
            self._conn.execute(_DIM_USERS_FROM_PROFILES)
        else:
            self._profiles = None
            self._conn.execute(_IDENTITY_MAP_FROM_EVENTS)
            self._conn.execute(_FACT_EVENTS)
            self._conn.execute(_DIM_USERS_FROM_EVENTS)
        self._conn.execute(_DIM_ITEMS)
        self._conn.execute(_DIM_DATE)

    def _prepare(self, sql: str) -> None:
        if self._profiles is not None and not self._profiles_loaded and "dim_users" in sql.lower():
            self._conn.register("state_profiles", self._profiles.profiles())
            self._profiles_loaded = True

    def relation(self, sql: str) -> duckdb.DuckDBPyRelation | None:
        """The lazy DuckDB relation of one query (None for a statement without a result),
        the profiles read first when it names ``dim_users``; DuckDB's own errors propagate
        (``lake.queries`` streams the relation and maps them)."""
        self._prepare(sql)
        return self._conn.sql(sql)

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection, for callers that build their own relations."""
        return self._conn

    def query(self, sql: str) -> pa.Table:
        """Run one statement and return its result as Arrow (empty for statements without one)."""
        self._prepare(sql)
        try:
            relation = self._conn.sql(sql)
            if relation is None:
                return pa.table({})
            return relation.to_arrow_table()
        except duckdb.Error as exc:
            raise _sql_error(exc) from exc

    def render(self, sql: str, *, max_rows: int = 40) -> str:
        """The result as a boxed text table (DuckDB's own rendering)."""
        self._prepare(sql)
        try:
            relation = self._conn.sql(sql)
            if relation is None:
                return "OK"
            return str(relation.limit(max_rows)) if max_rows else str(relation)
        except duckdb.Error as exc:
            raise _sql_error(exc) from exc

    def close(self) -> None:
        """Close the DuckDB connection."""
        self._conn.close()

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_result(table: pa.Table, fmt: OutputFormat, output: Path) -> None:
    """Write a query result to ``output`` as CSV, JSON lines or Parquet."""
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        pacsv.write_csv(table, output)
    elif fmt == "parquet":
        pq.write_table(table, output)
    elif fmt == "json":
        with output.open("wb") as handle:
            for line in json_lines(table):
                handle.write(line)
    else:
        raise ValidationError(f"cannot write format {fmt!r} to a file", code="invalid_format")


def json_lines(table: pa.Table) -> list[bytes]:
    """Each row as one JSON document plus a newline (timestamps as ISO-8601)."""
    import msgspec

    encoder = msgspec.json.Encoder()
    return [encoder.encode(row) + b"\n" for row in table.to_pylist()]

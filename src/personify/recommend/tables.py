"""The tables recommendations own: the worker's live counters (co-visitation, popularity,
each profile's recent items) and the index a learned model was served from (its runs, each
user's top items, each item's similar items).

Decayed counts are stored as ``2 ** ((t - DECAY_EPOCH_MS) / half_life)`` summed over their
events (``personify.recommend.stage``): an increment never rewrites older rows, rows add
(``score = score + excluded.score``) and order like their decayed values at any moment.
"""

from __future__ import annotations

import sqlalchemy as sa

from personify.store.tables import RowId, Timestamp, metadata

# per kind (viewed, bought): each item's decayed interaction count
recommend_items = sa.Table(
    "recommend_items",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("item_id", sa.String(200), primary_key=True),
    sa.Column("score", sa.Float, nullable=False),
    # keyed by text: the key is the row (one b-tree, not a table and its index)
    sqlite_with_rowid=False,
)

# per kind: how often (decayed) two items were touched together, both ways round
recommend_pairs = sa.Table(
    "recommend_pairs",
    metadata,
    sa.Column("item_id", sa.String(200), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("other_id", sa.String(200), primary_key=True),
    sa.Column("score", sa.Float, nullable=False),
    # keyed by text: the key is the row (one b-tree, not a table and its index)
    sqlite_with_rowid=False,
)

# per segment ("" for everyone): each item's decayed, weighted interactions
recommend_popularity = sa.Table(
    "recommend_popularity",
    metadata,
    sa.Column("segment_key", sa.String(200), primary_key=True),
    sa.Column("item_id", sa.String(200), primary_key=True),
    sa.Column("score", sa.Float, nullable=False),
    sa.Index("recommend_popularity_top", "segment_key", "score"),
    # keyed by text: the key is the row (one b-tree, not a table and its index)
    sqlite_with_rowid=False,
)

# per profile: what co-visitation remembers (the last interactions of each kind) and its
# recent items (seen, bought, with their decayed weights), as one JSON document
recommend_profiles = sa.Table(
    "recommend_profiles",
    metadata,
    sa.Column("profile_id", sa.String(512), primary_key=True),
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("updated_at", Timestamp(), nullable=False),
)

# every training of the learned index: the model, its parameters, what it read, how it did
recommend_runs = sa.Table(
    "recommend_runs",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(32), nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("lake_version", sa.BigInteger, nullable=True),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("as_of", Timestamp(), nullable=False),
    sa.Column("users", sa.Integer, nullable=False),
    sa.Column("items", sa.Integer, nullable=False),
    sa.Column("created_at", Timestamp(), nullable=False),
)

# the newest run's top items of each user (JSON [[item, score], ...], best first)
recommend_user_index = sa.Table(
    "recommend_user_index",
    metadata,
    sa.Column("profile_id", sa.String(512), primary_key=True),
    sa.Column("run_id", sa.BigInteger, nullable=False),
    sa.Column("items", sa.Text, nullable=False),
)

# the newest run's most similar items of each item (JSON [[item, score], ...], best first)
recommend_item_index = sa.Table(
    "recommend_item_index",
    metadata,
    sa.Column("item_id", sa.String(200), primary_key=True),
    sa.Column("run_id", sa.BigInteger, nullable=False),
    sa.Column("items", sa.Text, nullable=False),
)

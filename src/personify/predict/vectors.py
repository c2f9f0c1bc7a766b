"""Point-in-time feature vectors for clustering runs: every profile replayed from the lake as
of T (``personify.predict.replay``), shard by shard, evaluated and read at the clustering's
feature paths (``personify.segments.clusterings.feature_vectors``, the reading the worker uses
to place profiles between runs)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from personify.lake.table import Lake
from personify.predict.features import definitions_digest
from personify.predict.replay import DEFAULT_SHARD_IDS, replay_shards
from personify.profiles.events import datetime_ms
from personify.profiles.features import FeatureSet
from personify.segments.clusterings import FeatureShard, FeatureSource, feature_vectors

__all__ = ["lake_feature_source"]


def lake_feature_source(
    lake: Lake, features: FeatureSet, *, max_ids_per_shard: int = DEFAULT_SHARD_IDS
) -> FeatureSource:
    """A ``FeatureSource`` over ``lake``: shards of whole identity components (about
    ``max_ids_per_shard`` ids each), so memory holds one shard's profiles at a time."""

    def source(
        paths: Sequence[str], as_of: datetime
    ) -> tuple[Iterable[FeatureShard], dict[str, Any]]:
        lineage: dict[str, Any] = {
            "source": "lake",
            "lake": str(lake.uri),
            "definitions": definitions_digest(features),
        }

        def shards() -> Iterator[FeatureShard]:
            at_ms = datetime_ms(as_of)
            for profiles in replay_shards(
                lake, features, as_of, max_ids_per_shard=max_ids_per_shard
            ):
                lineage["lakeVersion"] = profiles.version
                ids, is_user, matrix = feature_vectors(profiles.states, features, paths, at_ms)
                yield FeatureShard(ids, is_user, matrix)

        return shards(), lineage

    return source

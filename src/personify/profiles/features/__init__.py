"""Declarative behavioural features: definitions, their per-event update, their read-time value.

A feature definition names the events it reads (a track's event name; ``$page``, ``$screen``,
``$identify``, ``$group``, ``$alias`` for the other types; ``*`` for every event), an
optional property filter (``where``), an aggregation (``count``, ``sum``, ``avg``, ``min``,
``max``, ``first``, ``last``, ``days_since``), the property it aggregates (dotted paths,
the first one present wins), an optional ``group_by`` path, and the windows it reports
(whole days, or ``all``). Definitions come from the file ``PERSONIFY_FEATURES_FILE`` (YAML,
JSON or TOML) on top of ``DEFAULT_FEATURES``; adding "count of Video Played in 7 d" is::

    features:
      - {name: video_plays, event: Video Played, aggregation: count, windows: [7]}

Everything here is a pure function of ``(state, event)`` (``update_features``,
``update_affinities``) or of ``(state, as_of)`` (``evaluate_features``,
``evaluate_affinities``), so the stream worker and a batch recomputation over the lake give
the same numbers. Every update is commutative and associative: sums are integers in
micro-units, min/max are exact, ``first``/``last`` are min/max by (event time, messageId),
and windowed values are summed at read time from hourly buckets (UTC) relative to
``as_of``. A late or out-of-order event lands in its own hour, hence in the right window,
and two profiles merge by adding their states (``merge_features``).

The package's modules, in the order data flows through them: ``definitions`` (what a feature
is, and the defaults), ``loading`` (the features file), ``paths`` (dotted paths and ``where``
filters), ``compiled`` (definitions compiled once), ``accumulators`` (the per-profile state),
``update`` (per event, merge, prune) and ``evaluate`` (read-time values).
"""

from __future__ import annotations

from personify.profiles.features.accumulators import Accumulator, Stamped, earliest, latest
from personify.profiles.features.compiled import FeatureSet
from personify.profiles.features.definitions import (
    DEFAULT_AFFINITY_RULES,
    DEFAULT_FEATURES,
    AffinityRule,
    FeatureDefinition,
    ProfileConfig,
)
from personify.profiles.features.evaluate import (
    evaluate_affinities,
    evaluate_features,
    window_reach,
)
from personify.profiles.features.loading import load_profile_config
from personify.profiles.features.update import (
    merge_affinities,
    merge_features,
    prune_affinities,
    prune_features,
    update_affinities,
    update_features,
)

__all__ = [
    "DEFAULT_AFFINITY_RULES",
    "DEFAULT_FEATURES",
    "Accumulator",
    "AffinityRule",
    "FeatureDefinition",
    "FeatureSet",
    "ProfileConfig",
    "Stamped",
    "earliest",
    "evaluate_affinities",
    "evaluate_features",
    "latest",
    "load_profile_config",
    "merge_affinities",
    "merge_features",
    "prune_affinities",
    "prune_features",
    "update_affinities",
    "update_features",
    "window_reach",
]

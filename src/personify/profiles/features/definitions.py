"""What a feature is: its declarative definition, the defaults, and the file they load from."""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

Aggregation = Literal["count", "sum", "avg", "min", "max", "first", "last", "days_since"]
Window = int | Literal["all"]

MICRO = 1_000_000  # sums are kept as integers of millionths, so addition order cannot show
MAX_NUMBER = 1e15
FEATURE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_WINDOW_DAYS = 366
MAX_GROUP_CHARS = 200
MAX_AFFINITY_VALUE_CHARS = 100
VALUE_AGGREGATIONS = frozenset({"sum", "avg", "min", "max"})
STAMPED_AGGREGATIONS = frozenset({"first", "last", "days_since"})

# Names the built-in part of the profile uses under ``features``; definitions cannot take them.
RESERVED_NAMES = frozenset(
    {
        "first_seen",
        "last_seen",
        "recency_days",
        "events_total",
        "last_events",
        "sessions",
        "affinities",
        "context",
    }
)


class FeatureDefinition(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One declarative feature: which events, which filter, which aggregation, which windows."""

    name: str
    event: str | list[str] = "*"
    where: dict[str, Any] = {}
    aggregation: Aggregation = "count"
    property: str | list[str] | None = None
    group_by: str | None = None
    windows: list[Window] = msgspec.field(default_factory=lambda: ["all"])
    description: str = ""


class AffinityRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Engagement that adds ``weight`` to the affinity for each value found at ``paths``."""

    dimension: str
    event: str | list[str] = "*"
    paths: list[str]
    weight: float = 1.0
    where: dict[str, Any] = {}


def _windows(*days: int) -> list[Window]:
    return [*days, "all"]


DEFAULT_FEATURES: tuple[FeatureDefinition, ...] = (
    FeatureDefinition(
        name="event_counts",
        group_by="$event",
        windows=_windows(1, 7, 30),
        description="events per event name",
    ),
    FeatureDefinition(
        name="orders",
        event="Order Completed",
        windows=_windows(7, 30),
        description="completed orders (Segment e-commerce spec)",
    ),
    FeatureDefinition(
        name="revenue",
        event="Order Completed",
        aggregation="sum",
        property=["properties.revenue", "properties.total"],
        windows=_windows(30),
        description="order revenue, or total when revenue is absent",
    ),
    FeatureDefinition(
        name="average_order_value",
        event="Order Completed",
        aggregation="avg",
        property=["properties.revenue", "properties.total"],
        description="mean revenue per order",
    ),
    FeatureDefinition(
        name="days_since_last_order",
        event="Order Completed",
        aggregation="days_since",
        description="days between the last order and now",
    ),
    FeatureDefinition(
        name="last_order_at",
        event="Order Completed",
        aggregation="last",
        description="time of the last order",
    ),
)

_PRODUCT_EVENTS = ["Product Viewed", "Product Clicked", "Product Added to Wishlist"]
DEFAULT_AFFINITY_RULES: tuple[AffinityRule, ...] = (
    AffinityRule(
        dimension="product_category", event=_PRODUCT_EVENTS, paths=["properties.category"]
    ),
    AffinityRule(
        dimension="product_category",
        event="Product List Viewed",
        paths=["properties.category"],
        weight=0.5,
    ),
    AffinityRule(
        dimension="product_category",
        event="Product Added",
        paths=["properties.category"],
        weight=3.0,
    ),
    AffinityRule(
        dimension="product_category",
        event="Order Completed",
        paths=["properties.products[].category"],
        weight=5.0,
    ),
    AffinityRule(
        dimension="content_category",
        event=["$page", "$screen", "Content Viewed", "Article Viewed", "Video Played"],
        paths=["properties.category"],
    ),
    AffinityRule(dimension="tag", paths=["properties.tags[]"]),
)


class ProfileConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Everything that decides how events become a profile (the features file's schema)."""

    include_default_features: bool = True
    features: list[FeatureDefinition] = []
    affinity_rules: list[AffinityRule] | None = None
    affinity_half_life_days: float = 14.0
    affinity_retention_days: int = 180
    session_gap_minutes: float = 30.0
    session_retention_days: int = 90
    consent_categories: list[str] = msgspec.field(
        default_factory=lambda: ["personalization", "personalisation"]
    )

    def definitions(self) -> list[FeatureDefinition]:
        """Defaults (unless switched off) with the file's definitions; same name replaces."""
        chosen: dict[str, FeatureDefinition] = {}
        if self.include_default_features:
            chosen.update((d.name, d) for d in DEFAULT_FEATURES)
        chosen.update((d.name, d) for d in self.features)
        return list(chosen.values())

    def rules(self) -> list[AffinityRule]:
        """The affinity rules: the file's, or the defaults."""
        return list(DEFAULT_AFFINITY_RULES if self.affinity_rules is None else self.affinity_rules)

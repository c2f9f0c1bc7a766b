"""Behavioural features: windows by event time, declarative definitions, sessions, context."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from personify.errors import ConfigurationError
from personify.profiles.consent import is_personalization_allowed
from personify.profiles.context import context_fields
from personify.profiles.events import MS_PER_DAY, datetime_ms, view_event
from personify.profiles.features import (
    FeatureDefinition,
    FeatureSet,
    ProfileConfig,
    evaluate_features,
    load_profile_config,
    window_reach,
)
from personify.profiles.state import (
    ProfileState,
    apply_event,
    compact_state,
    encode_state,
    evaluate_profile,
)
from tests.profiles.factory import BASE, event

NOW = datetime_ms(BASE) + 60 * MS_PER_DAY  # reads happen 60 days after BASE
MINUTES_PER_DAY = 24 * 60


def ago(days: float) -> float:
    """Minutes after BASE for a moment ``days`` before NOW."""
    return (NOW - datetime_ms(BASE)) / 60_000 - days * MINUTES_PER_DAY


def build(events: list[dict[str, Any]], features: FeatureSet | None = None) -> ProfileState:
    features = features or FeatureSet()
    state = ProfileState()
    for data in events:
        apply_event(state, view_event(data), features)
    return state


def evaluate(state: ProfileState, features: FeatureSet | None = None, *, at: int = NOW) -> Any:
    return evaluate_profile(state, features or FeatureSet(), at)


def viewed(mid: str, days_ago: float, **properties: Any) -> dict[str, Any]:
    return event(
        "track", mid, ago(days_ago), user_id="u", name="Product Viewed", properties=properties
    )


def test_windowed_counts_use_event_time_and_late_events_land_in_their_window() -> None:
    events = [viewed("a", 0.1), viewed("b", 3), viewed("c", 10), viewed("d", 45)]
    state = build(events)
    counts = evaluate(state)["event_counts"]["Product Viewed"]
    assert counts == {"1d": 1, "7d": 2, "30d": 3, "all": 4}

    # a late event from five days ago arrives after all the others
    apply_event(state, view_event(viewed("late", 5)), FeatureSet())
    counts = evaluate(state)["event_counts"]["Product Viewed"]
    assert counts == {"1d": 1, "7d": 3, "30d": 4, "all": 5}


def test_windows_slide_with_the_read_time_not_the_write_time() -> None:
    state = build([viewed("a", 0.5)])
    assert evaluate(state)["event_counts"]["Product Viewed"]["1d"] == 1
    two_days_later = NOW + 2 * MS_PER_DAY
    later = evaluate(state, at=two_days_later)["event_counts"]["Product Viewed"]
    assert later == {"1d": 0, "7d": 1, "30d": 1, "all": 1}


def test_compaction_drops_unreachable_buckets_without_changing_any_value() -> None:
    events = [viewed(f"m{i}", d) for i, d in enumerate([0.1, 20, 40, 80, 200])]
    state = build(events)
    before = evaluate(state)
    size_before = len(encode_state(state))
    compact_state(state, FeatureSet())
    assert evaluate(state) == before
    assert len(encode_state(state)) < size_before


def order(mid: str, days_ago: float, **properties: Any) -> dict[str, Any]:
    return event(
        "track", mid, ago(days_ago), user_id="u", name="Order Completed", properties=properties
    )


def test_commerce_follows_the_segment_ecommerce_spec() -> None:
    state = build(
        [
            order("o1", 40, revenue=100.0, products=[{"category": "shoes"}]),
            order("o2", 10, total="50.5", products=[{"category": "hats"}]),
            order("o3", 2, revenue=0.1),
            order("o4", 1, revenue=0.2),
            order("o5", 0.5, revenue="not a number"),
        ]
    )
    features = evaluate(state)
    assert features["orders"] == {"7d": 3, "30d": 4, "all": 5}
    # revenue in integer micro-units: 0.1 + 0.2 is exactly 0.3 here
    assert features["revenue"] == {"30d": 50.8, "all": 150.8}
    assert features["average_order_value"] == {"all": round(150.8 / 4, 6)}
    assert features["days_since_last_order"] == {"all": 0.5}
    assert features["last_order_at"]["all"].endswith("Z")


def test_a_business_adds_a_feature_without_code(tmp_path: Path) -> None:
    path = tmp_path / "features.yaml"
    path.write_text(
        "features:\n"
        "  - name: video_plays\n"
        "    event: Video Played\n"
        "    windows: [7]\n"
        "  - name: longest_video_s\n"
        "    event: Video Played\n"
        "    aggregation: max\n"
        "    property: properties.seconds\n"
        "    where: {properties.kind: [trailer, film]}\n"
        "  - name: views_by_category\n"
        "    event: Product Viewed\n"
        "    group_by: properties.category\n"
        "    windows: [30, all]\n"
        "  - name: plan\n"
        "    event: $identify\n"
        "    aggregation: last\n"
        "    property: traits.plan\n"
    )
    features = FeatureSet(load_profile_config(path))
    state = build(
        [
            event(
                "track",
                "v1",
                ago(1),
                user_id="u",
                name="Video Played",
                properties={"seconds": 30, "kind": "trailer"},
            ),
            event(
                "track",
                "v2",
                ago(2),
                user_id="u",
                name="Video Played",
                properties={"seconds": 7200, "kind": "film"},
            ),
            event(
                "track",
                "v3",
                ago(3),
                user_id="u",
                name="Video Played",
                properties={"seconds": 9999, "kind": "ad"},
            ),
            event("track", "v4", ago(20), user_id="u", name="Video Played"),
            viewed("p1", 1, category="shoes"),
            viewed("p2", 40, category="shoes"),
            viewed("p3", 2, category="hats"),
            event("identify", "i1", ago(3), user_id="u", traits={"plan": "pro"}),
            event("identify", "i0", ago(9), user_id="u", traits={"plan": "free"}),
        ],
        features,
    )
    values = evaluate(state, features)
    assert values["video_plays"] == {"7d": 3}
    assert values["longest_video_s"] == {"all": 7200.0}
    assert values["views_by_category"] == {
        "hats": {"30d": 1, "all": 1},
        "shoes": {"30d": 1, "all": 2},
    }
    assert values["plan"] == {"all": "pro"}
    assert "orders" in values  # the defaults are still there


def test_only_the_windows_paths_reach_are_computed_with_the_same_values() -> None:
    aggregations = ["count", "sum", "avg", "min", "max", "first", "last", "days_since"]
    config = ProfileConfig(
        features=[
            FeatureDefinition(
                name=f"price_{a}",
                event="Product Viewed",
                aggregation=a,  # type: ignore[arg-type]
                property="properties.price",
                windows=["all"] if a == "first" else [1, 7, 30, "all"],
            )
            for a in aggregations
        ]
        + [
            FeatureDefinition(
                name="views_by",
                event="Product Viewed",
                aggregation="sum",
                property="properties.price",
                group_by="properties.category",
                windows=[1, 7, 30, "all"],
            )
        ]
    )
    features = FeatureSet(config)
    state = build(
        [
            viewed(f"v{i}", days, price=10.0 + i, category=category)
            for i, (days, category) in enumerate(
                [(0.2, "shoes"), (3, "shoes"), (12, "home.garden"), (40, "hats"), (0.5, "home")]
            )
        ],
        features,
    )
    whole = evaluate_features(state.features, features, NOW)
    for paths in [
        [("price_avg", "7d"), ("price_last", "all"), ("views_by", "shoes", "30d")],
        [("price_min", "1d", "deeper"), ("price_max",), ("views_by", "home", "garden", "1d")],
        [("views_by", "home", "garden"), ("views_by", "hats", "7d"), ("price_days_since", "30d")],
        [("views_by",), ("price_first", "7d"), ("price_first", "all"), ("price_sum", "x")],
    ]:
        windows = window_reach(paths, features)
        got = evaluate_features(state.features, features, NOW, windows=windows)
        assert got.keys() == whole.keys()
        for name, values in whole.items():
            groups = values.items() if name == "views_by" else [("", values)]
            for group, by_window in groups:
                labels = windows.get((name, group))
                kept = got[name][group] if group else got[name]
                # a window no path reads is left out; every other is the same value
                assert kept == {w: v for w, v in by_window.items() if labels is None or w in labels}
    # a path that ends at a definition or a group needs every window of it
    # (``home.garden`` is a group as a whole, or ``garden`` a window of ``home``)
    assert window_reach([("views_by", "home", "garden")], features) == {
        ("views_by", "home"): frozenset({"garden"})
    }
    assert ("price_max", "") not in window_reach([("price_max",)], features)


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_definitions_load_from_json_and_toml(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"features{suffix}"
    if suffix == ".json":
        path.write_text(
            json.dumps(
                {
                    "include_default_features": False,
                    "features": [{"name": "pages", "event": "$page"}],
                }
            )
        )
    else:
        path.write_text(
            'include_default_features = false\n[[features]]\nname = "pages"\nevent = "$page"\n'
        )
    config = load_profile_config(path)
    assert [d.name for d in config.definitions()] == ["pages"]


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ({"name": "Bad Name"}, "lower_snake_case"),
        ({"name": "sessions"}, "reserved"),
        ({"name": "x", "aggregation": "sum"}, "needs a property"),
        ({"name": "x", "windows": [0]}, "between 1 and"),
        ({"name": "x", "aggregation": "first", "windows": [7]}, "only the 'all' window"),
        ({"name": "x", "aggregation": "median"}, "aggregation"),
        ({"name": "x", "colour": "red"}, "colour"),
    ],
)
def test_invalid_definitions_are_rejected_with_the_reason(
    tmp_path: Path, definition: dict[str, Any], message: str
) -> None:
    path = tmp_path / "features.json"
    path.write_text(json.dumps({"features": [definition]}))
    with pytest.raises(ConfigurationError) as raised:
        load_profile_config(path)
    assert message in raised.value.message


def test_an_unknown_file_type_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "features.ini"
    path.write_text("")
    with pytest.raises(ConfigurationError, match="must end in"):
        load_profile_config(path)


def test_replacing_a_default_definition_by_name() -> None:
    config = ProfileConfig(features=[FeatureDefinition(name="orders", event="Order Placed")])
    by_name = {d.name: d for d in config.definitions()}
    assert by_name["orders"].event == "Order Placed"


def page(mid: str, minutes: float, **extra: Any) -> dict[str, Any]:
    return event("page", mid, minutes, user_id="u", **extra)


def test_sessions_end_after_thirty_minutes_of_inactivity_and_merge_when_bridged() -> None:
    features = FeatureSet()
    state = build([page("a", 0), page("b", 10), page("c", 100), page("d", 125)])
    summary = evaluate(state, at=datetime_ms(BASE) + MS_PER_DAY)["sessions"]
    assert summary["count"] == 2
    assert summary["average_duration_s"] == (600 + 1500) / 2
    assert summary["pages_per_session"] == 2
    # late events at minutes 40 and 70 close the gaps (10->40->70->100): one session
    apply_event(state, view_event(page("e", 40)), features)
    apply_event(state, view_event(page("f", 70)), features)
    summary = evaluate(state, at=datetime_ms(BASE) + MS_PER_DAY)["sessions"]
    assert summary["count"] == 1
    assert summary["average_duration_s"] == 125 * 60


def test_affinities_decay_with_a_half_life_and_weigh_engagement() -> None:
    features = FeatureSet(ProfileConfig(affinity_half_life_days=7))
    state = build(
        [
            viewed("v1", 7.5, category="Shoes"),
            order("o1", 7.5, revenue=10, products=[{"category": "hats"}]),
            event("page", "p1", ago(7.5), user_id="u", properties={"tags": ["running", "trail"]}),
        ],
        features,
    )
    affinities = evaluate(state, features)["affinities"]
    # each day's weight is dated at UTC noon; 7.5 days ago rounds to about one half-life
    shoes = affinities["product_category"]["shoes"]
    assert 0.4 < shoes < 0.6
    assert affinities["product_category"]["hats"] == pytest.approx(5 * shoes, rel=1e-3)
    assert set(affinities["tag"]) == {"running", "trail"}
    later = evaluate(state, features, at=NOW + 7 * MS_PER_DAY)["affinities"]
    assert later["product_category"]["shoes"] == pytest.approx(shoes / 2, rel=1e-3)


def test_context_last_touch_and_first_touch_by_event_time() -> None:
    iphone = (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Version/17.0 Mobile Safari/604.1"
    )
    windows = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0 Safari/537.36 Edg/120.0"
    late_old = page(
        "old",
        5,
        context={"userAgent": windows, "campaign": {"source": "news", "name": "spring"}},
    )
    recent = page(
        "new",
        50,
        context={
            "userAgent": iphone,
            "location": {"country": "FR"},
            "page": {
                "url": "https://shop.test/x?utm_source=mail&utm_medium=email&utm_campaign=welcome",
                "referrer": "https://www.google.com/search?q=shoes",
            },
        },
    )
    state = build([recent, late_old])
    context = evaluate(state)["context"]
    assert context["last"] == {
        "browser": "Safari",
        "country": "FR",
        "device_type": "mobile",
        "os": "iOS",
        "referrer": "google.com",
        "utm_campaign": "welcome",
        "utm_medium": "email",
        "utm_source": "mail",
    }
    assert context["first_touch"] == {"source": "news", "name": "spring"}
    assert context["last_touch"] == {"source": "mail", "medium": "email", "name": "welcome"}


def test_user_agents_and_self_referrals() -> None:
    ua = "Mozilla/5.0 (iPad; CPU OS 16_0 like Mac OS X) CriOS/120.0 Mobile/15E148"
    fields = context_fields(
        {
            "context": {
                "userAgent": ua,
                "page": {"url": "https://a.test/x", "referrer": "https://a.test/"},
            }
        }
    )
    assert fields == {"device_type": "tablet", "browser": "Chrome", "os": "iOS"}
    assert context_fields({"context": {"device": {"type": "android"}}}) == {"device_type": "mobile"}


def test_the_consent_rule() -> None:
    categories = frozenset({"personalization"})
    assert is_personalization_allowed(None, categories)
    assert is_personalization_allowed({"Analytics": False}, categories)
    assert not is_personalization_allowed({"Personalization": False}, categories)
    assert is_personalization_allowed({"personalization": True, "Ads": False}, categories)


def test_the_latest_consent_by_event_time_wins() -> None:
    deny = {"consent": {"categoryPreferences": {"Personalization": False}}}
    allow = {"consent": {"categoryPreferences": {"Personalization": True}}}
    state = build([page("late-allow", 10, context=allow), page("deny", 20, context=deny)])
    assert state.consent is not None
    assert state.consent.value == {"Personalization": False}

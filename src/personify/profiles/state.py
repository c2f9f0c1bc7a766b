"""A profile's state: a merge of commutative parts, so arrival order and merges cannot show.

Every part of ``ProfileState`` combines with an operation that is commutative and
associative: sets of ids (union), counts and integer sums (addition), first/last seen
(min/max), traits, context and consent (last-writer-wins per key by event time, then
messageId), first touch (earliest), session intervals (interval union, see ``sessions``),
features and affinities (see ``features``). Applying an event is merging in the state of
that one event, so ``merge_states`` of two profiles equals applying all their events to one.
``compact_state`` drops what no read can reach any more; the worker runs it before storing.
Exactly-once application (no event twice) is the caller's job: the worker dedupes by
messageId in the same transaction that stores the state.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from personify.profiles.batch import Groups, ProfileBatch, group_rows
from personify.profiles.consent import consent_preferences
from personify.profiles.context import campaign_of, context_fields
from personify.profiles.counters import CounterPlan, apply_counters
from personify.profiles.events import MS_PER_DAY, MS_PER_HOUR, ProfileEvent, format_ms
from personify.profiles.features import (
    Accumulator,
    FeatureSet,
    Stamped,
    earliest,
    evaluate_affinities,
    evaluate_features,
    latest,
    merge_affinities,
    merge_features,
    prune_affinities,
    prune_features,
    update_affinities,
    update_features,
)
from personify.profiles.features.plan import FeaturePlan
from personify.profiles.sessions import (
    Session,
    Sessions,
    add_to_sessions,
    merge_sessions,
    prune_sessions,
    retention_floor,
    session_key,
    summarize_sessions,
)

_PAGE_TYPES = frozenset({"page", "screen"})
_MAX_TRAITS = 500


class ProfileState(msgspec.Struct, omit_defaults=True):
    """Everything a profile knows, in mergeable form (times are epoch milliseconds)."""

    user_ids: set[str] = set()
    anonymous_ids: set[str] = set()
    previous_ids: set[str] = set()
    events: int = 0
    first_seen: int | None = None
    last_seen: int | None = None
    last_events: dict[str, Stamped] = {}
    traits: dict[str, Stamped] = {}
    groups: dict[str, dict[str, Stamped]] = {}
    context: dict[str, Stamped] = {}
    first_touch: Stamped | None = None
    last_touch: Stamped | None = None
    consent: Stamped | None = None
    sessions: dict[str, Session] = {}
    features: dict[str, dict[str, Accumulator]] = {}
    affinities: dict[str, dict[str, dict[str, int]]] = {}
    # event counters the stages read (``personify.profiles.counters``): times by counter id
    # for windowed ones, numbers for all-time ones
    counters: dict[str, list[int]] = {}
    counter_totals: dict[str, int] = {}
    # the counters this state holds completely (counted from its timeline, or since it began)
    counted: set[str] = set()

    def all_ids(self) -> set[str]:
        """Every identity that resolves to this profile."""
        return self.user_ids | self.anonymous_ids | self.previous_ids


_encoder = msgspec.json.Encoder(order="deterministic")
_decoder = msgspec.json.Decoder(ProfileState)


def encode_state(state: ProfileState) -> bytes:
    """Canonical JSON: equal states give equal bytes (sets and keys sorted)."""
    return _encoder.encode(state)


def decode_state(blob: bytes | str) -> ProfileState:
    """The state stored by ``encode_state`` (or compressed at rest by ``compress_state``)."""
    return _decoder.decode(state_json(blob))


# A state at rest (not written for a retention, ``personify.profiles.retention``) is kept
# zlib-compressed with a preset dictionary of the keys and values every state repeats: about
# a quarter of its JSON. "z1:" names this format; the dictionary is part of it and never
# changes (a new one gets a new prefix, and the old one stays readable). SQLite keeps the
# bytes; engines whose text columns take only text get them in base64.
_AT_REST = "z1:"
_AT_REST_BYTES = b"z1:"
_AT_REST_DICTIONARY = (
    b'{"user_ids":["anonymous_ids":["previous_ids":["events":"first_seen":"last_seen":'
    b'"last_events":{"$identify":["$page":["$screen":["$alias":["$group":["Order Completed":['
    b'"Product Viewed":["Product Clicked":["Product Added":["Video Played":['
    b'"traits":{"groups":{"context":{"browser":["Chrome"]"Safari"]"Firefox"]"Edge"]'
    b'"device_type":["desktop"]"mobile"]"tablet"]"locale":["en-US"]"os":["Windows"]"macOS"]'
    b'"iOS"]"Android"]"Linux"]"referrer":["google.com"]"country":["city":["timezone":['
    b'"utm_source":["utm_medium":["utm_campaign":["first_touch":["last_touch":["consent":['
    b'"sessions":{"0017":["features":{"average_order_value":{"":{"n":"sum":'
    b'"days_since_last_order":{"":{"n":"last":["event_counts":{"$identify":{"n":"hours":{'
    b'"$page":{"n":"hours":{"Order Completed":{"n":"hours":{"Product Viewed":{"n":"hours":{'
    b'"last_order_at":{"":{"n":"last":["orders":{"":{"n":"hours":{"revenue":{"":{"n":"sum":'
    b'"hour_sum":{"hour_min":{"hour_max":{"first":["min":"max":'
    b'"affinities":{"content_category":{"product_category":{"tag":{,null],000000}'
)


def compress_state(blob: bytes | str, *, binary: bool) -> bytes | str:
    """``blob`` (a stored state) compressed for a profile at rest: bytes when ``binary``
    (SQLite), else base64 text (PostgreSQL's text)."""
    json = state_json(blob)
    compressor = zlib.compressobj(9, zdict=_AT_REST_DICTIONARY)
    packed = compressor.compress(json.encode() if isinstance(json, str) else json)
    packed += compressor.flush()
    if binary:
        return _AT_REST_BYTES + packed
    return _AT_REST + base64.b64encode(packed).decode("ascii")


def is_compressed(blob: bytes | str) -> bool:
    """Whether ``blob`` was stored by ``compress_state``."""
    if isinstance(blob, str):
        return blob.startswith(_AT_REST)
    return isinstance(blob, bytes) and blob.startswith(_AT_REST_BYTES)


def state_text(blob: bytes | str) -> str:
    """``state_json`` as text: what a version's snapshot or a cached document holds."""
    json = state_json(blob)
    return json.decode() if isinstance(json, bytes) else json


def state_json(blob: bytes | str) -> bytes | str:
    """The canonical JSON of a stored state, whether it is stored plain or compressed."""
    if not is_compressed(blob):
        return blob
    packed = base64.b64decode(blob[3:]) if isinstance(blob, str) else blob[3:]
    decompressor = zlib.decompressobj(zdict=_AT_REST_DICTIONARY)
    return decompressor.decompress(packed) + decompressor.flush()


def _write_traits(
    into: dict[str, Stamped], traits: Mapping[str, Any], ts: int, message_id: str
) -> None:
    for key, value in traits.items():
        name = str(key)
        current = into.get(name)
        if current is None and len(into) >= _MAX_TRAITS:
            continue
        if current is None or (ts, message_id) > (current.ts, current.mid):
            into[name] = Stamped(ts, message_id, value)


_EMPTY: Mapping[str, Any] = {}


def _mapping(value: Any) -> Mapping[str, Any]:
    # events are decoded JSON, so plain dicts (an ABC check would cost more than the rest)
    return value if type(value) is dict else _EMPTY


def compact_state(state: ProfileState, features: FeatureSet) -> None:
    """Drop buckets, days and sessions that no read can reach any more (before storing).

    What is dropped lies behind the profile's latest event by more than the longest window
    or the retention, and every read ignores it anyway, so compacting never changes what a
    profile shows; it only bounds the stored size.
    """
    if state.last_seen is None:
        return
    prune_features(state.features, features, state.last_seen)
    prune_affinities(state.affinities, features, state.last_seen)
    prune_sessions(
        state.sessions, latest_ms=state.last_seen, retention_ms=features.session_retention_ms
    )


def needs_compaction(
    state: ProfileState, features: FeatureSet, latest_before: int | None, earliest_event: int
) -> bool:
    """Whether applying events from ``earliest_event`` on may have left droppable data.

    A compacted state stays compacted unless its latest event moved to a later hour (the
    horizons moved) or an event older than the session horizon came in.
    """
    latest = state.last_seen
    if latest is None:
        return False
    if latest_before is None or latest // MS_PER_HOUR > latest_before // MS_PER_HOUR:
        return True
    return earliest_event < retention_floor(latest, features.session_retention_ms)


def apply_event(state: ProfileState, event: ProfileEvent, features: FeatureSet) -> None:
    """Apply one event to ``state`` in place (a pure function of the two: no I/O, no clock).

    The reference for ``apply_batch``, which gives the same state for a whole batch; batch
    recomputations over the lake (``personify.predict``) use this one.
    """
    ts, message_id = event.ts, event.message_id
    state.events += 1
    first, last = state.first_seen, state.last_seen
    if first is None or ts < first:
        state.first_seen = ts
    if last is None or ts > last:
        state.last_seen = last = ts
    seen = state.last_events.get(event.name)
    if seen is None or ts > seen.ts or (ts == seen.ts and message_id > seen.mid):
        state.last_events[event.name] = Stamped(ts, message_id)
    apply_event_details(state, event)
    add_to_sessions(
        state.sessions, ts, is_page=event.type in _PAGE_TYPES, gap_ms=features.session_gap_ms
    )
    update_features(state.features, features, event, keep_from_ms=last)
    update_affinities(state.affinities, features, event, keep_from_ms=last)


def apply_event_details(state: ProfileState, event: ProfileEvent) -> None:
    """The parts of applying an event that read its JSON: ids, traits, groups, context,
    consent and campaigns (last-writer-wins per key by event time, then messageId)."""
    ts, message_id, data = event.ts, event.message_id, event.data
    if event.user_id:
        state.user_ids.add(event.user_id)
    if event.anonymous_id:
        state.anonymous_ids.add(event.anonymous_id)
    if event.previous_id:
        state.previous_ids.add(event.previous_id)
    context = data.get("context")
    if type(context) is not dict:
        context = _EMPTY
    traits = context.get("traits") if context else None
    if type(traits) is not dict:
        traits = _EMPTY
    if event.type == "identify":
        own = data.get("traits")
        if type(own) is dict and own:
            traits = {**traits, **own}
    if traits:
        _write_traits(state.traits, traits, ts, message_id)
    if event.type == "group":
        group_id = data.get("groupId")
        if isinstance(group_id, str) and group_id:
            _write_traits(
                state.groups.setdefault(group_id, {}),
                _mapping(data.get("traits")),
                ts,
                message_id,
            )
    campaign = campaign_of(data) if context or "properties" in data else None
    if context:
        last_touch = state.context
        for name, value in context_fields(data, campaign).items():
            current = last_touch.get(name)
            if (
                current is None
                or ts > current.ts
                or (ts == current.ts and message_id > current.mid)
            ):
                last_touch[name] = Stamped(ts, message_id, value)
        preferences = consent_preferences(data)
        if preferences is not None:
            state.consent = latest(state.consent, Stamped(ts, message_id, preferences))
    if campaign:
        touch = Stamped(ts, message_id, campaign)
        state.first_touch = earliest(state.first_touch, touch)
        state.last_touch = latest(state.last_touch, touch)


def apply_batch(
    states: Sequence[ProfileState],
    batch: ProfileBatch,
    plan: FeaturePlan,
    counters: CounterPlan | None = None,
) -> None:
    """Apply a batch to its profiles' states (in place): ``states[p]`` is profile ``p`` of
    ``batch.profile``, and ``batch.latest_ms`` already counts each state's ``last_seen``.

    The result equals ``apply_event`` of every event in any order. Counters, first/last
    seen, last events, sessions, features and affinities are group-bys over the columns;
    ids, traits, groups, context, consent and campaigns read each event's JSON
    (``apply_event_details``), in batch order, which the last-writer-wins rule makes
    irrelevant.
    """
    if batch.size == 0:
        return
    for event, p in zip(batch.events, batch.profile.tolist(), strict=True):
        apply_event_details(states[p], event)
    by_profile = group_rows(batch.profile, batch.ts, batch.mid_rank)
    starts = by_profile.starts
    ends = np.append(starts[1:], batch.size) - 1
    order = by_profile.order
    owners = batch.profile[order[starts]].tolist()
    earliest_ts = batch.ts[order[starts]].tolist()
    latest_ts = batch.ts[order[ends]].tolist()
    counts = by_profile.sizes(batch.size).tolist()
    for p, count, low, high in zip(owners, counts, earliest_ts, latest_ts, strict=True):
        state = states[p]
        state.events += count
        if state.first_seen is None or low < state.first_seen:
            state.first_seen = low
        if state.last_seen is None or high > state.last_seen:
            state.last_seen = high
    _apply_last_events(states, batch)
    _apply_sessions(states, batch, by_profile, plan.features.session_gap_ms)
    plan.apply(batch, [s.features for s in states], [s.affinities for s in states])
    if counters is not None:
        apply_counters(states, batch, counters)


def _apply_last_events(states: Sequence[ProfileState], batch: ProfileBatch) -> None:
    # sorted by (profile, name, time, messageId): the last row of each (profile, name) run
    # is its latest event
    groups = group_rows(batch.profile, batch.name_code, batch.ts, batch.mid_rank)
    order = groups.order
    run = batch.profile[order] * (len(batch.names) + 1) + batch.name_code[order]
    is_last = np.append(run[1:] != run[:-1], True)
    events = batch.events
    profiles = batch.profile
    for row in order[is_last].tolist():
        event = events[row]
        last_events = states[int(profiles[row])].last_events
        seen = last_events.get(event.name)
        if seen is None or (event.ts, event.message_id) > (seen.ts, seen.mid):
            last_events[event.name] = Stamped(event.ts, event.message_id)


def _apply_sessions(
    states: Sequence[ProfileState], batch: ProfileBatch, by_profile: Groups, gap_ms: int
) -> None:
    # rows sorted by (profile, time): a session starts at a profile's first row or after a gap
    order = by_profile.order
    profile = batch.profile[order]
    ts = batch.ts[order]
    opens = np.ones(batch.size, dtype=np.bool_)
    opens[1:] = (profile[1:] != profile[:-1]) | (ts[1:] - ts[:-1] > gap_ms)
    starts = np.flatnonzero(opens)
    ends = np.append(starts[1:], batch.size) - 1
    pages = np.add.reduceat(batch.is_page[order].astype(np.int64), starts).tolist()
    sizes = np.diff(np.append(starts, batch.size)).tolist()
    spans: dict[int, Sessions] = {}
    for p, start, end, page_count, size in zip(
        profile[starts].tolist(), ts[starts].tolist(), ts[ends].tolist(), pages, sizes, strict=True
    ):
        spans.setdefault(p, {})[session_key(start)] = Session(end, page_count, size)
    for p, delta in spans.items():
        sessions = states[p].sessions
        if not sessions:
            sessions.update(delta)
        else:
            merge_sessions(sessions, delta, gap_ms=gap_ms)


def _merge_stamped(into: dict[str, Stamped], other: Mapping[str, Stamped]) -> None:
    for key, value in other.items():
        into[key] = latest(into.get(key), value) or value


def merge_states(into: ProfileState, other: ProfileState, features: FeatureSet) -> None:
    """Merge ``other`` into ``into``: the same state as applying both profiles' events to one."""
    into.user_ids |= other.user_ids
    into.anonymous_ids |= other.anonymous_ids
    into.previous_ids |= other.previous_ids
    into.events += other.events
    if other.first_seen is not None:
        into.first_seen = (
            other.first_seen if into.first_seen is None else min(into.first_seen, other.first_seen)
        )
    if other.last_seen is not None:
        into.last_seen = (
            other.last_seen if into.last_seen is None else max(into.last_seen, other.last_seen)
        )
    _merge_stamped(into.last_events, other.last_events)
    _merge_stamped(into.traits, other.traits)
    for group_id, traits in other.groups.items():
        _merge_stamped(into.groups.setdefault(group_id, {}), traits)
    _merge_stamped(into.context, other.context)
    into.first_touch = earliest(into.first_touch, other.first_touch)
    into.last_touch = latest(into.last_touch, other.last_touch)
    into.consent = latest(into.consent, other.consent)
    merge_sessions(into.sessions, other.sessions, gap_ms=features.session_gap_ms)
    merge_features(into.features, other.features)
    merge_affinities(into.affinities, other.affinities)
    for counter_id, times in other.counters.items():
        # the next batch trims them (``trim_counters``), with the windows it knows
        into.counters[counter_id] = sorted([*into.counters.get(counter_id, ()), *times])
    for counter_id, total in other.counter_totals.items():
        into.counter_totals[counter_id] = into.counter_totals.get(counter_id, 0) + total
    compact_state(into, features)


def _iso(ms: int | None) -> str | None:
    return format_ms(ms) if ms is not None else None


def evaluate_profile(
    state: ProfileState,
    features: FeatureSet,
    as_of_ms: int,
    *,
    json_sections: bool = True,
    reach: DocumentReach | None = None,
) -> dict[str, Any]:
    """The ``features`` section of a profile as of ``as_of_ms`` (windows relative to it);
    without ``json_sections``, no ``affinities`` or ``last_events`` (what models never read:
    the feature tables keep them as JSON); with ``reach`` (``document_reach`` of the paths a
    reader reads), only what those paths can reach: the rest is left out, not computed."""
    keys, only = (reach.keys, reach.only) if reach is not None else (None, None)

    def wanted(key: str) -> bool:
        return keys is None or key in keys

    recency = (
        round(max(0, as_of_ms - state.last_seen) / MS_PER_DAY, 3)
        if state.last_seen is not None
        else None
    )
    result: dict[str, Any] = {
        "first_seen": _iso(state.first_seen),
        "last_seen": _iso(state.last_seen),
        "recency_days": recency,
        "events_total": state.events,
    }
    if json_sections and wanted("last_events"):
        result["last_events"] = {
            name: format_ms(s.ts) for name, s in sorted(state.last_events.items())
        }
    if wanted("sessions"):
        result["sessions"] = summarize_sessions(
            state.sessions,
            as_of_ms,
            floor_ms=retention_floor(state.last_seen or 0, features.session_retention_ms),
            retention_days=features.config.session_retention_days,
        )
    if json_sections and wanted("affinities"):
        result["affinities"] = evaluate_affinities(
            state.affinities,
            features,
            as_of_ms,
            latest_ms=state.last_seen or 0,
            dimensions=only.get("affinities") if only is not None else None,
        )
    if wanted("context"):
        result["context"] = {
            "last": {name: s.value for name, s in sorted(state.context.items())},
            "first_touch": state.first_touch.value if state.first_touch else None,
            "last_touch": state.last_touch.value if state.last_touch else None,
        }
    result.update(evaluate_features(state.features, features, as_of_ms, only=only))
    return result


@dataclass(frozen=True, slots=True)
class DocumentReach:
    """What of a profile's ``features`` section some paths can reach (``document_reach``):
    its top-level ``keys``, and below a feature or ``affinities``, the keys one level down
    (``None``: all of them)."""

    keys: frozenset[str]
    only: Mapping[str, frozenset[str] | None]


def document_reach(paths: Collection[tuple[str, ...]], features: FeatureSet) -> DocumentReach:
    """What ``paths`` (dotted paths split at the dots, resolved as a reader that takes the
    longest key at each level: a key may hold dots) can reach of a profile's document."""
    keys: set[str] = set()
    for parts in paths:
        keys.update(".".join(parts[:n]) for n in range(1, len(parts) + 1))
    only: dict[str, frozenset[str] | None] = {}
    grouped = {f.name for f in features.features if f.group_by is not None}
    for name in keys & ({f.name for f in features.features} | {"affinities"}):
        if name not in grouped and name != "affinities":
            only[name] = None
            continue
        below: set[str] | None = set()
        for parts in paths:
            for n in range(1, len(parts) + 1):
                if ".".join(parts[:n]) != name:
                    continue
                rest = parts[n:]
                if not rest:
                    below = None
                elif below is not None:
                    below.update(".".join(rest[:m]) for m in range(1, len(rest) + 1))
            if below is None:
                break
        only[name] = frozenset(below) if below is not None else None
    return DocumentReach(frozenset(keys), only)

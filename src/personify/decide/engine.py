"""The decision engine: for one user and the placements of one page, the content to show, a
trace of why, and an exposure event (docs/decide.md).

The pipeline, per placement:

1. **candidates**: the published items that name the placement (the catalog snapshot);
2. **eligibility**: schedule, locale, targeting (segments and condition), frequency caps,
   and items already chosen for another placement of the same decision; every candidate set
   aside is in the trace with its reason;
3. **ranking**: the placement's strategy (``personify.decide.strategies``);
4. **diversity**: an item whose category another placement of the page shows already moves
   behind those whose category it does not;
5. **the answer**: the top ``limit``, each with its variant (a stable weighted choice per
   user), score, content and the probability it was chosen with.

**Experiments.** A running experiment on the placement that takes the user (namespace,
coverage, targeting) chooses their variant first (``personify.experiments``): the variant
they were first exposed to when there is one (sticky), else the deterministic hash of
(seed, unit), or for a bandit a draw from its current allocation. The variant's changes for
the placement (items to show, another strategy, fields) apply, and the answer and the
exposure event carry the experiment's key, variant, phase and the assignment's probability.

**Failure is never an error.** An unknown user, a user whose consent withdraws
personalization, and a state database or cache that is down are answered with each
placement's default item, ``fallback: true`` and the reason. Only a request that is not a
request (no user id, no placement) is refused, at the API.

**Exposures.** Every decision appends one ``Content Exposed`` event to the event log with the
decision id, the items, variants, strategy and probabilities; the worker keeps them for the
frequency caps (``personify.content.exposures``) and the lake keeps them for analysis.
The engine writes nothing else (ARCHITECTURE rule 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec
import numpy as np
import sqlalchemy as sa

from personify.clock import Clock, SystemClock
from personify.content.exposures import (
    EXPOSURE_EVENT,
    EXPOSURE_SOURCE,
    exposure_counts,
)
from personify.decide.snapshot import (
    Candidate,
    CatalogCache,
    CatalogSnapshot,
    PlacementColumns,
    PlacementSpec,
    locale_matches,
)
from personify.decide.strategies import STRATEGIES, Ranked, UserView, bucket
from personify.errors import BackendUnavailable
from personify.eventlog.base import EventLog, LogRecord
from personify.experiments.assignment import assign_variant
from personify.experiments.bandits import choose, context_of
from personify.experiments.model import Override, RunningExperiment
from personify.experiments.repository import sticky_assignments
from personify.profiles.document import personalization_allowed
from personify.profiles.events import datetime_ms
from personify.profiles.features import FeatureSet
from personify.profiles.predictions import read_predictions
from personify.profiles.service import INVALIDATED, ProfileService, facts_key
from personify.profiles.state import evaluate_profile
from personify.segments.predicates import EvaluationContext, Predicate
from personify.segments.tables import segment_members
from personify.store.database import Database
from personify.tally import DurationTally
from personify.tracing import MESSAGE_ID

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from personify.recommend.service import RecommendationService

__all__ = ["DecisionEngine", "DecisionRequest", "PlacementRequest"]

logger = logging.getLogger("personify.decide")

_encode = msgspec.json.encode
# the most items one placement answers with
MAX_LIMIT: Final = 50


# built once: read whenever a decision's user has no cached facts
_OPEN_SEGMENTS: Final = sa.select(segment_members.c.segment_key).where(
    segment_members.c.profile_id == sa.bindparam("profile"),
    segment_members.c.exited_at.is_(None),
)


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """A placement to fill, and how many items (its own default when ``None``)."""

    id: str
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    """Who is asking (a userId or an anonymousId), for which placements, in what context
    (``page``, ``device``, ``locale``, ``timestamp``: passed on to the exposure event)."""

    placements: Sequence[PlacementRequest]
    user_id: str | None = None
    anonymous_id: str | None = None
    context: Mapping[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> str:
        """The id the profile is looked up by (the userId when both are given)."""
        return self.user_id or self.anonymous_id or ""


class _Facts(msgspec.Struct, array_like=True):
    """What a decision reads beside the profile, as the cache keeps it."""

    segments: list[str]
    predictions: dict[str, Any] | None
    bought: list[str]
    # experiment key -> (variant, phase) the profile was first exposed to, as of the
    # catalog snapshot's revision ``revision``
    assignments: dict[str, tuple[str, int]] = msgspec.field(default_factory=dict)
    revision: int = -1


_decode_facts = msgspec.json.Decoder(_Facts).decode


@dataclass(slots=True)
class _User:
    """The user as far as this decision knows them: a view, or why it falls back."""

    view: UserView
    fallback: str | None
    exposures: Mapping[str, int] = field(default_factory=dict)
    bought: frozenset[str] = frozenset()
    assignments: Mapping[str, tuple[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Arm:
    """The variant of a running experiment this decision's user is in."""

    experiment: RunningExperiment
    variant: str
    probability: float
    context: str | None

    def override(self, placement_id: str) -> Override | None:
        """What the variant changes in the placement (``None``: nothing)."""
        return self.experiment.overrides.get(self.variant, {}).get(placement_id)

    def label(self) -> dict[str, Any]:
        """The experiment as the answer and the exposure event carry it."""
        found: dict[str, Any] = {
            "key": self.experiment.key,
            "variant": self.variant,
            "phase": self.experiment.phase,
            "probability": round(self.probability, 6),
        }
        if self.context is not None:
            found["context"] = self.context
        return found


def _choose_variant(candidate: Candidate, unit: str) -> tuple[str | None, float, dict[str, Any]]:
    """The item's variant for this user (stable, by weight), its probability, its content."""
    if not candidate.variants:
        return None, 1.0, candidate.content(None)
    total = sum(v.weight for v in candidate.variants)
    point = bucket("variant", candidate.id, unit) * total
    running = 0.0
    chosen = candidate.variants[-1]
    for variant in candidate.variants:
        running += variant.weight
        if point < running:
            chosen = variant
            break
    return chosen.key, chosen.weight / total, candidate.content(chosen)


class DecisionEngine:
    """Answers decisions from the cached catalog snapshot and the user's profile."""

    def __init__(
        self,
        catalog: CatalogCache,
        profiles: ProfileService,
        db: Database,
        log: EventLog,
        features: FeatureSet,
        *,
        recommendations: RecommendationService | None = None,
        facts_ttl_s: float = 30.0,
        clock: Clock | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._facts_ttl_s = facts_ttl_s
        # a span per decision (personify.tracing); None: none
        self._tracer = tracer
        self._catalog = catalog
        self._recommendations = recommendations
        self._profiles = profiles
        self._db = db
        self._log = log
        self._features = features
        self._clock = clock or SystemClock()
        self.exposures_lost = 0
        # how long decisions took, from the request to the answer (GET /metrics)
        self.latency = DurationTally()

    async def catalog_changed(self) -> None:
        """Tell every process sharing the cache to reload the catalog (after a change)."""
        await self._catalog.invalidate()

    async def decide(
        self, request: DecisionRequest, *, expose: bool = True, trace: bool = True
    ) -> dict[str, Any]:
        """The decision, with a trace unless ``trace`` is false (browsers get none, so none
        is built). Without ``expose`` (a preview: ``personify decide``), no exposure event
        is appended."""
        if self._tracer is None:
            return await self._decide(request, expose=expose, trace=trace)
        # the span names the decision by its id, the messageId of its exposure event
        with self._tracer.start_as_current_span(
            "decide", attributes={"personify.placements": len(request.placements)}
        ) as span:
            answer = await self._decide(request, expose=expose, trace=trace)
            span.set_attribute(MESSAGE_ID, answer["decisionId"])
            span.set_attribute("personify.fallback", str(answer["trace"]["fallback"]))
            return answer

    async def _decide(
        self, request: DecisionRequest, *, expose: bool, trace: bool
    ) -> dict[str, Any]:
        started = time.perf_counter()
        decision_id = uuid.uuid4().hex
        now = self._clock.now()
        try:
            snapshot: CatalogSnapshot | None = await self._catalog.current()
        except BackendUnavailable:
            snapshot = None
        asked = {p.id for p in request.placements}
        ranking_by_recommendations = [
            spec
            for key, spec in (snapshot.placements.items() if snapshot is not None else ())
            if key in asked and spec.strategy == "recommendations"
        ]
        user = await self._user(
            request.identity,
            snapshot,
            now,
            recommending=bool(ranking_by_recommendations),
            # what the user interacted with lately is left out unless a placement wants it
            exclude_seen=all(
                spec.params.get("excludeSeen", True) for spec in ranking_by_recommendations
            ),
        )
        unit = user.view.profile_id or request.identity
        rng = random.Random(decision_id)
        placements: dict[str, Any] = {}
        shown: set[str] = set()
        categories: set[str] = set()
        arms: dict[str, _Arm | None] = {}
        verdicts: dict[Predicate, bool] = {}
        if (
            snapshot is not None
            and user.fallback == "unknown_user"
            and any(p.id in snapshot.experiments for p in request.placements)
        ):
            # no profile yet, but perhaps exposed already (a visitor who only saw pages)
            with contextlib.suppress(BackendUnavailable):
                user.assignments = await asyncio.to_thread(self._sticky, request.identity)
        for wanted in request.placements:
            if wanted.id in placements:
                continue
            arm = (
                self._arm(
                    snapshot.experiments.get(wanted.id, ()), user, request.identity, rng, arms
                )
                if snapshot is not None
                else None
            )
            answer = self._placement(
                snapshot,
                wanted,
                user,
                unit,
                now,
                rng,
                shown,
                categories,
                request.context,
                trace,
                arm,
                verdicts,
            )
            if arm is not None and snapshot is not None and wanted.id in snapshot.placements:
                _label(answer, arm, wanted.id)
            placements[wanted.id] = answer
        exposure_logged = (
            await self._expose(decision_id, request, user, placements, now) if expose else False
        )
        self.latency.observe(time.perf_counter() - started)
        return {
            "decisionId": decision_id,
            "placements": placements,
            "trace": {
                "profileId": user.view.profile_id,
                "segments": sorted(user.view.segments),
                "fallback": user.fallback,
                "catalogRevision": snapshot.revision if snapshot is not None else None,
                "exposureLogged": exposure_logged,
            },
        }

    async def for_segments(
        self,
        placement_id: str,
        segments: Sequence[str],
        *,
        locale: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any] | None:
        """A placement's answer for everyone in exactly ``segments`` (the edge's answer, the
        same for every such user, so a CDN can cache it): eligibility by schedule, locale and
        segment targeting; an item whose condition reads a profile, or whose frequency is
        capped, needs a user and is left out; priority order. ``None`` for an unknown
        placement. Raises ``BackendUnavailable`` when no catalog could ever be read."""
        snapshot = await self._catalog.current()
        spec = snapshot.placements.get(placement_id)
        if spec is None:
            return None
        now = self._clock.now()
        members = frozenset(segments)
        unit = "segments:" + ",".join(sorted(members))
        eligible: list[Candidate] = []
        excluded: list[dict[str, str]] = []
        for candidate in snapshot.by_placement.get(spec.id, ()):
            reason = _edge_reason(candidate, members, locale, now)
            if reason is None:
                eligible.append(candidate)
            else:
                excluded.append({"id": candidate.id, "reason": reason})
        ranked = sorted(eligible, key=lambda c: (-c.priority, c.id))[
            : min(limit or spec.limit, MAX_LIMIT)
        ]
        items = [
            _shown_item(candidate, unit, float(candidate.priority), 1.0, rank)
            for rank, candidate in enumerate(ranked)
        ]
        fallback = not items
        if fallback:
            default = snapshot.items.get(spec.default_item) if spec.default_item else None
            if default is not None:
                items.append(_shown_item(default, unit, 0.0, 1.0, 0))
        return {
            "placement": spec.id,
            "segments": sorted(members),
            "locale": locale,
            "items": items,
            "fallback": fallback,
            "catalogRevision": snapshot.revision,
            "excluded": excluded,
        }

    # -- the user ----------------------------------------------------------------------------

    async def _user(
        self,
        identity: str,
        snapshot: CatalogSnapshot | None,
        now: datetime,
        *,
        recommending: bool = False,
        exclude_seen: bool = True,
    ) -> _User:
        empty = UserView(profile_id=None)
        try:
            loaded = await self._profiles.load(identity)
        except BackendUnavailable:
            return _User(empty, "profiles_unavailable")
        if loaded is None:
            return _User(empty, "unknown_user")
        if not personalization_allowed(loaded.state, self._features):
            return _User(UserView(profile_id=loaded.profile_id), "no_consent")
        state = loaded.state
        caps = snapshot.caps if snapshot is not None else {}
        key = facts_key(loaded.profile_id)
        try:
            cached = await self._profiles.cache.get(key)
        except BackendUnavailable:
            # read the database, and fill nothing
            cached = INVALIDATED
        known = _decode_facts(cached) if cached is not None and cached != INVALIDATED else None
        units = sorted({*state.all_ids(), loaded.profile_id})
        try:
            facts, exposures, recommended = await asyncio.to_thread(
                self._read,
                loaded.profile_id,
                known,
                caps,
                now,
                recommending,
                exclude_seen,
                units,
                snapshot,
            )
        except BackendUnavailable:
            return _User(UserView(profile_id=loaded.profile_id), "segments_unavailable")
        if cached is None:
            # set-if-absent: a batch that invalidated meanwhile left a marker, and wins
            with contextlib.suppress(BackendUnavailable):
                await self._profiles.cache.add(key, _encode(facts), ttl_s=self._facts_ttl_s)
        segments = frozenset(facts.segments)
        bought = frozenset(facts.bought)
        view = UserView(
            profile_id=loaded.profile_id,
            traits={k: s.value for k, s in state.traits.items() if s.value is not None},
            features=evaluate_profile(state, self._features, datetime_ms(now)),
            segments=segments,
            predictions=facts.predictions,
            recommended=recommended,
        )
        return _User(view, None, exposures, bought, facts.assignments)

    def _read(
        self,
        profile_id: str,
        known: _Facts | None,
        caps: Mapping[str, int],
        now: datetime,
        recommending: bool,
        exclude_seen: bool = True,
        units: Sequence[str] = (),
        snapshot: CatalogSnapshot | None = None,
    ) -> tuple[_Facts, dict[str, int], dict[str, tuple[float, str, str | None]]]:
        """What a decision reads beside the profile: its facts (from the database unless the
        cache had them), its exposures of the capped items, and (when a placement ranks by
        them) the recommender's items."""
        revision = snapshot.revision if snapshot is not None else -1
        if known is None:
            facts = self._facts(profile_id, units or [profile_id], revision)
        elif known.revision != revision and snapshot is not None and snapshot.experiments:
            # experiments changed since the facts were cached (a new phase, say): what the
            # profile was exposed to since then must be read, or a new phase could move it
            with self._db.connect() as conn:
                fresh = sticky_assignments(conn, units or [profile_id])
            facts = msgspec.structs.replace(known, assignments=fresh, revision=revision)
        else:
            facts = known
        exposures = exposure_counts(self._db, profile_id, caps, now) if caps else {}
        recommended: dict[str, tuple[float, str, str | None]] = {}
        if recommending and self._recommendations is not None:
            for item in self._recommendations.recommend(
                profile_id, limit=MAX_LIMIT, exclude_seen=exclude_seen, segments=facts.segments
            ):
                recommended[item.item_id] = (item.score, item.source, item.anchor)
        return facts, exposures, recommended

    def _facts(self, profile_id: str, units: Sequence[str], revision: int = -1) -> _Facts:
        """The profile's segments, predictions and experiment assignments (by any of its
        ids: ``units``) in one connection, and what it bought."""
        with self._db.connect() as conn:
            segments = sorted(
                str(key) for (key,) in conn.execute(_OPEN_SEGMENTS, {"profile": profile_id})
            )
            predictions = read_predictions(conn, [profile_id]).get(profile_id)
            assignments = sticky_assignments(conn, units)
        bought = (
            self._recommendations.bought_items(profile_id)
            if self._recommendations is not None
            else []
        )
        return _Facts(segments, predictions, bought, assignments, revision)

    def _sticky(self, unit: str) -> dict[str, tuple[str, int]]:
        with self._db.connect() as conn:
            return sticky_assignments(conn, [unit])

    # -- experiments ---------------------------------------------------------------------------

    def _arm(
        self,
        running: Sequence[RunningExperiment],
        user: _User,
        unit: str,
        rng: random.Random,
        arms: dict[str, _Arm | None],
    ) -> _Arm | None:
        """The first running experiment of a placement that takes the user, and their
        variant in it (each experiment is entered once per decision, whatever it spans)."""
        for experiment in running:
            if experiment.key not in arms:
                arms[experiment.key] = _enter(experiment, user, unit, rng)
            arm = arms[experiment.key]
            if arm is not None:
                return arm
        return None

    # -- one placement -----------------------------------------------------------------------

    def _placement(
        self,
        snapshot: CatalogSnapshot | None,
        wanted: PlacementRequest,
        user: _User,
        unit: str,
        now: datetime,
        rng: random.Random,
        shown: set[str],
        categories: set[str],
        context: Mapping[str, Any],
        trace: bool,
        arm: _Arm | None,
        verdicts: dict[Predicate, bool],
    ) -> dict[str, Any]:
        if snapshot is None:
            return _answer([], None, "catalog_unavailable", {"reason": "catalog_unavailable"})
        spec = snapshot.placements.get(wanted.id)
        if spec is None:
            return _answer([], None, "unknown_placement", {"reason": "unknown_placement"})
        limit = min(wanted.limit or spec.limit, MAX_LIMIT)
        override = arm.override(spec.id) if arm is not None else None
        if override is not None and override.items:
            # the variant's own items, whatever targeting says: the experiment targets
            chosen_items = [
                snapshot.items[item_id]
                for item_id in override.items
                if item_id in snapshot.items and item_id not in shown
            ][:limit]
            if chosen_items:
                items = []
                for rank, candidate in enumerate(chosen_items):
                    shown.add(candidate.id)
                    items.append(_shown_item(candidate, unit, float(candidate.priority), 1.0, rank))
                chosen_trace: dict[str, Any] = (
                    {"experimentItems": list(override.items)} if trace else {}
                )
                return _answer(items, "experiment", None, chosen_trace)
        if override is not None and override.strategy is not None:
            spec = dataclasses.replace(
                spec, strategy=override.strategy, params=override.params or {}
            )
        if user.fallback is not None:
            return self._fallback(snapshot, spec, user.fallback, unit, shown, {})
        columns = snapshot.columns.get(spec.id)
        locale = context.get("locale")
        wanted_locale = locale if isinstance(locale, str) else None
        if columns is not None:
            eligible, excluded, matched = _eligible_columns(
                columns, user, datetime_ms(now), shown, wanted_locale, trace, verdicts
            )
            candidates = len(columns.candidates)
        else:
            eligible, excluded, matched, candidates = [], [], {}, 0
        if spec.strategy == "recommendations":
            own = columns.index_of if columns is not None else {}
            extra = [
                snapshot.items[item_id]
                for item_id in user.view.recommended
                if item_id in snapshot.items and item_id not in own
            ]
            # the recommended items outside the placement, judged the same way
            more, more_excluded, more_matched = _eligible_columns(
                PlacementColumns(tuple(extra)),
                user,
                datetime_ms(now),
                shown,
                wanted_locale,
                trace,
                verdicts,
            )
            eligible.extend(more)
            excluded.extend(more_excluded)
            matched.update(more_matched)
            candidates += len(extra)
            if trace:
                chosen_ids = {c.id for c in eligible}
                for item_id, (_, source, anchor) in user.view.recommended.items():
                    if item_id in chosen_ids:
                        matched.setdefault(item_id, {})["recommendation"] = {
                            "source": source,
                            "anchor": anchor,
                        }
        strategy = STRATEGIES[spec.strategy]
        ranking = strategy.rank(eligible, user.view, spec, unit=unit, limit=limit, rng=rng)
        details: dict[str, Any] = {}
        if trace:
            excluded.extend(
                {"id": item_id, "reason": reason} for item_id, reason in ranking.excluded
            )
            details = {
                "candidates": candidates,
                "eligible": [c.id for c in eligible],
                "excluded": excluded,
                "matched": matched,
                "scores": {r.candidate.id: r.score for r in ranking.ranked},
            }
        if ranking.control:
            details["control"] = True
            answer = self._fallback(snapshot, spec, None, unit, shown, details)
            answer["strategy"] = spec.strategy
            return answer
        ranked = _diversify(ranking.ranked, categories)
        if (
            trace
            and ranked is not ranking.ranked
            and any(
                a.candidate.id != b.candidate.id
                for a, b in zip(ranked, ranking.ranked, strict=True)
            )
        ):
            details["diversified"] = True
        chosen = ranked[:limit]
        if not chosen:
            return self._fallback(snapshot, spec, "no_eligible_items", unit, shown, details)
        items = []
        for rank, entry in enumerate(chosen):
            shown.add(entry.candidate.id)
            if entry.candidate.category is not None:
                categories.add(entry.candidate.category)
            items.append(_shown_item(entry.candidate, unit, entry.score, entry.probability, rank))
        return _answer(items, spec.strategy, None, details)

    def _fallback(
        self,
        snapshot: CatalogSnapshot,
        spec: PlacementSpec,
        reason: str | None,
        unit: str,
        shown: set[str],
        trace: dict[str, Any],
    ) -> dict[str, Any]:
        """The placement's default item (published), whatever targeting says."""
        default = snapshot.items.get(spec.default_item) if spec.default_item else None
        trace = {**trace, "reason": reason} if reason is not None else dict(trace)
        if default is None:
            trace["default"] = "none" if spec.default_item is None else "not_published"
            return _answer([], spec.strategy if reason is None else None, reason, trace)
        shown.add(default.id)
        item = _shown_item(default, unit, 0.0, 1.0, 0)
        return _answer([item], spec.strategy if reason is None else None, reason, trace)

    # -- the exposure ------------------------------------------------------------------------

    async def _expose(
        self,
        decision_id: str,
        request: DecisionRequest,
        user: _User,
        placements: Mapping[str, Any],
        now: datetime,
    ) -> bool:
        when = now.isoformat()
        event = {
            "type": "track",
            "event": EXPOSURE_EVENT,
            "messageId": decision_id,
            ("userId" if request.user_id else "anonymousId"): request.identity,
            "properties": {
                "decisionId": decision_id,
                "profileId": user.view.profile_id,
                "fallback": user.fallback,
                "placements": [
                    {
                        "id": placement_id,
                        "strategy": answer["strategy"],
                        "fallback": answer["fallback"],
                        "reason": answer.get("reason"),
                        **({"experiment": answer["experiment"]} if "experiment" in answer else {}),
                        "items": [
                            {
                                key: item[key]
                                for key in ("id", "version", "variant", "probability", "rank")
                            }
                            for item in answer["items"]
                        ],
                    }
                    for placement_id, answer in placements.items()
                ],
            },
            "context": {
                "library": {"name": "personify", "version": "decide"},
                **{
                    key: request.context[key]
                    for key in ("page", "device", "locale")
                    if request.context.get(key) is not None
                },
            },
            "timestamp": when,
            "originalTimestamp": when,
            "receivedAt": when,
            "sentAt": when,
            "sourceId": EXPOSURE_SOURCE,
        }
        if request.user_id and request.anonymous_id:
            event["anonymousId"] = request.anonymous_id
        record = LogRecord(_encode(event), user.view.profile_id or request.identity, decision_id)
        try:
            await self._log.append([record])
        except BackendUnavailable:
            # the answer still goes out; the loss is counted (GET /metrics)
            self.exposures_lost += 1
            logger.warning("decision %s: the exposure event was not logged", decision_id)
            return False
        return True


def _label(answer: dict[str, Any], arm: _Arm, placement_id: str) -> None:
    """Say which experiment variant chose the answer, and apply the variant's fields."""
    answer["experiment"] = arm.label()
    override = arm.override(placement_id)
    if override is not None and override.fields:
        for item in answer["items"]:
            item["content"] = {**item["content"], **override.fields}


def _enter(
    experiment: RunningExperiment, user: _User, unit: str, rng: random.Random
) -> _Arm | None:
    """The user's variant in ``experiment``, or ``None`` when it does not take them."""
    if not unit or user.fallback not in (None, "unknown_user"):
        # without consent (or without the data to judge targeting) nobody is experimented on
        return None
    # an unknown visitor is judged as a user with no segments, traits or features yet: a
    # condition such as "not in shoe-fans" takes them, "in shoe-fans" does not
    view = user.view
    if experiment.segments and not view.segments.intersection(experiment.segments):
        return None
    if experiment.condition is not None and not experiment.condition.evaluate(
        EvaluationContext(
            traits=view.traits,
            features=view.features,
            segments=view.segments,
            predictions=view.predictions,
        )
    ):
        return None
    allocation = experiment.allocation
    if experiment.type == "bandit":
        if assign_variant(allocation, unit) is None:
            return None
        context = (
            context_of(view.segments, experiment.bandit_contexts)
            if experiment.bandit_contexts
            else "*"
        )
        shares = experiment.bandit_allocations.get(context) or experiment.bandit_allocations.get(
            "*"
        )
        if not shares:
            # no allocation computed yet: the configured weights (each variant's share)
            shares = {
                a.variant: a.probability
                for a in map(allocation.assignment_for, range(len(allocation.variants)))
                if a.probability > 0
            }
        arm, propensity = choose(shares, rng.random())
        return _Arm(experiment, arm, propensity, context)
    sticky = user.assignments.get(experiment.key)
    index = allocation.index_of(sticky[0]) if sticky is not None else None
    if index is not None:
        # exposed before: kept, whatever the weights, coverage or namespace say now
        kept = allocation.assignment_for(index)
        return _Arm(experiment, kept.variant, kept.probability, None)
    assigned = assign_variant(allocation, unit)
    if assigned is None:
        return None
    return _Arm(experiment, assigned.variant, assigned.probability, None)


# why a candidate is not eligible, by code (0: it is); the lowest code that applies is given,
# in the order the checks are listed in the module docstring
_REASONS: Final = (
    "",
    "shown_in_another_placement",
    "not_started",
    "ended",
    "locale_not_matched",
    "already_bought",
    "frequency_cap",
    "segments_not_matched",
    "condition_not_matched",
)


def _eligible_columns(
    columns: PlacementColumns,
    user: _User,
    now_ms: int,
    shown: set[str],
    locale: str | None,
    trace: bool,
    verdicts: dict[Predicate, bool],
) -> tuple[list[Candidate], list[dict[str, str]], dict[str, Any]]:
    """A placement's eligible candidates, judged as columns: each check marks the candidates
    it excludes (later checks first, so the earliest that applies is the reason given);
    conditions are evaluated only for candidates every other check let through, each
    distinct one once per decision (``verdicts``: condition -> result, shared by the
    decision's placements)."""
    candidates = columns.candidates
    count = len(candidates)
    if count == 0:
        return [], [], {}
    view = user.view
    reason = np.zeros(count, dtype=np.int8)
    if columns.by_segment:
        by_segment = columns.by_segment
        reached = [by_segment[key] for key in view.segments if key in by_segment]
        if reached:
            hit = np.zeros(count, dtype=bool)
            hit[np.concatenate(reached)] = True
            reason[columns.targeted & ~hit] = 7
        else:
            reason[columns.targeted] = 7
    for index in columns.capped:
        cap = candidates[index].frequency_cap
        if cap is not None and user.exposures.get(candidates[index].id, 0) >= cap[0]:
            reason[index] = 6
    for item_id in user.bought:
        bought = columns.products.get(item_id)
        if bought is not None:
            reason[bought] = 5
    unsuited = columns.unsuited(locale)
    if unsuited is not None:
        reason[unsuited] = 4
    reason[columns.end_ms <= now_ms] = 3
    reason[columns.start_ms > now_ms] = 2
    for item_id in shown:
        position = columns.index_of.get(item_id)
        if position is not None:
            reason[position] = 1
    pending = (reason == 0) & columns.conditional
    if pending.any():
        evaluation: EvaluationContext | None = None
        groups = columns.condition_group
        # failed[group]: the group's condition is false (the last place, group -1, never is)
        failed = np.zeros(len(columns.conditions) + 1, dtype=bool)
        # each distinct condition once per decision (``verdicts`` spans its placements)
        for group in set(groups[pending].tolist()):
            condition = columns.conditions[group]
            verdict = verdicts.get(condition)
            if verdict is None:
                if evaluation is None:
                    evaluation = EvaluationContext(
                        traits=view.traits,
                        features=view.features,
                        segments=view.segments,
                        predictions=view.predictions,
                    )
                verdict = verdicts[condition] = condition.evaluate(evaluation)
            failed[group] = not verdict
        reason[pending & failed[groups]] = 8
    kept = np.flatnonzero(reason == 0).tolist()
    eligible = [candidates[index] for index in kept]
    excluded: list[dict[str, str]] = []
    matched: dict[str, Any] = {}
    if trace:
        ids = columns.ids
        out = np.flatnonzero(reason)
        excluded = [
            {"id": ids[index], "reason": _REASONS[code]}
            for index, code in zip(out.tolist(), reason[out].tolist(), strict=True)
        ]
        for candidate in eligible:
            if candidate.segments:
                hits = sorted(set(candidate.segments) & view.segments)
                matched.setdefault(candidate.id, {})["segments"] = hits
            if candidate.condition is not None:
                matched.setdefault(candidate.id, {})["condition"] = True
    return eligible, excluded, matched


def _edge_reason(
    candidate: Candidate, segments: frozenset[str], locale: str | None, now: datetime
) -> str | None:
    """Why an item is not in the edge's answer for ``segments`` (``None``: it is)."""
    if candidate.start is not None and now < candidate.start:
        return "not_started"
    if candidate.end is not None and now >= candidate.end:
        return "ended"
    if not locale_matches(locale, candidate.locale):
        return "locale_not_matched"
    if candidate.condition is not None or candidate.frequency_cap is not None:
        # a condition reads a profile, a cap counts one user's exposures
        return "needs_user"
    if candidate.segments and not set(candidate.segments) & segments:
        return "segments_not_matched"
    return None


def _diversify(ranked: list[Ranked], categories: set[str]) -> list[Ranked]:
    """Items whose category another placement of the page shows already go last (stable)."""
    if not categories:
        return ranked
    fresh = [r for r in ranked if r.candidate.category not in categories]
    repeated = [r for r in ranked if r.candidate.category in categories]
    return fresh + repeated


def _shown_item(
    candidate: Candidate, unit: str, score: float, probability: float, rank: int
) -> dict[str, Any]:
    """An item as the answer shows it: its variant for this user, and the chance it was
    shown here (the strategy's odds times the variant's share)."""
    variant, share, content = _choose_variant(candidate, unit)
    return {
        "id": candidate.id,
        "version": candidate.version,
        "variant": variant,
        "score": score,
        "probability": round(probability * share, 6),
        "rank": rank,
        "content": content,
    }


def _answer(
    items: list[dict[str, Any]], strategy: str | None, reason: str | None, trace: dict[str, Any]
) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "items": items,
        "strategy": strategy,
        "fallback": reason is not None,
        "trace": trace,
    }
    if reason is not None:
        answer["reason"] = reason
    return answer

"""``personify demo``: an embedded set-up with a demo source, scripted events, and the server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import uvicorn

from personify.api.app import create_app
from personify.api.demo_page import DEMO_PATH, DEMO_WRITE_KEY
from personify.cli.shop import catalog, generate_shop
from personify.cli.shop_history import ShopHistory, generate_history
from personify.clock import format_timestamp
from personify.errors import Conflict, InvalidDefinition, NotFound
from personify.events.normalize import Normalizer
from personify.ingest.importer import EventImporter, ImportSummary, SourceRow
from personify.ingest.sources import Source
from personify.lake.sink import LAKE_GROUP
from personify.lake.table import Lake
from personify.lake.warehouse import StateProfiles, Warehouse
from personify.predict.report import evaluation_report
from personify.predict.targets import Target, target
from personify.predict.trainer import Evaluation, ModelTrainer, TrainingRun
from personify.predict.training import FeatureJob
from personify.profiles.predictions import read_predictions
from personify.profiles.tables import identities, profile_predictions, profiles
from personify.quality.checks import QualityContext
from personify.quality.results import QualityRepository
from personify.runtime import Runtime
from personify.segments.clusterings import RunOutcome
from personify.segments.rfm import RFM_CELLS, rfm_key
from personify.settings import Settings

# Fixed, well-known demo credentials so the README's curl calls work as printed (the write key
# is the demo page's, personify.api.demo_page). They exist only in the demo's own data folder;
# never use them in production.
DEMO_ADMIN_KEY = "demo-admin-key"
DEMO_QUERY = (
    "SELECT type, coalesce(event, '') AS event, count(*) AS events, "
    "count(DISTINCT user_key) AS users FROM fact_events GROUP BY ALL ORDER BY events DESC"
)


def _scripted_events(now: datetime) -> list[dict[str, Any]]:
    def at(minutes_ago: float) -> str:
        return (now - timedelta(minutes=minutes_ago)).isoformat().replace("+00:00", "Z")

    anon = "anon-7f3a"
    return [
        {
            "type": "page",
            "anonymousId": anon,
            "name": "Home",
            "properties": {"path": "/", "category": "home"},
            "timestamp": at(30),
            "messageId": "demo-1",
        },
        {
            "type": "track",
            "anonymousId": anon,
            "event": "Product Viewed",
            "properties": {"product_id": "sku-42", "category": "shoes", "price": 89.0},
            "timestamp": at(28),
            "messageId": "demo-2",
        },
        {
            "type": "identify",
            "anonymousId": anon,
            "userId": "user-ada",
            "traits": {"name": "Ada", "email": "Ada@Example.com", "plan": "pro"},
            "timestamp": at(25),
            "messageId": "demo-3",
        },
        {
            "type": "track",
            "userId": "user-ada",
            "anonymousId": anon,
            "event": "Order Completed",
            "properties": {
                "order_id": "o-1",
                "revenue": 89.0,
                "products": [{"product_id": "sku-42", "category": "shoes"}],
            },
            "timestamp": at(20),
            "messageId": "demo-4",
        },
        {
            "type": "page",
            "userId": "user-ada",
            "name": "Blog",
            "properties": {"path": "/blog/running", "category": "running"},
            "timestamp": at(5),
            "messageId": "demo-5",
        },
    ]


# rule segments the worker keeps current while the demo's traffic arrives (docs/segments.md)
DEMO_SEGMENTS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "shoe-browsers",
        "Viewed shoes 3+ times this week",
        {
            "event": "Product Viewed",
            "where": [{"property": "category", "op": "eq", "value": "shoes"}],
            "within": "7d",
            "count": {"op": "gte", "value": 3},
        },
    ),
    ("buyers", "Ordered in the last 30 days", {"event": "Order Completed", "within": "30d"}),
    ("pro-plan", "On the pro plan", {"trait": "plan", "op": "eq", "value": "pro"}),
    (
        "shoe-buyers",
        "Shoe browsers who bought",
        {"all": [{"segment": "shoe-browsers"}, {"segment": "buyers"}]},
    ),
    (
        "shoe-fans",
        "Viewed shoes twice this week (the demo page's shoe banner)",
        {
            "event": "Product Viewed",
            "where": [{"property": "category", "op": "eq", "value": "shoes"}],
            "within": "7d",
            "count": {"op": "gte", "value": 2},
        },
    ),
]

# the demo shop page's catalog (GET /demo): a hero banner for everyone and one for shoe fans,
# and recommendations with a hint while there is nothing to recommend. The products are the
# shop's own, learned from its Product Viewed events (``seed`` writes them as those do)
DEMO_CATALOG: dict[str, Any] = {
    "items": [
        {
            "id": "hero-welcome",
            "type": "banner",
            "fields": {
                "title": "Welcome to the Personify demo shop",
                "text": "Look at a few products: this banner and your recommendations follow you.",
                "url": "#products",
            },
            "placements": [],
        },
        {
            "id": "hero-shoes",
            "type": "banner",
            "fields": {
                "title": "Trail season: new shoes are in",
                "text": "You looked at shoes twice this week, so you are in the segment shoe-fans.",
                "url": "#recs",
            },
            "placements": ["hero"],
            "priority": 10,
            "targeting": {"segments": ["shoe-fans"]},
        },
        {
            "id": "hero-delivery",
            "type": "banner",
            "fields": {
                "title": "Free delivery on every order this week",
                "text": "The experiment hero-copy shows this banner to half of the visitors.",
                "url": "#products",
            },
            "placements": [],
        },
        {
            "id": "recs-hint",
            "type": "banner",
            "fields": {"name": "View a product to get recommendations", "category": "hint"},
            "placements": [],
        },
    ],
    "placements": [
        {
            "id": "hero",
            "description": "the demo page's hero banner",
            "defaultItem": "hero-welcome",
            "strategy": "priority",
            "limit": 1,
        },
        {
            "id": "recs",
            "description": "the demo page's recommendations",
            "defaultItem": "recs-hint",
            "strategy": "recommendations",
            "limit": 4,
        },
    ],
}


# the demo page's experiment: the hero banner as configured against a free-delivery banner,
# judged on purchases within a week of the first exposure, with revenue as a guardrail
DEMO_EXPERIMENT: dict[str, Any] = {
    "key": "hero-copy",
    "name": "Hero banner: free delivery",
    "hypothesis": "Promising free delivery in the hero banner makes more visitors buy",
    "placements": ["hero"],
    "variants": [
        {"key": "control", "weight": 1},
        {"key": "delivery", "weight": 1, "placements": {"hero": {"items": ["hero-delivery"]}}},
    ],
    # shoe fans see the shoe banner, whatever the variant: the test is on everyone else
    "targeting": {"condition": {"not": {"segment": "shoe-fans"}}},
    "metrics": {
        "primary": [
            {"key": "purchase", "type": "conversion", "event": "Order Completed", "windowDays": 7}
        ],
        "guardrails": [
            {
                "key": "revenue",
                "type": "sum",
                "event": "Order Completed",
                "property": "revenue",
                "windowDays": 7,
                "cap": {"percentile": 0.99},
            }
        ],
    },
    "analysis": {"method": "sequential", "alpha": 0.05},
}


def seed(services: Runtime) -> None:
    """Create the demo source, admin key and segments if they are not there yet."""
    with contextlib.suppress(Conflict):
        services.sources.create("demo", write_key=DEMO_WRITE_KEY)
    if services.api_keys.resolve(DEMO_ADMIN_KEY) is None:
        services.api_keys.create("demo-admin", "admin", secret=DEMO_ADMIN_KEY)
    for key, name, condition in DEMO_SEGMENTS:
        with contextlib.suppress(Conflict):
            services.segments.create(key, name=name, condition=condition)
    seed_catalog(services)
    repository = services.experiments.repository
    with contextlib.suppress(Conflict):
        repository.create(DEMO_EXPERIMENT)
    if repository.get(DEMO_EXPERIMENT["key"])["status"] != "running":
        repository.start(DEMO_EXPERIMENT["key"])


def seed_catalog(services: Runtime) -> None:
    """Import the demo page's banners and placements (published; unchanged on a re-run) and
    the shop's products, so that the page lists them before the worker has learned them."""
    # an item names only placements that exist, and a placement's default item must exist:
    # first the items that name no placement and the placements, then the placed items
    unplaced = [item for item in DEMO_CATALOG["items"] if not item.get("placements")]
    placed = [item for item in DEMO_CATALOG["items"] if item.get("placements")]
    first = services.content.import_catalog(
        {"items": unplaced, "placements": DEMO_CATALOG["placements"]}, publish=True
    )
    then = services.content.import_catalog({"items": placed}, publish=True)
    refused = [*first.items["errors"], *first.placements["errors"], *then.items["errors"]]
    if refused:
        raise InvalidDefinition(
            "the demo's catalog was refused", code="invalid_demo_catalog", details=refused
        )
    services.content.upsert_products(catalog())


async def _send_scripted_events(base_url: str, echo: Callable[[str], None]) -> None:
    events = _scripted_events(datetime.now(UTC))
    async with httpx.AsyncClient(
        base_url=base_url, auth=(DEMO_WRITE_KEY, ""), timeout=10
    ) as client:
        response = await client.post("/v1/batch", json={"batch": events})
        response.raise_for_status()
        echo(f"sent {len(events)} scripted events through POST /v1/batch: {response.json()}")


async def _send_shop(base_url: str, echo: Callable[[str], None]) -> None:
    """Replay the generated shop through the real HTTP API, 100 events per batch."""
    events = generate_shop(datetime.now(UTC))
    async with httpx.AsyncClient(
        base_url=base_url, auth=(DEMO_WRITE_KEY, ""), timeout=30
    ) as client:
        for start in range(0, len(events), 100):
            response = await client.post("/v1/batch", json={"batch": events[start : start + 100]})
            response.raise_for_status()
    echo(f"replayed a generated shop: {len(events)} events of 150 visitors through POST /v1/batch")


async def _show_decide(base_url: str, echo: Callable[[str], None]) -> None:
    """Decide the demo page's placements for user-ada as a browser does (with the write key),
    print what each shows, and point to the page."""
    body = {
        "userId": "user-ada",
        "placements": [{"id": "hero"}, {"id": "recs"}],
        "context": {"page": DEMO_PATH},
    }
    async with httpx.AsyncClient(
        base_url=base_url, auth=(DEMO_WRITE_KEY, ""), timeout=10
    ) as client:
        response = await client.post("/v1/decide", json=body)
        response.raise_for_status()
    answer: dict[str, Any] = response.json()
    echo("The decision API fills the demo page's placements, the hero banner and recommendations:")
    echo(f"  curl -u {DEMO_WRITE_KEY}: -H 'Content-Type: application/json' \\")
    echo(f"       -d '{json.dumps(body, separators=(',', ':'))}' {base_url}/v1/decide")
    for key, placement in answer["placements"].items():
        ids = ", ".join(item["id"] for item in placement["items"]) or "nothing"
        how = "its default" if placement["fallback"] else f"strategy {placement['strategy']}"
        echo(f"  {key:<5} {ids}  ({how})")
    echo(f"The demo shop page decides the same way in the browser: open {base_url}{DEMO_PATH}")
    echo(
        "  and view two shoes: the banner turns to shoes (segment shoe-fans) and the "
        "recommendations follow what you viewed"
    )
    echo("")


async def _expose_visitors(base_url: str, echo: Callable[[str], None], visitors: int = 400) -> None:
    """Visitors land on the demo page (decided as the browser does); those the banner
    convinces buy: 9% of control, 14% of the free-delivery variant (a seeded draw)."""
    draw = random.Random(7)
    orders = []
    async with httpx.AsyncClient(
        base_url=base_url, auth=(DEMO_WRITE_KEY, ""), timeout=10
    ) as client:
        for number in range(visitors):
            visitor = f"demo-visitor-{number}"
            body = {"anonymousId": visitor, "placements": [{"id": "hero"}]}
            response = await client.post("/v1/decide", json=body)
            response.raise_for_status()
            experiment = response.json()["placements"]["hero"].get("experiment") or {}
            rate = 0.14 if experiment.get("variant") == "delivery" else 0.09
            if draw.random() < rate:
                orders.append(
                    {
                        "type": "track",
                        "anonymousId": visitor,
                        "event": "Order Completed",
                        "properties": {"revenue": round(draw.uniform(20, 120), 2)},
                    }
                )
        if orders:
            response = await client.post("/v1/batch", json={"batch": orders})
            response.raise_for_status()
    echo(
        f"Experiment {DEMO_EXPERIMENT['key']} runs on the demo page's hero banner: {visitors} "
        f"visitors were decided through POST /v1/decide and {len(orders)} of them bought"
    )


async def _show_experiment(
    services: Runtime, base_url: str, echo: Callable[[str], None], chart: Path
) -> None:
    """The experiment's report from the lake, as ``personify experiments report`` prints
    it, and its chart as an HTML file."""
    from personify.cli.experiments import render_text
    from personify.experiments.service import chart_html

    key = DEMO_EXPERIMENT["key"]
    results = await asyncio.to_thread(services.experiments.results, key, daily=True)
    chart.parent.mkdir(parents=True, exist_ok=True)
    chart.write_text(chart_html(results), encoding="utf-8")
    echo(f"  personify experiments report {key}")
    for line in render_text(results).splitlines():
        echo(f"  {line}")
    echo(
        f"  curl -H 'Authorization: Bearer {DEMO_ADMIN_KEY}' {base_url}/v1/experiments/{key}/results"
    )
    echo(f"  the report with its chart: {chart}")
    echo("")


# the demo's person to forget: a visitor who signs up, browses, and then asks to be erased
ERASED_USER = "user-eve"


def _eve_events(now: datetime) -> list[dict[str, Any]]:
    when = (now - timedelta(minutes=10)).isoformat()
    return [
        {
            "type": "identify",
            "userId": ERASED_USER,
            "anonymousId": "anon-e5e1",
            "traits": {"name": "Eve", "email": "eve@example.com"},
            "timestamp": when,
        },
        {
            "type": "track",
            "userId": ERASED_USER,
            "event": "Product Viewed",
            "properties": {"product_id": "sku-42", "category": "shoes"},
            "timestamp": when,
        },
    ]


async def _show_erasure(services: Runtime, base_url: str, echo: Callable[[str], None]) -> None:
    """A person asks to be erased: every store forgets them, later events are suppressed."""
    admin = {"Authorization": f"Bearer {DEMO_ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        sent = await client.post(
            "/v1/batch", json={"batch": _eve_events(datetime.now(UTC))}, auth=(DEMO_WRITE_KEY, "")
        )
        sent.raise_for_status()
        await _wait_for_group(services, services.settings.worker_group)
        await _wait_for_lake(services)
        before = await client.get(f"/v1/profiles/{ERASED_USER}", headers=admin)
        subject = await asyncio.to_thread(services.privacy.resolve, ERASED_USER)
        held = await services.privacy.find_async(subject) if subject is not None else {}
        stores = sorted(name for name, found in held.items() if found)
        echo(
            f"{ERASED_USER} (profile {before.status_code}) is held in: {', '.join(stores)}. "
            "They ask to be erased:"
        )
        echo(
            f"  curl -X DELETE -H 'Authorization: Bearer {DEMO_ADMIN_KEY}' {base_url}/v1/profiles/{ERASED_USER}"
        )
        asked = await client.delete(f"/v1/profiles/{ERASED_USER}", headers=admin)
        asked.raise_for_status()
        request_id = asked.json()["requestId"]
        # the server's job takes it at once (and every few seconds): wait for it
        status: dict[str, Any] = {}
        deadline = asyncio.get_running_loop().time() + 60
        while asyncio.get_running_loop().time() < deadline:
            await services.privacy.run_async()
            status = (await client.get(f"/v1/privacy/requests/{request_id}", headers=admin)).json()
            steps = status.get("steps") or {}
            if status.get("status") in ("done", "failed") or (
                status.get("status") == "pending"
                and steps
                and all(step["status"] in ("done", "waiting") for step in steps.values())
                and len(steps) == len(services.privacy.erasers)
            ):
                break
            await asyncio.sleep(0.5)
        echo(f"  request {request_id}: {status['status']}")
        for name, step in status["steps"].items():
            result = step.get("result") or {}
            remains = (
                " (the lake's old files go after its vacuum retention)"
                if "remains" in result
                else ""
            )
            echo(f"    {name:<14} {step['status']}{remains}")
        after = await client.get(f"/v1/profiles/{ERASED_USER}", headers=admin)
        left = await services.privacy.find_async(subject) if subject is not None else {}
        still = sorted(name for name, found in left.items() if found)
        superseded = still == ["lake"] and not any("rows in version" in f for f in left["lake"])
        if not still:
            held_now = "no store holds them"
        elif superseded:
            hours = services.settings.lake_vacuum_retention_hours
            held_now = (
                "no store holds them, but for the lake's superseded files "
                f"({len(left['lake'])}), deleted once older than the {hours} h vacuum "
                "retention (PERSONIFY_LAKE_VACUUM_RETENTION_HOURS; the request stays open "
                "until then)"
            )
        else:
            held_now = f"still held in: {', '.join(still)}"
        echo(f"  GET /v1/profiles/{ERASED_USER} now answers {after.status_code}; {held_now}")
        again = await client.post(
            "/v1/batch", json={"batch": _eve_events(datetime.now(UTC))}, auth=(DEMO_WRITE_KEY, "")
        )
        echo(f"  their next events are suppressed at the collector: {again.json()}")
        echo(
            f"  personify privacy check {ERASED_USER}   # every store searched for every id of theirs"
        )
    echo("")


async def _wait_for_lake(services: Runtime, timeout_s: float = 30.0) -> bool:
    """Wait until the lake writer has committed everything in the log."""
    return await _wait_for_group(services, LAKE_GROUP, timeout_s)


async def _wait_for_group(services: Runtime, group: str, timeout_s: float = 30.0) -> bool:
    """Wait until consumer group ``group`` has committed everything in the log."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if await services.log.lag(group) == 0:
            return True
        await asyncio.sleep(0.2)
    return False


async def _show_rfm(services: Runtime, base_url: str, echo: Callable[[str], None]) -> None:
    """Score every buyer over the lake (an RFM run), put them in their cells, print sizes."""
    run = await asyncio.to_thread(services.run_rfm)
    await asyncio.to_thread(services.segment_backfill.run)
    await services.segment_relay.flush()
    echo(f"RFM over the lake: {run.model.buyers} buyers scored; the cells are segments:")
    sizes = []
    for cell in RFM_CELLS:
        stats = await asyncio.to_thread(services.segments.stats, rfm_key(cell), days=1)
        sizes.append(f"{rfm_key(cell)} {stats['size']}")
    echo("  " + ", ".join(sizes))
    echo(f"  curl -H 'Authorization: Bearer {DEMO_ADMIN_KEY}' {base_url}/v1/rfm")
    echo("")


# a clustering of the demo's visitors by how much they buy and browse: the shop has light
# visitors, browsers who come back, and buyers, so k is 3
DEMO_CLUSTERING = "shoppers"
DEMO_CLUSTER_SPEC: dict[str, Any] = {
    "features": ["orders.all", "revenue.all", "events_total", "sessions.count"],
    "k": 3,
}


def _recluster(services: Runtime) -> RunOutcome:
    """Save the demo clustering if it is not there yet and carry out a run of it now.

    Saved with a weekly schedule, its first run is due at once: that run is carried out here
    (which moves the schedule a week on); when it exists already, a run is requested. It is
    saved here, not in ``seed``, so that serve's job does not run it before the lake is full."""
    key = DEMO_CLUSTERING
    with contextlib.suppress(Conflict):
        services.clusterings.create(
            key,
            DEMO_CLUSTER_SPEC,
            name="Shoppers",
            description="visitors grouped by how much they buy and browse",
            schedule="weekly",
        )
    due = services.clusterings.get(key).next_run_at
    if due is not None and due <= services.clock.now():
        # serve's job may have claimed the due run first: then a run is requested
        with contextlib.suppress(Conflict):
            runs = services.clustering_runner.run_pending()
            done = [o for o in runs if o.run.clustering_key == key]
            if done:
                return done[-1]
    return services.clustering_runner.run_now(key)


async def _show_clustering(services: Runtime, base_url: str, echo: Callable[[str], None]) -> None:
    """Find groups of visitors in their features over the lake (a clustering run); print
    each cluster's segment, name and size."""
    outcome = await asyncio.to_thread(_recluster, services)
    await services.segment_relay.flush()
    run = outcome.run
    if run.status != "succeeded" or run.report is None:
        echo(f"The clustering {DEMO_CLUSTERING!r} failed: {run.error}")
        echo("")
        return
    report = run.report
    names = (await asyncio.to_thread(services.clusterings.get, DEMO_CLUSTERING)).names
    quality = f", silhouette {report['silhouette']:.2f}" if report["silhouette"] is not None else ""
    echo(
        f"A clustering found {report['k']} groups of visitors in {report['rows']} profiles "
        f"(run {run.number}{quality}); each is a segment:"
    )
    clusters = sorted(report["clusters"], key=lambda c: -c["size"])
    width = max(len(f"{DEMO_CLUSTERING}/{c['key']}") for c in clusters)
    for c in clusters:
        segment = f"{DEMO_CLUSTERING}/{c['key']}"
        echo(f"  {segment:<{width}} {c['size']:>4} members  ({names.get(c['key'], c['name'])})")
    auth = f"curl -H 'Authorization: Bearer {DEMO_ADMIN_KEY}'"
    echo(f"  {auth} {base_url}/v1/clusterings/{DEMO_CLUSTERING}")
    echo(f"  {auth} {base_url}/v1/segments/{DEMO_CLUSTERING}/{clusters[0]['key']}/members")
    echo(f"  personify segments recluster {DEMO_CLUSTERING}")
    echo("")


# -- churn and lifetime value ----------------------------------------------------------------

# the history the churn and CLV models learn from: a shop of 150 days with planted drivers of
# churn and spend. It is imported, not sent through HTTP, so that each event keeps its own
# arrival time: features as of a past cut-off then see the events known by then, where events
# sent now would all be "received now" and a model trained as of a past cut-off would see none
HISTORY_SOURCE = "shop-history"
HISTORY_CUSTOMERS = 400
HISTORY_DAYS = 150
HISTORY_SEED = 11
HISTORY_SALE_AT = 0.35
CHURN_HORIZON_DAYS = 30.0
# clv's default horizon is 90 days; the demo's 150 days of history cannot validate that on a
# later window, so the demo predicts 30 days of revenue
CLV_HORIZON_DAYS = 30.0


def shop_history(now: datetime) -> ShopHistory:
    """The demo's 150-day shop up to ``now``, its anonymous ids renamed (``hist-anon-…``) so
    they do not join the 30-day shop's visitors, who are numbered ``anon-0001`` on too."""
    history = generate_history(
        now,
        customers=HISTORY_CUSTOMERS,
        days=HISTORY_DAYS,
        seed=HISTORY_SEED,
        sale_at=HISTORY_SALE_AT,
    )
    for event in history.events:
        event["anonymousId"] = f"hist-{event['anonymousId']}"
    return history


def _history_source(services: Runtime) -> Source:
    """The source the history is attributed to (created on the demo's first run)."""
    try:
        return services.sources.get(HISTORY_SOURCE)
    except NotFound:
        source, _ = services.sources.create(HISTORY_SOURCE)
        return source


async def _import_history(services: Runtime, source: Source, history: ShopHistory) -> ImportSummary:
    """Import the history as ``personify import`` does: the collector's validation and PII
    hashing, the ingest quality checks, and each event's own arrival time."""
    settings = services.settings
    normalizer = Normalizer(
        services.hasher,
        max_event_bytes=settings.max_event_bytes,
        future_tolerance_s=settings.future_tolerance_hours * 3600.0,
    )
    importer = EventImporter(
        services.log,
        normalizer,
        services.hasher,
        source,
        quality=QualityContext(
            now=services.clock.now(), future_tolerance_hours=settings.future_tolerance_hours
        ),
        record_quality=QualityRepository(services.db).record,
        clock=services.clock,
    )

    def rows() -> Iterator[SourceRow]:
        for number, event in enumerate(history.events, start=1):
            yield SourceRow(number, event, 1)

    return await importer.run(
        rows(),
        dataset=f"demo:{HISTORY_SOURCE}",
        rejected_path=settings.data_dir / "imports" / f"{HISTORY_SOURCE}.rejected.jsonl",
    )


@dataclass(slots=True)
class _Trained:
    """A trained version and whether the demo promoted it by hand after the gate kept it."""

    run: TrainingRun
    manual: bool


@dataclass(slots=True)
class _Learned:
    """What the demo's predictions part did: two trained versions, a churn backtest with its
    report, and the rescoring pass."""

    churn: _Trained
    clv: _Trained
    trained_as_of: datetime
    evaluation: Evaluation
    evaluated_as_of: datetime
    report_path: Path
    scored: dict[str, int]


def _train(trainer: ModelTrainer, chosen: Target, as_of: datetime) -> _Trained:
    """Train a version as of ``as_of``. The gate promotes it when it beats the
    baseline and the served version; when it keeps it (a re-run of the demo trains on the same
    history and rarely beats the version it already serves), the demo promotes it by hand so
    that the predictions it shows come from the version it just reported on."""
    run = trainer.train(chosen, as_of=as_of)
    if run.promoted or run.version is None or trainer.registry is None:
        return _Trained(run, manual=False)
    run.version = trainer.registry.promote(run.version.id, reason="manual")
    return _Trained(run, manual=True)


def _learn(services: Runtime) -> _Learned:
    """Train churn and clv, backtest churn a horizon and a day before the newest arrival
    (its outcomes are known by then) and write the HTML report, then score every stored
    profile with the served models. Blocking: the demo runs it in a thread."""
    settings = services.settings
    job = FeatureJob(
        Lake.from_settings(settings),
        services.features,
        db=services.db,
        quality=QualityContext(
            now=services.clock.now(), max_zscore=settings.quality_volume_max_zscore
        ),
        clock=services.clock,
    )
    trainer = ModelTrainer(job, services.models, clock=services.clock)
    churn_target = target("churn", CHURN_HORIZON_DAYS)
    # the default cut-off (the lake's newest arrival), read once so both models share it
    trained_as_of = trainer.default_as_of()
    churn = _train(trainer, churn_target, trained_as_of)
    clv = _train(trainer, target("clv", CLV_HORIZON_DAYS), trained_as_of)
    # the backtest's outcome window ends at training's cut-off, so every outcome is known
    as_of = trained_as_of - timedelta(days=CHURN_HORIZON_DAYS)
    evaluation = trainer.evaluate(churn_target, as_of=as_of)
    path = settings.data_dir / "reports" / f"churn-{as_of:%Y%m%dT%H%M%SZ}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(evaluation_report(evaluation.result, evaluation.curves), encoding="utf-8")
    services.prediction_rescore.run()
    return _Learned(churn, clv, trained_as_of, evaluation, as_of, path, _scored_profiles(services))


def _metric(metrics: dict[str, Any] | None, key: str, digits: int) -> str:
    """A metric for the demo's lines, or ``-`` when it could not be computed."""
    value = (metrics or {}).get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.{digits}f}"
    return "-"


# the validation metric each target's gate compares, as the demo names it
_GATE_METRICS = {"roc_auc": ("ROC-AUC", 3), "revenue_mae": ("revenue MAE", 2)}


def _describe_training(trained: _Trained) -> str:
    """One line on a trained version: its validation metric beside the baseline's, and what
    the gate decided (with its reasons when it kept the version)."""
    run = trained.run
    report = run.report
    gate = report["gate"]
    label, digits = _GATE_METRICS.get(gate["metric"], (gate["metric"], 3))
    number = f"v{run.version.number}" if run.version is not None else "(not registered)"
    name = str(report["target"]).split(":", 1)[0]
    model = _metric(report["model"], gate["metric"], digits)
    baseline = _metric(report.get("baseline"), gate["metric"], digits)
    method = str(report["validation"]["method"]).replace("_", " ")
    decision = "promoted by the gate"
    if trained.manual:
        decision = (
            f"kept by the gate ({'; '.join(gate['reasons'])}), so promoted by hand for the "
            "demo (reason manual)"
        )
    return (
        f"  {name} {number} ({report['describe']}): validation {label} {model}, baseline "
        f"{baseline} (validated on the {method}); {decision}"
    )


def _pick_customers(services: Runtime, history: ShopHistory) -> list[tuple[str, str]]:
    """Two history customers to show, by what is stored: among the buyers seen in the last
    churn horizon, the one the model most expects to lose; and among the less likely half to
    churn, the one expected to spend the most. Returns (userId, what they are, beside what
    the generator planted)."""
    truth = history.customers
    end = history.start + timedelta(days=HISTORY_DAYS)
    recent_ms = (services.clock.now() - timedelta(days=CHURN_HORIZON_DAYS)).timestamp() * 1000
    with services.db.connect() as conn:
        rows = conn.execute(
            sa.select(identities.c.identity, profiles.c.profile_id, profiles.c.last_seen_ms)
            .select_from(
                identities.join(profiles, identities.c.profile_id == profiles.c.profile_id)
            )
            .where(identities.c.identity.in_(list(truth)))
        ).all()
        found = read_predictions(conn, sorted({str(row.profile_id) for row in rows}))
    # (userId, churn probability, expected revenue, seen within the horizon)
    scored: list[tuple[str, float, float, bool]] = []
    for user_id, profile_id, last_seen_ms in rows:
        values = found.get(str(profile_id), {})
        churn, clv = values.get("churn") or {}, values.get("clv") or {}
        probability, revenue = churn.get("probability"), clv.get("expectedRevenue")
        if truth[user_id].is_visitor or churn.get("coldStart") or clv.get("coldStart"):
            continue
        if isinstance(probability, float | int) and isinstance(revenue, float | int):
            recent = last_seen_ms is not None and last_seen_ms >= recent_ms
            scored.append((str(user_id), float(probability), float(revenue), recent))
    active = [s for s in scored if s[3]]
    if not active:
        return []

    def planted(user_id: str) -> str:
        customer = truth[user_id]
        habit = (
            f"{customer.purchase_rate_per_day * 30:.1f} orders a month "
            f"of about EUR {customer.mean_order_value:.0f}"
        )
        if customer.dropout_at is None:
            return f"planted: {habit}, still active"
        days = (end - customer.dropout_at).total_seconds() / 86_400
        return f"planted: {habit}, stopped coming {days:.0f} days before the history ends"

    # calibration gives probabilities in steps: a tie goes to the customer worth more
    leaving = max(active, key=lambda s: (s[1], s[2]))
    median = sorted(s[1] for s in scored)[len(scored) // 2]
    loyal = max((s for s in scored if s[1] <= median and s[0] != leaving[0]), key=lambda s: s[2])
    return [
        (leaving[0], f"active lately, likely to churn ({planted(leaving[0])})"),
        (loyal[0], f"loyal, high value ({planted(loyal[0])})"),
    ]


def _scored_profiles(services: Runtime) -> dict[str, int]:
    """How many stored profiles have a prediction, per target."""
    c = profile_predictions.c
    with services.db.connect() as conn:
        rows = conn.execute(sa.select(c.target, sa.func.count()).group_by(c.target)).all()
    return {str(name): int(count) for name, count in rows}


async def _show_profile_predictions(
    base_url: str, picks: list[tuple[str, str]], echo: Callable[[str], None]
) -> None:
    """Print the ``predictions`` part of ``GET /v1/profiles/{id}`` of each pick, compactly."""
    headers = {"Authorization": f"Bearer {DEMO_ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10) as client:
        for user_id, label in picks:
            response = await client.get(f"/v1/profiles/{user_id}")
            response.raise_for_status()
            predictions: dict[str, Any] = response.json().get("predictions") or {}
            echo(f"  {user_id}: {label}")
            churn = predictions.get("churn") or {}
            if "probability" in churn:
                echo(
                    f"    churn probability {churn['probability']:.2f} in the next "
                    f"{churn['horizonDays']:g} days (churn v{churn['version']})"
                )
                for reason in churn.get("reasons") or []:
                    echo(f"      - {reason['text']}")
            clv = predictions.get("clv") or {}
            if "expectedRevenue" in clv:
                echo(
                    f"    expected revenue EUR {clv['expectedRevenue']:.2f} from "
                    f"{clv['expectedOrders']:.2f} orders in the next {clv['horizonDays']:g} days "
                    f"(clv v{clv['version']})"
                )
                for reason in clv.get("reasons") or []:
                    echo(f"      - {reason['text']}")


async def _show_predictions(services: Runtime, base_url: str, echo: Callable[[str], None]) -> None:
    """Import the 150-day shop's history, train churn and clv on it, backtest churn with an
    HTML report, score every profile, and show two customers' predictions with reasons."""
    settings = services.settings
    source = _history_source(services)
    # the history ends when its source was made, so a re-run of the demo generates the very
    # same events, which the import's dedupe drops
    history = shop_history(source.created_at)
    summary = await _import_history(services, source, history)
    echo(
        f"Churn and lifetime value are learned from history: a {HISTORY_DAYS}-day shop of "
        f"{HISTORY_CUSTOMERS} customers, imported as `personify import` does (each event keeps "
        "its own arrival time, so a past cut-off sees what was known then):"
    )
    echo(
        f"  {summary.rows} rows: {summary.accepted} accepted, {summary.duplicates} duplicates, "
        f"{summary.rejected} rejected (source {HISTORY_SOURCE})"
    )
    applied = await _wait_for_group(services, settings.worker_group, timeout_s=180.0)
    if not (applied and await _wait_for_lake(services, timeout_s=180.0)):
        echo("  (the worker or the lake writer has not applied the history yet; skipped)")
        echo("")
        return
    learned = await asyncio.to_thread(_learn, services)
    echo(
        f"  trained as of {format_timestamp(learned.trained_as_of)} (the newest arrival), "
        f"{CHURN_HORIZON_DAYS:g} days ahead for churn and {CLV_HORIZON_DAYS:g} for clv (the demo "
        f"uses {CLV_HORIZON_DAYS:g} days for clv, not its default 90, so that its short history "
        "can validate it):"
    )
    echo(_describe_training(learned.churn))
    echo(_describe_training(learned.clv))
    result = learned.evaluation.result
    echo(
        f"  backtest of churn as of {format_timestamp(learned.evaluated_as_of)} over "
        f"{result['users']} users: ROC-AUC {_metric(result['model'], 'roc_auc', 3)} for the "
        f"model, {_metric(result.get('baseline'), 'roc_auc', 3)} for the baseline (BG/NBD)"
    )
    echo(f"  report: {learned.report_path}")
    scored = ", ".join(f"{count} by {name}" for name, count in sorted(learned.scored.items()))
    echo(
        f"Every stored profile is scored by the served models ({scored}); the worker keeps "
        "the scores current as events apply. The profile API shows them with their reasons:"
    )
    picks = await asyncio.to_thread(_pick_customers, services, history)
    await _show_profile_predictions(base_url, picks, echo)
    auth = f"curl -H 'Authorization: Bearer {DEMO_ADMIN_KEY}'"
    if picks:
        echo(f"  {auth} {base_url}/v1/profiles/{picks[0][0]}")
    evaluated = format_timestamp(learned.evaluated_as_of)
    echo("  personify predict models")
    echo(
        f"  personify predict evaluate churn --as-of {evaluated} "
        f"--horizon-days {CHURN_HORIZON_DAYS:g}"
    )
    echo(
        f"  personify predict score churn --horizon-days {CHURN_HORIZON_DAYS:g} "
        "--output churn.parquet"
    )
    echo("")


def _lake_query(settings: Settings, services: Runtime, query: str) -> str:
    with Warehouse(Lake.from_settings(settings), profiles=StateProfiles(services.db)) as warehouse:
        return warehouse.render(query)


async def _wait_for_profile(
    base_url: str, identity: str, *, events: int, timeout_s: float = 15.0
) -> dict[str, Any] | None:
    """Poll the profile API until the stream worker has applied ``events`` events to it."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    headers = {"Authorization": f"Bearer {DEMO_ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10) as client:
        while asyncio.get_running_loop().time() < deadline:
            response = await client.get(f"/v1/profiles/{identity}")
            if response.status_code == 200:
                profile: dict[str, Any] = response.json()
                if profile["features"]["events_total"] >= events:
                    return profile
            await asyncio.sleep(0.05)
    return None


def _summary(profile: dict[str, Any]) -> dict[str, Any]:
    features = profile["features"]
    return {
        "profileId": profile["profileId"],
        "ids": profile["ids"],
        "traits": profile["traits"],
        "features": {
            name: features[name]
            for name in (
                "events_total",
                "sessions",
                "orders",
                "revenue",
                "average_order_value",
                "affinities",
                "event_counts",
            )
            if name in features
        },
        "consent": profile["consent"],
    }


def run_demo(
    settings: Settings,
    *,
    port: int,
    serve: bool,
    echo: Callable[[str], None],
    echo_json: Callable[[Any], None],
) -> None:
    """Seed, start the server, replay the scripted events through HTTP, keep serving."""
    services = Runtime.build(settings)
    seed(services)
    app = create_app(settings, services=services)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    base_url = f"http://127.0.0.1:{port}"

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                await task
                return
            await asyncio.sleep(0.05)
        await _send_scripted_events(base_url, echo)
        await _send_shop(base_url, echo)
        profile = None
        if settings.run_worker:
            scripted = len(_scripted_events(datetime.now(UTC)))
            profile = await _wait_for_profile(base_url, "user-ada", events=scripted)
        echo("")
        if profile is not None:
            echo("The stream worker merged the anonymous visit into user-ada's profile:")
            echo(
                f"  curl -H 'Authorization: Bearer {DEMO_ADMIN_KEY}' {base_url}/v1/profiles/user-ada"
            )
            echo_json(_summary(profile))
            echo("")
        elif settings.run_worker:
            echo(
                "(the stream worker has not applied the scripted events yet; see /v1/worker/status)"
            )
        if profile is not None and await _wait_for_group(services, settings.worker_group):
            echo("The worker keeps rule segments current as events apply:")
            for key, name, _ in DEMO_SEGMENTS:
                size = (await asyncio.to_thread(services.segments.stats, key, days=1))["size"]
                echo(f"  {key:<14} {size:>4} members  ({name})")
            echo(
                f"  curl -H 'Authorization: Bearer {DEMO_ADMIN_KEY}' "
                f"{base_url}/v1/segments/shoe-browsers/members"
            )
            echo("")
            await _show_decide(base_url, echo)
            await _expose_visitors(base_url, echo)
        if settings.run_worker and settings.run_lake_sink and await _wait_for_lake(services):
            echo("Every event is also in the Delta Lake; the warehouse queries it with SQL:")
            echo(f'  personify sql "{DEMO_QUERY}"')
            echo(await asyncio.to_thread(_lake_query, settings, services, DEMO_QUERY))
            echo("")
            await _show_rfm(services, base_url, echo)
            await _show_clustering(services, base_url, echo)
            await _show_predictions(services, base_url, echo)
            if profile is not None:
                await _show_experiment(
                    services, base_url, echo, settings.data_dir / "reports" / "hero-copy.html"
                )
                await _show_erasure(services, base_url, echo)
        echo(f"Personify demo is running on {base_url} (data in {settings.data_dir}/)")
        echo(f"  demo write key : {DEMO_WRITE_KEY}")
        echo(f"  demo admin key : {DEMO_ADMIN_KEY}")
        echo(f"  demo shop page : {base_url}{DEMO_PATH}")
        echo(f"  admin console  : {base_url}/console  (sign in with the demo admin key)")
        echo("")
        echo("Try:")
        echo(f"  curl -u {DEMO_WRITE_KEY}: -H 'Content-Type: application/json' \\")
        echo(f'       -d \'{{"userId":"user-ada","event":"Video Played"}}\' {base_url}/v1/track')
        echo(f"  curl -H 'Authorization: Bearer {DEMO_ADMIN_KEY}' {base_url}/v1/failed-events")
        echo(
            f"  curl -H 'Authorization: Bearer {DEMO_ADMIN_KEY}' {base_url}/v1/profiles/anon-7f3a/history"
        )
        echo(
            f"  curl -H 'Authorization: Bearer {DEMO_ADMIN_KEY}' {base_url}/v1/profiles/user-ada/events"
        )
        echo(f"  curl -H 'Authorization: Bearer {DEMO_ADMIN_KEY}' {base_url}/v1/worker/status")
        echo("  personify profiles show user-ada")
        echo("  personify events tail")
        echo("")
        if not serve:
            server.should_exit = True
        echo("Press Ctrl+C to stop." if serve else "Seeded; exiting (--no-serve).")
        await task

    asyncio.run(main())

"""``personify demo``: an embedded set-up with a demo source, scripted events, and the server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import uvicorn

from personify.api.app import create_app
from personify.cli.shop import generate_shop
from personify.errors import Conflict
from personify.lake.sink import LAKE_GROUP
from personify.lake.table import Lake
from personify.lake.warehouse import StateProfiles, Warehouse
from personify.runtime import Runtime
from personify.segments.clusterings import RunOutcome
from personify.segments.rfm import RFM_CELLS, rfm_key
from personify.settings import Settings

# Fixed, well-known demo credentials so the README's curl calls work as printed.
# They exist only in the demo's own data folder; never use them in production.
DEMO_WRITE_KEY = "demo-write-key"
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
]


def seed(services: Runtime) -> None:
    """Create the demo source, admin key and segments if they are not there yet."""
    with contextlib.suppress(Conflict):
        services.sources.create("demo", write_key=DEMO_WRITE_KEY)
    if services.api_keys.resolve(DEMO_ADMIN_KEY) is None:
        services.api_keys.create("demo-admin", "admin", secret=DEMO_ADMIN_KEY)
    for key, name, condition in DEMO_SEGMENTS:
        with contextlib.suppress(Conflict):
            services.segments.create(key, name=name, condition=condition)


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
        if settings.run_worker and settings.run_lake_sink and await _wait_for_lake(services):
            echo("Every event is also in the Delta Lake; the warehouse queries it with SQL:")
            echo(f'  personify sql "{DEMO_QUERY}"')
            echo(await asyncio.to_thread(_lake_query, settings, services, DEMO_QUERY))
            echo("")
            await _show_rfm(services, base_url, echo)
            await _show_clustering(services, base_url, echo)
        echo(f"Personify demo is running on {base_url} (data in {settings.data_dir}/)")
        echo(f"  demo write key : {DEMO_WRITE_KEY}")
        echo(f"  demo admin key : {DEMO_ADMIN_KEY}")
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

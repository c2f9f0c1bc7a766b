"""``personify.decide()`` in real Chromium against a real ``personify serve``, and the demo shop
page at ``GET /demo``.

A shop on another origin embeds the tracker; its placements are filled from ``POST
/v1/decide``. The banner turns to the targeted one once the visitor's own tracked views put
them in a segment (applied by the server's worker), recommendations follow what each visitor
viewed (co-visitation learned from other visitors' events), and a decision that fails or times
out leaves the page's default markup in place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from personify.api.demo_page import DEMO_PATH, DEMO_WRITE_KEY
from personify.cli.demo import DEMO_ADMIN_KEY, DEMO_EXPERIMENT, seed
from personify.cli.shop import catalog
from personify.experiments.assignment import Allocation, assign_variant
from personify.runtime import Runtime
from tests.conftest import make_settings
from tests.e2e.conftest import ServerProcess, make_server, server_env
from tests.e2e.test_browser_tracker import LOADED, running_site

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Request, Route

pytestmark = pytest.mark.e2e

DECIDE_TIMEOUT_S = 15.0
# the catalog's products appear in decisions once the worker learned them: read them soon
SERVER_ENV = {"PERSONIFY_DECIDE_CATALOG_TTL_S": "0.3"}
BOOT_FANS = {
    "event": "Product Viewed",
    "where": [{"property": "category", "op": "eq", "value": "boots"}],
    "within": "7d",
    "count": {"op": "gte", "value": 2},
}
CATALOG: dict[str, Any] = {
    "items": [
        {
            "id": "banner-welcome",
            "type": "banner",
            "fields": {"title": "Welcome", "url": "/welcome"},
            "placements": [],
        },
        {
            "id": "banner-boots",
            "type": "banner",
            "fields": {"title": "Boots for you", "url": "/boots"},
            "placements": ["banner"],
            "priority": 10,
            "targeting": {"segments": ["boot-fans"]},
        },
        {
            "id": "similar-hint",
            "type": "banner",
            "fields": {"name": "Nothing to recommend yet"},
            "placements": [],
        },
        {
            "id": "promo-unsafe",
            "type": "banner",
            "fields": {"title": "Click me", "url": "java\tscript:alert(document.domain)"},
            "placements": [],
        },
    ],
    "placements": [
        {"id": "banner", "defaultItem": "banner-welcome", "strategy": "priority"},
        {
            "id": "similar",
            "defaultItem": "similar-hint",
            "strategy": "recommendations",
            "limit": 4,
        },
        # the unsafe item is the default, so that even a visitor nobody knows is shown it
        {"id": "promo", "defaultItem": "promo-unsafe", "strategy": "priority"},
    ],
}
# what other visitors did: tent-a was viewed with lamp-b, stove-c with pot-d, and cap-e is
# the most popular product of all
OTHERS = [
    *[(f"other-{n}", ["tent-a", "lamp-b"]) for n in range(3)],
    *[(f"other-{n}", ["stove-c", "pot-d"]) for n in range(3, 6)],
    *[(f"other-{n}", ["cap-e"]) for n in range(6, 14)],
]
SHOP_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Decide Shop</title>
<script src="{api}/personify.js" data-write-key="{key}" data-flush-at="1"></script>
</head><body>
<section id="banner" data-personify-placement="banner">
  <template>
    <a class="banner" data-personify-attr="href:url"><h2 data-personify-field="title"></h2></a>
  </template>
  <h2 id="page-default">Hello from the page</h2>
</section>
<ul id="similar" data-personify-placement="similar" data-personify-limit="2">
  <li data-personify-item><img alt="" data-personify-attr="src:image_url">
    <a href="#" data-personify-attr="href:url" data-personify-field="name">Loading</a></li>
</ul>
<div id="promo" data-personify-placement="promo">
  <a data-personify-item href="/safe" data-personify-attr="href:url"
     ><span data-personify-field="title">Promo</span></a>
</div>
</body></html>"""
# the fields of the shop's products, as its events carry them
PRODUCT_FIELDS = ("name", "category", "price", "url", "image_url")


def product(product_id: str, category: str = "outdoor") -> dict[str, Any]:
    """The e-commerce properties of a product of the test shop."""
    return {
        "product_id": product_id,
        "name": product_id.replace("-", " ").title(),
        "category": category,
        "price": 25.0,
        "url": f"https://shop.example/p/{product_id}",
        "image_url": f"https://shop.example/i/{product_id}.png",
    }


def admin(server: ServerProcess, path: str, body: Any, **params: str) -> dict[str, Any]:
    """POST with the admin key; the answer's JSON (fails on an error status)."""
    response = httpx.post(
        server.base_url + path,
        json=body,
        params=params,
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=10,
    )
    assert response.status_code in (200, 201), response.text
    found: dict[str, Any] = response.json()
    return found


def send_views(
    server: ServerProcess,
    write_key: str,
    views: list[tuple[str, list[str]]],
    properties: Callable[[str], dict[str, Any]] = product,
) -> None:
    """Each visitor's Product Viewed events, a minute apart, through POST /v1/batch."""
    start = datetime.now(UTC) - timedelta(minutes=30)
    batch = [
        {
            "type": "track",
            "anonymousId": visitor,
            "event": "Product Viewed",
            "properties": properties(product_id),
            "timestamp": (start + timedelta(minutes=n)).isoformat(),
        }
        for visitor, products in views
        for n, product_id in enumerate(products)
    ]
    response = httpx.post(
        server.base_url + "/v1/batch", json={"batch": batch}, auth=(write_key, ""), timeout=10
    )
    assert response.status_code == 200, response.text


def wait_until(check: Any, what: str, timeout_s: float = DECIDE_TIMEOUT_S) -> Any:
    """Poll ``check()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def events_applied(server: ServerProcess, identity: str) -> int:
    """How many of ``identity``'s events the worker applied to their profile."""
    response = httpx.get(
        f"{server.base_url}/v1/profiles/{identity}",
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=10,
    )
    return int(response.json()["features"]["events_total"]) if response.status_code == 200 else 0


def item_exists(server: ServerProcess, item_id: str) -> bool:
    """Whether the catalog has ``item_id`` (the worker learned the product)."""
    response = httpx.get(
        f"{server.base_url}/v1/content/items/{item_id}",
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=10,
    )
    return response.status_code == 200


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with the test shop's catalog, segment and other visitors' views applied."""
    server = make_server(tmp_path_factory.mktemp("decide") / "data", **SERVER_ENV)
    server.start()
    try:
        admin(server, "/v1/segments", {"key": "boot-fans", "condition": BOOT_FANS})
        # an item names only placements that exist, and a placement's default must exist
        unplaced = [item for item in CATALOG["items"] if not item["placements"]]
        placed = [item for item in CATALOG["items"] if item["placements"]]
        first = {"items": unplaced, "placements": CATALOG["placements"]}
        for body in (first, {"items": placed}):
            report = admin(server, "/v1/content/import", body, publish="true")
            assert report["items"]["refused"] == report["placements"]["refused"] == 0, report
        send_views(server, server.write_key, OTHERS)
        # the products are learned by the worker from those events
        wait_until(lambda: item_exists(server, "cap-e"), "the worker learned the products")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shop(api: ServerProcess) -> Iterator[str]:
    """The URL of the shop page, on its own origin."""
    with running_site(api) as site:
        site.pages["/shop.html"] = SHOP_PAGE.format(api=api.base_url, key=api.write_key)
        yield site.origin + "/shop.html"


def open_page(context: BrowserContext, url: str) -> Page:
    """A page on ``url`` once the tracker has loaded."""
    page = context.new_page()
    page.goto(url)
    page.wait_for_function(LOADED)
    return page


def decide(page: Page, **options: Any) -> dict[str, Any]:
    """``personify.decide(options)`` in the page; its resolved value."""
    answer: dict[str, Any] = page.evaluate("options => personify.decide(options)", options)
    return answer


def shown(answer: dict[str, Any], placement: str) -> list[str]:
    """The ids of the items a placement shows."""
    return [item["id"] for item in answer["placements"][placement]["items"]]


def decide_until(page: Page, placement: str, first: str) -> dict[str, Any]:
    """Decide again until ``placement`` shows ``first`` first (the worker applies events
    about a second after they arrive)."""
    deadline = time.monotonic() + DECIDE_TIMEOUT_S
    seen: list[str] = []
    while time.monotonic() < deadline:
        answer = decide(page)
        seen = shown(answer, placement)
        if seen[:1] == [first]:
            return answer
        page.wait_for_timeout(150)
    raise AssertionError(f"{placement} still shows {seen}, not {first} first")


def view(page: Page, product_id: str, category: str = "outdoor") -> None:
    """The visitor views a product: the tracker sends Product Viewed at once."""
    page.evaluate(
        "p => { personify.track('Product Viewed', p); return personify.flush(); }",
        product(product_id, category),
    )


def attribute(page: Page, selector: str, name: str) -> str | None:
    """An attribute of the element ``selector`` finds."""
    return page.get_attribute(selector, name)


def test_the_banner_turns_to_the_targeted_one_once_the_visitor_joins_the_segment(
    context: BrowserContext, api: ServerProcess, shop: str
) -> None:
    """Default banner for a new visitor; one boot view: still the default; two: boot-fans, and
    the targeted banner replaces it, with the decision and item ids on the element."""
    requests: list[Request] = []
    context.on("request", lambda r: requests.append(r) if r.url.endswith("/v1/decide") else None)
    page = open_page(context, shop)
    page.evaluate(
        "() => { window.decided = [];"
        " document.addEventListener('personify:decided', e => decided.push(e.detail)); }"
    )
    anonymous_id = page.evaluate("() => personify.anonymousId()")

    first = decide(page)
    assert shown(first, "banner") == ["banner-welcome"]
    assert first["placements"]["banner"]["fallback"] is True  # nobody knows this visitor yet
    assert page.locator("#page-default").count() == 0
    assert page.text_content("#banner h2") == "Welcome"
    assert attribute(page, "#banner a", "href") == "/welcome"
    assert attribute(page, "#banner a", "data-personify-item") == "banner-welcome"
    assert attribute(page, "#banner", "data-personify-item-ids") == "banner-welcome"
    assert attribute(page, "#banner", "data-personify-decision") == first["decisionId"]
    assert attribute(page, "#banner", "data-personify-fallback") == "true"
    events = page.evaluate("() => decided")
    assert {e["placement"] for e in events} == {"banner", "similar", "promo"}
    (banner_event,) = [e for e in events if e["placement"] == "banner"]
    assert banner_event["decisionId"] == first["decisionId"] and banner_event["fallback"] is True

    # what the tracker sent: text/plain (no preflight), the write key, who and where
    (sent,) = requests
    assert sent.method == "POST" and sent.headers["content-type"].startswith("text/plain")
    body = sent.post_data_json
    assert body is not None
    assert body["writeKey"] == api.write_key and body["anonymousId"] == anonymous_id
    assert body["placements"] == [{"id": "banner"}, {"id": "similar", "limit": 2}, {"id": "promo"}]
    assert body["context"]["page"]["url"] == shop
    assert body["context"]["locale"] == page.evaluate("() => navigator.language")

    view(page, "boot-one", "boots")
    wait_until(lambda: events_applied(api, anonymous_id), "the worker applied the first view")
    assert shown(decide(page), "banner") == ["banner-welcome"]  # one view: not a fan yet

    view(page, "boot-two", "boots")
    targeted = decide_until(page, "banner", "banner-boots")
    assert targeted["placements"]["banner"]["fallback"] is False
    assert page.text_content("#banner h2") == "Boots for you"
    assert attribute(page, "#banner a", "href") == "/boots"
    assert page.locator("#banner > [data-personify-item]").count() == 1
    assert page.locator("#banner > template").count() == 1
    assert attribute(page, "#banner", "data-personify-decision") == targeted["decisionId"]
    assert attribute(page, "#banner", "data-personify-fallback") == "false"


def test_recommendations_follow_what_each_visitor_viewed(
    browser: Browser, context: BrowserContext, shop: str
) -> None:
    """Others viewed tent-a with lamp-b and stove-c with pot-d: whoever views tent-a is shown
    lamp-b first, whoever views stove-c pot-d, each rendered from the page's item markup."""
    page = open_page(context, shop)
    assert shown(decide(page), "similar") == ["similar-hint"]
    assert page.text_content("#similar li a") == "Nothing to recommend yet"

    view(page, "tent-a")
    answer = decide_until(page, "similar", "lamp-b")
    assert answer["placements"]["similar"]["strategy"] == "recommendations"
    assert len(shown(answer, "similar")) == 2  # data-personify-limit
    cards = page.locator("#similar > li")
    assert cards.count() == 2
    assert attribute(page, "#similar > li >> nth=0", "data-personify-item") == "lamp-b"
    assert attribute(page, "#similar > li >> nth=0", "data-personify-rank") == "0"
    assert page.text_content("#similar > li >> nth=0 >> a") == "Lamp B"
    assert attribute(page, "#similar > li >> nth=0 >> a", "href") == product("lamp-b")["url"]
    assert attribute(page, "#similar > li >> nth=0 >> img", "src") == product("lamp-b")["image_url"]
    assert attribute(page, "#similar", "data-personify-item-ids") == ",".join(
        shown(answer, "similar")
    )

    other = browser.new_context()
    try:
        stove = open_page(other, shop)
        assert stove.evaluate("() => personify.anonymousId()") != page.evaluate(
            "() => personify.anonymousId()"
        )
        view(stove, "stove-c")
        decide_until(stove, "similar", "pot-d")
        assert stove.text_content("#similar > li >> nth=0 >> a") == "Pot D"
    finally:
        other.close()
    # the first visitor's recommendations are still their own
    assert shown(decide(page), "similar")[0] == "lamp-b"


def test_a_failed_or_slow_decision_keeps_the_default_markup(
    context: BrowserContext, shop: str
) -> None:
    """A refused connection, then an answer slower than timeoutMs: the promise resolves with
    the error, and the page keeps the markup it had."""
    held: list[Route] = []
    page = open_page(context, shop)
    context.route("**/v1/decide", lambda route: route.abort("connectionrefused"))
    failed = decide(page)
    assert failed["decisionId"] is None and failed["placements"] == {} and failed["error"]
    assert page.text_content("#page-default") == "Hello from the page"
    assert attribute(page, "#banner", "data-personify-decision") is None

    context.unroute("**/v1/decide")
    # never answered while the tracker waits
    context.route("**/v1/decide", lambda route: held.append(route))
    started = time.monotonic()
    slow = decide(page, timeoutMs=300)
    assert slow == {"decisionId": None, "placements": {}, "error": "timeout"}
    assert time.monotonic() - started < 3
    assert page.text_content("#page-default") == "Hello from the page"
    assert page.text_content("#similar li a") == "Loading"
    assert len(held) == 1
    context.unroute("**/v1/decide")

    # and the next decision fills the page as usual
    assert shown(decide(page), "banner") == ["banner-welcome"]
    assert page.locator("#page-default").count() == 0


def test_catalog_urls_that_would_run_script_are_not_set(context: BrowserContext, shop: str) -> None:
    """An item's ``javascript:`` URL (even with a tab inside) is refused with a warning; its
    text is set as text."""
    warnings: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "warning":
            warnings.append(message.text)

    context.on("console", on_console)
    page = open_page(context, shop)
    decide(page, placements=["promo"])
    assert attribute(page, "#promo", "data-personify-item-ids") == "promo-unsafe"
    assert page.text_content("#promo a") == "Click me"
    assert attribute(page, "#promo a", "href") == "/safe"
    assert any("unsafe URL" in warning for warning in warnings), warnings
    # placements were given: the other placements were neither asked for nor filled
    assert page.locator("#page-default").count() == 1


# -- the demo shop page ------------------------------------------------------------------------


def test_no_demo_page_where_the_demo_is_not_set_up(api: ServerProcess) -> None:
    """A server without the demo's source answers GET /demo with a 404."""
    missing = httpx.get(api.base_url + DEMO_PATH, timeout=10)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "demo_not_set_up"


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server over a data folder that ``personify demo``'s own seed set up."""
    data_dir = tmp_path / "demo"
    data_dir.mkdir()
    env = server_env(data_dir, **SERVER_ENV)
    services = Runtime.build(make_settings(data_dir, pii_hash_key=env["PERSONIFY_PII_HASH_KEY"]))
    try:
        seed(services)
    finally:
        services.db.dispose()
    server = ServerProcess(
        data_dir=data_dir, env=env, write_key=DEMO_WRITE_KEY, admin_key=DEMO_ADMIN_KEY
    )
    server.start()
    yield server
    server.stop()


def test_the_demo_page_follows_the_demo_visitor(
    context: BrowserContext, demo_server: ServerProcess
) -> None:
    """The demo page lists the shop's products; its recommendations follow the first product
    the visitor views, and its banner turns to shoes after two shoe views."""
    page_url = demo_server.base_url + DEMO_PATH
    served = httpx.get(page_url, timeout=10)
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("text/html")
    assert f'data-write-key="{DEMO_WRITE_KEY}"' in served.text
    assert '"product_id":"sku-sh-1","name":"Trail Runner"' in served.text
    assert "__PERSONIFY" not in served.text
    # another visitor viewed the first shoe, then a shirt: the demo visitor will be shown it
    products = {p["product_id"]: p for p in catalog()}
    send_views(
        demo_server,
        DEMO_WRITE_KEY,
        [("demo-other", ["sku-sh-1", "sku-ap-2"])],
        products.__getitem__,
    )
    wait_until(lambda: events_applied(demo_server, "demo-other") >= 2, "the other's views")

    # the demo runs the experiment hero-copy on this banner: this visitor is one of control
    variants = tuple((v["key"], float(v["weight"])) for v in DEMO_EXPERIMENT["variants"])
    allocation = Allocation(DEMO_EXPERIMENT["key"], variants)
    visitor = next(
        f"browser-visitor-{n}"
        for n in range(1000)
        if (found := assign_variant(allocation, f"browser-visitor-{n}"))
        and found.variant == "control"
    )
    context.add_cookies([{"name": "pfy_aid", "value": visitor, "url": demo_server.base_url}])
    page = context.new_page()
    page.goto(page_url)
    page.wait_for_selector('#hero[data-personify-item-ids="hero-welcome"]')
    assert page.locator("#products .card").count() == len(catalog())
    assert page.text_content("#hero h1") == "Welcome to the Personify demo shop"

    page.click('[data-product-id="sku-sh-1"]')
    page.wait_for_function(
        "() => (document.querySelector('#recs').dataset.personifyItemIds || '')"
        ".startsWith('sku-ap-2')",
        timeout=DECIDE_TIMEOUT_S * 1000,
    )
    assert attribute(page, "#hero", "data-personify-item-ids") == "hero-welcome"
    assert page.text_content('#recs [data-personify-item="sku-ap-2"] .name') == "Rain Shell"

    page.click('[data-product-id="sku-sh-2"]')
    page.wait_for_selector(
        '#hero[data-personify-item-ids="hero-shoes"]', timeout=DECIDE_TIMEOUT_S * 1000
    )
    assert page.text_content("#hero h1") == "Trail season: new shoes are in"
    assert "hero: hero-shoes (strategy priority)" in (page.text_content("#decided") or "")

"""``GET /demo``: the demo shop page of ``personify demo`` (``api/demo/shop.html``).

The page loads ``/personify.js`` from this server with the demo source's write key, lists the
catalog's products, and lets ``personify.decide()`` fill its hero banner and its
recommendations (docs/browser.md). It exists only where the demo is set up: while the demo's
well-known write key resolves to an active source; anywhere else it is a 404, so a production
server never serves a page that carries a write key.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any, Final

import msgspec
from litestar import Response, get
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency

from personify.content.catalog import PUBLISHED, ContentCatalog
from personify.errors import NotFound
from personify.ingest.sources import SourceRepository

__all__ = ["DEMO_PATH", "DEMO_WRITE_KEY", "demo_shop"]

# Fixed, well-known, so the README's curl calls work as printed; ``personify demo`` creates
# the source that owns it in the demo's own data folder. Never use it in production.
DEMO_WRITE_KEY: Final = "demo-write-key"
DEMO_PATH: Final = "/demo"
# the product cards the page shows: a few of each category (a demo shop has a few dozen)
MAX_PRODUCTS: Final = 15
# the products read to choose them from
_MAX_SCANNED: Final = 1_000
_PRODUCT_FIELDS: Final = ("name", "category", "price", "url", "image_url")
_WRITE_KEY_MARK: Final = "__PERSONIFY_WRITE_KEY__"
_PRODUCTS_MARK: Final = "__PERSONIFY_PRODUCTS__"


@functools.cache
def _page() -> str:
    return resources.files("personify.api").joinpath("demo/shop.html").read_text("utf-8")


def _products(content: ContentCatalog) -> list[dict[str, Any]]:
    """Published products with a name, as the page's cards and events use them: the first of
    each category by id, as many of each as ``MAX_PRODUCTS`` allows, grouped by category."""
    by_category: dict[str, list[dict[str, Any]]] = {}
    after: str | None = None
    scanned = 0
    while scanned < _MAX_SCANNED:
        page = content.list_items(type="product", status=PUBLISHED, limit=200, after=after)
        scanned += len(page.items)
        for item in page.items:
            fields = item.document.get("fields") or {}
            if isinstance(fields.get("name"), str):
                card = {"product_id": item.id}
                card.update((name, fields[name]) for name in _PRODUCT_FIELDS if name in fields)
                by_category.setdefault(str(fields.get("category", "")), []).append(card)
        if page.next is None:
            break
        after = page.next
    each = max(1, MAX_PRODUCTS // max(1, len(by_category)))
    return [card for key in sorted(by_category) for card in by_category[key][:each]]


def _script_json(value: Any) -> str:
    """JSON to put inside a <script> element: no "</script>" or "<!--" can close it early."""
    return msgspec.json.encode(value).decode().replace("<", "\\u003c")


@get(DEMO_PATH, include_in_schema=False)
async def demo_shop(
    sources: NamedDependency[SourceRepository], content: NamedDependency[ContentCatalog]
) -> Response[str]:
    """The demo shop page, where the demo is set up; else 404."""
    if await sync_to_thread(sources.resolve, DEMO_WRITE_KEY) is None:
        raise NotFound(
            "no demo here: `personify demo` sets one up in its own data folder",
            code="demo_not_set_up",
        )
    products = await sync_to_thread(_products, content)
    html = (
        _page()
        # the key is letters and dashes; the page's attribute needs no escaping of it
        .replace(_WRITE_KEY_MARK, DEMO_WRITE_KEY)
        .replace(_PRODUCTS_MARK, _script_json(products))
    )
    return Response(
        html, media_type="text/html; charset=utf-8", headers={"cache-control": "no-store"}
    )

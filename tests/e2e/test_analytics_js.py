"""Segment's analytics.js (``@segment/analytics-next``, the npm package, unmodified) in headless
Chromium against a real ``personify serve``.

The shop page is served from its own origin and loads the library's standalone bundle, which
fetches ``/v1/projects/{writeKey}/settings`` from Personify (``analytics._cdn``) and sends
where that document says. A small proxy sits between the browser and the server
(``PERSONIFY_PUBLIC_URL`` points at it): it records what passes and can fail the first
delivery with a 503, so the library's retry, with its ``X-Retry-Count`` header, must get
through the CORS preflight and land.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import service_missing
from tests.e2e.conftest import ServerProcess, cli, free_port, make_server
from tests.e2e.proxy import RecordingProxy

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

pytestmark = pytest.mark.e2e

ASSETS = Path(__file__).parent / "analytics_js"
PACKAGE = "@segment/analytics-next"
ARRIVAL_TIMEOUT_S = 30.0
NPM_TIMEOUT_S = 300


def pinned_version() -> str:
    """The analytics-next version the lock file pins."""
    manifest = json.loads((ASSETS / "package.json").read_text())
    version: str = manifest["dependencies"][PACKAGE]
    return version


@pytest.fixture(scope="session")
def analytics_js(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of analytics.js's browser bundles, installed with ``npm ci`` from the pinned
    lock file into the pytest cache (reused while the pinned version stays the same)."""
    npm = shutil.which("npm")
    if npm is None:
        service_missing("the analytics.js tests need npm (Node.js) to install the library")
        raise AssertionError("unreachable")
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("analytics-js") if cache is not None else tmp_path_factory.mktemp("ajs")
    installed = folder / "node_modules" / PACKAGE / "package.json"
    if (
        not installed.exists()
        or json.loads(installed.read_text()).get("version") != pinned_version()
    ):
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(ASSETS / name, folder / name)
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            service_missing(f"npm ci of {PACKAGE} failed: {done.stderr[-2000:]}")
    bundles = folder / "node_modules" / PACKAGE / "dist" / "umd"
    assert (bundles / "standalone.js").exists(), f"no standalone bundle in {bundles}"
    return bundles


@dataclass
class Collector:
    """``personify serve`` behind the recording proxy that browsers are told to use."""

    server: ServerProcess
    proxy: RecordingProxy

    @property
    def url(self) -> str:
        """The collector's public URL: the proxy's."""
        return self.proxy.base_url

    def stored(self, tag: str) -> list[dict[str, Any]]:
        """The events in the server's log whose properties carry ``tag``."""
        output = cli(self.server.env, "events", "tail", "-n", "500")
        events = [json.loads(line) for line in output.splitlines() if line.strip()]
        return [e for e in events if (e.get("properties") or {}).get("tag") == tag]

    def wait_for(self, tag: str) -> list[dict[str, Any]]:
        """The events tagged ``tag``, once at least one has arrived."""
        deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
        while time.monotonic() < deadline:
            found = self.stored(tag)
            if found:
                return found
            time.sleep(0.3)
        raise AssertionError(
            f"no event tagged {tag} arrived; through the proxy: {self.proxy.exchanges}"
        )


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    """One server for the module, its public URL the proxy's; tests tag their events."""
    proxy_port = free_port()
    server = make_server(
        tmp_path_factory.mktemp("ajs") / "data",
        PERSONIFY_PUBLIC_URL=f"http://127.0.0.1:{proxy_port}",
    )
    server.start()
    proxy = RecordingProxy(server.base_url, proxy_port)
    proxy.start()
    yield Collector(server, proxy)
    proxy.stop()
    server.stop()


@dataclass
class Site:
    """A shop on its own origin that loads analytics.js from its own server (as a site that
    hosts the library would) and takes its settings from Personify."""

    bundles: Path
    pages: dict[str, str] = field(default_factory=dict)
    httpd: ThreadingHTTPServer | None = None

    @property
    def origin(self) -> str:
        """Where the shop is served."""
        assert self.httpd is not None
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add_page(self, collector_url: str, write_key: str, load_options: str, tag: str) -> str:
        """A page that tracks one event tagged ``tag``; ``load_options`` is a JavaScript
        expression for analytics.js's init options."""
        path = f"/shop-{tag}.html"
        self.pages[path] = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Shop</title>
<script>
  window.analytics = [];
  analytics._writeKey = {json.dumps(write_key)};
  analytics._cdn = {json.dumps(collector_url)};
  analytics._loadOptions = {load_options};
  analytics.push(["track", "Order Completed", {{"tag": {json.dumps(tag)}, "revenue": 12.5}}]);
</script>
<script async src="/analytics.js"></script>
</head><body><h1>Shop</h1></body></html>"""
        return self.origin + path

    def start(self) -> None:
        """Serve the pages and the bundles on a free port in a background thread."""
        pages = self.pages
        bundles = self.bundles

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in pages:
                    body, kind = pages[path].encode(), "text/html; charset=utf-8"
                elif path == "/analytics.js":
                    body, kind = (bundles / "standalone.js").read_bytes(), "text/javascript"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop serving."""
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture(scope="module")
def site(analytics_js: Path) -> Iterator[Site]:
    """The shop's page server."""
    shop = Site(analytics_js)
    shop.start()
    yield shop
    shop.stop()


# how the page asks analytics.js to deliver: one request per event (to /v1/t), or batches
# (to /v1/b) once one event is queued
DELIVERY = {
    "standard": ("/v1/t", "{}"),
    "batching": (
        "/v1/b",
        '{integrations: {"Segment.io": {deliveryStrategy: '
        '{strategy: "batching", config: {size: 1, timeout: 100}}}}}',
    ),
}


@pytest.mark.parametrize("delivery", sorted(DELIVERY))
def test_a_failed_delivery_is_retried_through_the_preflight_and_lands(
    collector: Collector, site: Site, context: BrowserContext, delivery: str
) -> None:
    """The first POST gets a 503; the retry carries X-Retry-Count, which the preflight must
    allow, or Chromium blocks every retry and the event is lost."""
    path, options = DELIVERY[delivery]
    collector.proxy.arm({path}, fail_first=1)
    tag = uuid.uuid4().hex[:12]
    page = context.new_page()
    page.goto(site.add_page(collector.url, collector.server.write_key, options, tag))

    stored = collector.wait_for(tag)
    assert len(stored) == 1, stored
    event = stored[0]
    assert (event["type"], event["event"]) == ("track", "Order Completed")
    assert event["properties"] == {"tag": tag, "revenue": 12.5}
    assert event["context"]["library"]["name"] == "analytics.js"

    posts = collector.proxy.requests("POST", path)
    assert [(p.failed_on_purpose, p.status) for p in posts] == [(True, 503), (False, 200)]
    assert "x-retry-count" not in posts[0].headers
    # Chromium let the header through: the preflight answer it cached (or a new one) allows it
    assert posts[1].headers["x-retry-count"] == "1"
    preflights = collector.proxy.requests("OPTIONS", path)
    assert preflights and all(e.status == 204 for e in preflights), collector.proxy.exchanges
    page.close()


# the page changes only how often analytics.js flushes its own counters (and, for the second,
# turns their sampling on, over plain HTTP as the test server speaks it): their host is the
# one the collector's settings name
METRICS_OPTIONS = {
    "as-served": "{updateCDNSettings: (s) => ({...s, metrics: {...s.metrics, flushTimer: 200}})}",
    "sampling-on": (
        '{integrations: {"Segment.io": {protocol: "http"}}, updateCDNSettings: (s) => '
        "({...s, metrics: {...s.metrics, sampleRate: 1, flushTimer: 200}})}"
    ),
}
# several flush periods of the page's timer
METRICS_WAIT_MS = 2000


@pytest.mark.parametrize("metrics", sorted(METRICS_OPTIONS))
def test_a_page_on_the_collectors_settings_talks_to_no_other_host(
    collector: Collector, site: Site, context: BrowserContext, metrics: str
) -> None:
    collector.proxy.arm()
    tag = uuid.uuid4().hex[:12]
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(
        site.add_page(collector.url, collector.server.write_key, METRICS_OPTIONS[metrics], tag)
    )
    assert len(collector.wait_for(tag)) == 1
    page.wait_for_timeout(METRICS_WAIT_MS)

    hosts = {urlsplit(url).netloc for url in requested}
    assert hosts <= {urlsplit(collector.url).netloc, urlsplit(site.origin).netloc}, requested
    reported = collector.proxy.requests("POST", "/v1/m")
    if metrics == "as-served":
        # the settings turn the library's counters off
        assert reported == []
    else:
        assert reported and all(e.status == 200 for e in reported), collector.proxy.exchanges
    page.close()

"""The admin console in real Chromium against a real ``personify serve`` over the demo's data
(``personify demo --no-serve``): sign in with the demo admin key, find the demo user and see
their timeline and activity chart, replay a dead letter, run SQL and download the result as
CSV, sign out. Every page is checked for console errors and for requests to any host but
the server, and photographed into ``test-artifacts/console/`` (``PERSONIFY_TEST_ARTIFACTS``
moves it). With ``PERSONIFY_README_SCREENSHOT=PATH`` the overview's picture is also written
to PATH: ``make screenshots`` makes the README's picture that way.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest

from personify.api.demo_page import DEMO_WRITE_KEY
from personify.cli.demo import DEMO_ADMIN_KEY
from personify.store.database import Database
from personify.store.failed_events import FailedEventRepository, NewFailedEvent
from tests.e2e.conftest import PERSONIFY, ServerProcess, free_port, server_env

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Request

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("PERSONIFY_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "console"
# the dead letter the test replays: a valid event the worker once failed on
DEAD_LETTER = {
    "type": "track",
    "event": "Coupon Applied",
    "userId": "user-ada",
    "messageId": "console-e2e-dead-letter",
    "timestamp": "2026-12-01T10:00:00Z",
    "properties": {"coupon": "WELCOME10"},
}
WAIT_MS = 15_000
# the visible form fields with no label a screen reader could announce
UNLABELLED_FIELDS = """() => [...document.querySelectorAll('input, select, textarea')]
  .filter(el => el.type !== 'hidden' && el.type !== 'submit' && el.offsetParent !== null)
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                && !el.getAttribute('aria-labelledby') && !el.title)
  .map(el => el.outerHTML.slice(0, 120))"""


@pytest.fixture(scope="module")
def demo_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server over a data folder the whole demo filled, plus one dead letter."""
    data_dir = tmp_path_factory.mktemp("console") / "demo"
    data_dir.mkdir()
    env = server_env(data_dir)
    done = subprocess.run(
        [*PERSONIFY, "demo", "--no-serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    db = Database(f"sqlite:///{data_dir / 'personify.db'}")
    try:
        FailedEventRepository(db).add_many(
            [
                NewFailedEvent(
                    stage="worker",
                    code="processing_failed",
                    reason="the state database was unreachable",
                    payload=DEAD_LETTER,
                    message_id=DEAD_LETTER["messageId"],
                )
            ]
        )
    finally:
        db.dispose()
    server = ServerProcess(
        data_dir=data_dir, env=env, write_key=DEMO_WRITE_KEY, admin_key=DEMO_ADMIN_KEY
    )
    server.start(timeout_s=60)
    yield server
    server.stop()


class Watch:
    """What a page did that it should not: console errors, uncaught exceptions, requests to
    other hosts."""

    def __init__(self, page: Page, base_url: str) -> None:
        self.host = urlsplit(base_url).netloc
        self.errors: list[str] = []
        self.foreign: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        page.on("request", self._request)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"{message.type}: {message.text}")

    def _request(self, request: Request) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("data", "blob", "about"):
            return
        if parts.netloc != self.host:
            self.foreign.append(request.url)

    def check(self) -> None:
        assert self.errors == [], self.errors
        assert self.foreign == [], self.foreign


def shoot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def chart_points(page: Page, selector: str) -> int:
    """The points the chart at ``selector`` drew (console.js sets ``data-points``)."""
    page.wait_for_selector(f"{selector}[data-points]", timeout=WAIT_MS)
    return int(page.get_attribute(selector, "data-points") or 0)


def test_the_console_from_sign_in_to_sign_out(
    browser: Browser, demo_console: ServerProcess
) -> None:
    base = demo_console.base_url
    context = browser.new_context(
        viewport={"width": 1360, "height": 900}, accept_downloads=True, base_url=base
    )
    page = context.new_page()
    watch = Watch(page, base)
    try:
        # -- sign in: the console sends a person without a session to the sign-in form
        page.goto("/console")
        assert urlsplit(page.url).path == "/console/login"
        shoot(page, "01-sign-in")
        page.get_by_label("API key").fill(DEMO_ADMIN_KEY)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{base}/console")
        assert page.get_by_role("heading", name="Overview").is_visible()
        # the overview's live chart: events per minute by source, the demo's just sent
        assert chart_points(page, "div.chart") > 0
        shoot(page, "02-overview")
        readme = os.environ.get("PERSONIFY_README_SCREENSHOT")
        if readme:
            page.screenshot(path=readme, full_page=False)

        # -- find the demo user by an id of theirs: the anonymous one they merged from
        page.get_by_role("link", name="Profiles", exact=True).click()
        page.get_by_label("Any id").fill("anon-7f3a")
        page.get_by_role("button", name="Find").click()
        page.wait_for_url("**/console/profiles/**")
        assert "user-ada" in (page.text_content("main") or "")
        assert page.locator("#timeline li").count() > 0
        assert chart_points(page, "#activity div.chart") > 0
        # PII is shown hashed
        assert "hmac-sha256:" in (page.text_content("main") or "")
        shoot(page, "03-profile")

        # -- the dead letter: inspect and replay it
        page.get_by_role("link", name="Failed events", exact=True).click()
        # the demo's own dead letters may come first: ours is the newest
        page.get_by_role("link", name="Dead letter").last.click()
        assert "processing_failed" in (page.text_content("main") or "")
        page.get_by_role("button", name="Replay this event").click()
        page.wait_for_load_state()
        assert "replayed" in (page.text_content("main") or "").lower()
        shoot(page, "04-failed-events")
        admin = {"Authorization": f"Bearer {DEMO_ADMIN_KEY}"}
        letters = httpx.get(f"{base}/v1/failed-events", headers=admin, timeout=10).json()
        [letter] = [d for d in letters["data"] if d["messageId"] == DEAD_LETTER["messageId"]]
        assert letter["replayedAt"]

        # -- SQL over the warehouse, and the result as CSV
        page.get_by_role("link", name="SQL", exact=True).click()
        query = (
            "SELECT event, count(*) AS events FROM fact_events WHERE type = 'track' "
            "GROUP BY event ORDER BY events DESC, event"
        )
        page.locator("#q").fill(query)
        page.get_by_role("button", name="Run").click()
        page.wait_for_selector("#sql-result tbody tr", timeout=WAIT_MS)
        assert page.locator("#sql-result tbody tr").count() > 1
        shoot(page, "05-sql")
        with page.expect_download() as waited:
            page.locator("#sql-result").get_by_role("link", name="Download CSV").click()
        download = waited.value
        rows = list(csv.reader(io.StringIO(Path(download.path()).read_text("utf-8"))))
        assert rows[0] == ["event", "events"]
        assert any(row[0] == "Product Viewed" and int(row[1]) > 0 for row in rows[1:])

        # -- every other page of the navigation loads clean, and reads by keyboard: each
        # form field has a label, each page one h1
        visited = {"/console", "/console/profiles", "/console/failed", "/console/sql"}
        links = page.locator("header nav a").evaluate_all("links => links.map(a => a.pathname)")
        for path in links:
            if path in visited:
                continue
            page.goto(path)
            assert page.locator("h1").count() == 1, path
            unlabelled = page.evaluate(UNLABELLED_FIELDS)
            assert unlabelled == [], (path, unlabelled)
            shoot(page, "page" + path.replace("/", "-"))
        assert len(links) >= 12

        # -- sign out: the session is gone, the console asks to sign in again
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url("**/console/login")
        shoot(page, "06-signed-out")
        page.goto("/console")
        assert urlsplit(page.url).path == "/console/login"
        watch.check()
    finally:
        context.close()

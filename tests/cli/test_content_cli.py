"""``personify content …`` and ``personify import --catalog`` run in-process with click's
runner on a temporary data folder."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import Invoke, ok

BANNER = {"id": "winter-sale", "type": "banner", "fields": {"title": "Winter sale"}}


def test_item_life_from_the_command_line(run: Invoke, tmp_path: Path) -> None:
    created = json.loads(ok(run("content", "create", json.dumps(BANNER))))
    assert created["status"] == "draft" and created["version"] == 1
    changes = tmp_path / "changes.json"
    changes.write_text(json.dumps({"priority": 5}))
    updated = json.loads(ok(run("content", "update", "winter-sale", f"@{changes}", "--publish")))
    assert (updated["version"], updated["publishedVersion"]) == (2, 2)
    listing = ok(run("content", "list"))
    assert listing.split() == ["winter-sale", "v2", "published", "banner", "serves", "v2"]
    rolled = json.loads(ok(run("content", "rollback", "winter-sale", "1")))
    assert rolled["priority"] == 0 and rolled["publishedVersion"] == 3
    versions = ok(run("content", "versions", "winter-sale")).splitlines()
    assert [line.split()[:2] for line in versions] == [
        ["v3", "rollback"],
        ["v2", "updated"],
        ["v1", "created"],
    ]
    first = json.loads(ok(run("content", "show", "winter-sale", "--version", "1")))
    assert first["change"] == "created"
    assert json.loads(ok(run("content", "unpublish", "winter-sale")))["status"] == "draft"
    assert json.loads(ok(run("content", "archive", "winter-sale")))["status"] == "archived"


def test_bad_input_is_a_clear_error(run: Invoke) -> None:
    refused = run("content", "create", json.dumps({"id": "x", "type": "banner", "priority": "hi"}))
    assert refused.exit_code != 0
    assert "/priority" in refused.output
    missing = run("content", "show", "nope")
    assert missing.exit_code != 0 and "no content item 'nope'" in missing.output
    not_json = run("content", "create", "{oops")
    assert not_json.exit_code == 2 and "not JSON" in not_json.output


def test_placements_from_the_command_line(run: Invoke) -> None:
    ok(run("content", "create", json.dumps(BANNER), "--publish"))
    body = {"id": "home-hero", "defaultItem": "winter-sale", "strategy": "affinity"}
    created = json.loads(ok(run("content", "placements", "create", json.dumps(body))))
    assert created["strategy"]["name"] == "affinity"
    ok(run("content", "placements", "update", "home-hero", '{"limit": 2}'))
    assert ok(run("content", "placements", "list")).split() == [
        "home-hero",
        "v2",
        "active",
        "affinity",
        "winter-sale",
    ]
    shown = json.loads(ok(run("content", "placements", "show", "home-hero")))
    assert shown["limit"] == 2
    assert json.loads(ok(run("content", "placements", "archive", "home-hero")))["status"] == (
        "archived"
    )


def test_export_and_import_files(run: Invoke, tmp_path: Path) -> None:
    ok(run("content", "create", json.dumps(BANNER), "--publish"))
    ok(run("content", "placements", "create", '{"id": "home-hero", "defaultItem": "winter-sale"}'))
    exported = tmp_path / "catalog.json"
    ok(run("content", "export", "--output", str(exported)))
    assert json.loads(exported.read_text())["items"][0]["status"] == "published"

    products = tmp_path / "products.csv"
    products.write_text(
        "product_id,name,category,price,image_url\n"
        "sku-1,Trail shoe,shoes,89.50,/img/1.png\n"
        "sku 2,Broken id,shoes,1,\n"
        "sku-3,Sock,socks,4,\n"
    )
    result = run("import", str(products), "--catalog", "--publish")
    assert result.exit_code == 1  # one row refused, the others kept
    report = json.loads(result.output)
    assert report["items"]["created"] == 2 and report["items"]["refused"] == 1
    assert report["items"]["errors"][0]["index"] == 1
    shoe = json.loads(ok(run("content", "show", "sku-1")))
    assert shoe["type"] == "product" and shoe["status"] == "published"
    assert shoe["fields"] == {
        "name": "Trail shoe",
        "category": "shoes",
        "price": 89.5,
        "image_url": "/img/1.png",
    }
    assert shoe["tags"] == ["shoes"]

    lines = tmp_path / "items.jsonl"
    lines.write_text(json.dumps({"id": "article-1", "type": "article"}) + "\nnot json\n")
    mixed = run("content", "import", str(lines))
    assert mixed.exit_code == 1
    assert json.loads(mixed.output)["items"]["created"] == 1
    again = ok(run("import", str(exported), "--catalog"))
    assert json.loads(again)["items"]["unchanged"] == 1


def test_decide_previews_a_decision_without_an_exposure(run: Invoke) -> None:
    ok(run("content", "create", json.dumps(BANNER), "--publish"))
    ok(run("content", "placements", "create", '{"id": "home-hero", "defaultItem": "winter-sale"}'))
    ok(
        run(
            "content",
            "create",
            json.dumps({**BANNER, "id": "for-all", "placements": ["home-hero"]}),
            "--publish",
        )
    )
    decided = json.loads(
        ok(run("decide", "nobody", "--placement", "home-hero", "--placement", "side"))
    )
    hero = decided["placements"]["home-hero"]
    assert hero["reason"] == "unknown_user" and hero["items"][0]["id"] == "winter-sale"
    assert decided["placements"]["side"]["reason"] == "unknown_placement"
    assert decided["trace"]["exposureLogged"] is False
    missing = run("decide", "nobody")
    assert missing.exit_code == 2 and "--placement" in missing.output

"""The served contract: the OpenAPI document and a reference page that loads nothing from
another host."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.api import Harness, assert_error, running_app


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data") as h:
        yield h


async def test_the_document_describes_the_collector_and_the_admin_api(harness: Harness) -> None:
    response = await harness.client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    track = paths["/v1/track"]["post"]
    body = track["requestBody"]["content"]["application/json"]["schema"]
    assert "event" in body["required"]
    assert set(track["responses"]) >= {"200", "400", "401", "413", "415", "503"}
    assert paths["/v1/batch"]["post"]["requestBody"]["required"]
    assert paths["/v1/failed-events"]["get"]["security"] == [{"apiKey": ["ops:read"]}]
    assert paths["/v1/track"]["post"]["security"] == [{"writeKey": []}]
    limit = next(p for p in paths["/v1/failed-events"]["get"]["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 1000)


async def test_the_reference_page_loads_only_this_servers_files(harness: Harness) -> None:
    page = await harness.client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    urls = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
    assert len(urls) >= 3
    for url in urls:
        assert url.startswith("/docs/assets/"), url
        asset = await harness.client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100


async def test_unknown_reference_files_are_json_404s(harness: Harness) -> None:
    for path in ["/docs/nope", "/docs/assets/LICENSE", "/docs/assets/..%2F..%2Fcore.py"]:
        assert_error(await harness.client.get(path), 404, "not_found")

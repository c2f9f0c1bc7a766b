"""The analytics.js settings document points browsers at PERSONIFY_PUBLIC_URL, never at a Host
header a client chose (outside production an unset URL falls back to it, for development)."""

from __future__ import annotations

from pathlib import Path

import pytest

from personify.errors import ConfigurationError
from tests.api import assert_error, running_app
from tests.conftest import make_settings

EVIL = {"Host": "evil.example"}


async def test_the_configured_public_url_wins_over_the_host_header(tmp_path: Path) -> None:
    async with running_app(tmp_path / "data", public_url="https://collect.example.com/pfy/") as h:
        response = await h.client.get(f"/v1/projects/{h.write_key}/settings", headers=EVIL)
        assert response.status_code == 200, response.text
        integration = response.json()["integrations"]["Segment.io"]
        assert integration["apiHost"] == "collect.example.com/pfy/v1"
        assert integration["protocol"] == "https"
        assert "evil" not in response.text
        # analytics.js's own counters would go to Segment's servers without a host of ours
        metrics = response.json()["metrics"]
        assert metrics == {"host": "collect.example.com/pfy/v1", "sampleRate": 0}


async def test_production_never_takes_the_host_header(tmp_path: Path) -> None:
    async with running_app(tmp_path / "data", environment="production") as h:
        response = await h.client.get(f"/v1/projects/{h.write_key}/settings", headers=EVIL)
        assert_error(response, 500, "missing_public_url")
        assert "evil" not in response.text
        assert "PERSONIFY_PUBLIC_URL" in response.json()["error"]["message"]
        # an unknown key is still a 401 first
        response = await h.client.get("/v1/projects/wk_nope/settings", headers=EVIL)
        assert_error(response, 401, "invalid_write_key")
    async with running_app(
        tmp_path / "data", environment="production", public_url="http://10.0.0.5:8000"
    ) as h:
        response = await h.client.get(f"/v1/projects/{h.write_key}/settings", headers=EVIL)
        integration = response.json()["integrations"]["Segment.io"]
        assert (integration["apiHost"], integration["protocol"]) == ("10.0.0.5:8000/v1", "http")


async def test_outside_production_an_unset_url_falls_back_to_the_host_header(
    tmp_path: Path,
) -> None:
    async with running_app(tmp_path / "data") as h:
        response = await h.client.get(
            f"/v1/projects/{h.write_key}/settings", headers={"Host": "localhost:8000"}
        )
        integration = response.json()["integrations"]["Segment.io"]
        assert integration["apiHost"] == "localhost:8000/v1"


@pytest.mark.parametrize(
    "url",
    [
        "collect.example.com",
        "ftp://collect.example.com",
        "https://",
        "https://x.example?a=1",
        "https://x.example#top",
        "http://[::1",
        "https://x.example:0",
        "https://user:secret@x.example",
    ],
)
def test_a_public_url_that_is_no_http_url_is_a_configuration_error(
    tmp_path: Path, url: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        make_settings(tmp_path, public_url=url)
    assert caught.value.code == "invalid_public_url"

"""Query and path parameters of every GET route: junk gets a 400 that names the parameter,
never a 5xx, never the value echoed back."""

from __future__ import annotations

import http.client
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx
import pytest
from litestar.routes import HTTPRoute

from personify.api.admin import MAX_ID_CHARS
from personify.api.app import create_app
from personify.profiles.repository import parse_cursor
from personify.runtime import Runtime
from tests.api import assert_error, error_keys
from tests.conftest import make_settings
from tests.e2e.conftest import ServerProcess, make_server
from tests.postgres import fresh_schema, postgres_database  # noqa: F401

# every query parameter a GET route reads, and one none does
PARAMETERS = ["cursor", "limit", "before", "after", "as_of", "group", "stage", "id", "nonsense"]
JUNK = [
    "9999999999999999999999:x",
    "-9223372036854775809:x",
    "9223372036854775808",
    "-1",
    "-" + "9" * 40,
    "9" * 5000,
    "9" * 5000 + ":x",
    "²:x",
    "--5:x",
    "1e400",
    "abc",
    "",
    "a\x00b",
    "1:\x00",
    "x" * 20_000,
    "99999-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "🙂" * 300,
]
# path parameters: raw (already percent-encoded) path segments
PATH_JUNK = ["x" * 20_000, "%00", "a%00b", "%FF%FE", "9" * 5000, "%F0%9F%99%82" * 300, "-1"]


class Api:
    """The app over one state database, with an admin key and one applied event for ``u``."""

    def __init__(self, services: Runtime, client: httpx.AsyncClient, admin_key: str) -> None:
        self.services = services
        self.client = client
        self.admin = {"Authorization": f"Bearer {admin_key}"}
        app = client._transport.app  # type: ignore[attr-defined]
        # every GET route of the Litestar app behind the collector's fast path, in the
        # OpenAPI document's spelling (``{id}``, not Litestar's ``{id:str}``)
        self.get_routes = [
            route.path_format
            for route in app.app.routes
            if isinstance(route, HTTPRoute) and "GET" in route.methods
        ]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Api]:
    overrides: dict[str, object] = {"run_worker": False}
    if request.param == "postgresql":
        overrides["state_url"] = fresh_schema(request.getfixturevalue("postgres_database"))
    settings = make_settings(tmp_path / "data", **overrides)
    services = Runtime.build(settings)
    app = create_app(settings, services=services)
    await services.start()
    _, write_key = services.sources.create("web")
    _, admin_key = services.api_keys.create("admin", "admin")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post(
            "/v1/batch",
            json={"batch": [{"type": "track", "userId": "u", "event": "E"}]},
            auth=(write_key, ""),
        )
        assert response.status_code == 200, response.text
        await services.worker.run(until_idle=True)
        yield Api(services, client, admin_key)
    await services.close()


def concrete(path: str, value: str = "u") -> str:
    """The route's path with every ``{param}`` replaced by ``value`` (already encoded)."""
    while "{" in path:
        start = path.index("{")
        path = path[:start] + value + path[path.index("}", start) + 1 :]
    return path


def assert_answered(response: httpx.Response, sent: str) -> None:
    """Not a 5xx; an error is our JSON document, and it does not copy a long value back
    (a 404 may name an id, which is at most 512 characters)."""
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        assert set(response.json()) == error_keys(response)
        assert len(response.content) < 3000
        if len(sent) > MAX_ID_CHARS:
            assert sent not in response.text


async def test_every_get_route_answers_junk_parameters_without_a_5xx(api: Api) -> None:
    assert "/v1/profiles/{id}/events" in api.get_routes  # the walk found the routes
    for template in api.get_routes:
        path = concrete(template)
        for name in PARAMETERS:
            for value in JUNK:
                url = f"{path}?{urlencode({name: value})}"
                response = await api.client.get(url, headers=api.admin)
                assert_answered(response, value)
        if "{" in template:
            for segment in PATH_JUNK:
                response = await api.client.get(concrete(template, segment), headers=api.admin)
                assert_answered(response, segment)


async def test_a_cursor_beyond_64_bits_is_a_400_naming_it(api: Api) -> None:
    # the exact request of the report: it was a 500 from the database driver
    response = await api.client.get(
        "/v1/profiles/u/events?cursor=9999999999999999999999:x", headers=api.admin
    )
    error = assert_error(response, 400, "invalid_parameter")
    assert error["details"] == {"parameter": "cursor"}
    assert "9999999999999999999999" not in response.text
    # the timeline still pages with the cursors it hands out
    page = await api.client.get("/v1/profiles/u/events?limit=1", headers=api.admin)
    assert page.status_code == 200, page.text
    cursor = page.json()["next"]
    assert cursor is not None and parse_cursor(cursor) is not None
    rest = await api.client.get(f"/v1/profiles/u/events?cursor={quote(cursor)}", headers=api.admin)
    assert rest.status_code == 200, rest.text
    assert rest.json()["data"] == []


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/v1/profiles/u/events?cursor=" + "9" * 5000 + ":x", "cursor"),
        ("/v1/profiles/u/events?cursor=%C2%B2:x", "cursor"),
        ("/v1/profiles/u/events?cursor=1:%00", "cursor"),
        ("/v1/profiles/u/events?limit=" + "9" * 5000, "limit"),
        ("/v1/profiles/u/history?before=-1", "before"),
        ("/v1/profiles/u?as_of=" + "2" * 100, "as_of"),
        ("/v1/failed-events?stage=a%00b", "stage"),
        ("/v1/failed-events?after=" + "1" * 30, "after"),
        ("/v1/log?group=" + "g" * 300, "group"),
        ("/v1/profiles/a%00b", "id"),
        ("/v1/profiles/" + "x" * 600 + "/history", "id"),
    ],
)
async def test_bad_parameters_are_400_invalid_parameter(
    api: Api, path: str, parameter: str
) -> None:
    response = await api.client.get(path, headers=api.admin)
    error = assert_error(response, 400, "invalid_parameter")
    assert error["details"] == {"parameter": parameter}
    assert len(response.content) < 500


def test_parse_cursor_takes_only_what_the_database_can_compare() -> None:
    assert parse_cursor("1714564800000:src:m-1") == (1714564800000, "src:m-1")
    assert parse_cursor("-5:k") == (-5, "k")
    assert parse_cursor(f"{2**63 - 1}:k") == (2**63 - 1, "k")
    assert parse_cursor(f"{-(2**63)}:k") == (-(2**63), "k")
    for junk in [
        f"{2**63}:k",
        f"{-(2**63) - 1}:k",
        "9" * 5000 + ":k",
        "²:k",
        "--5:k",
        "+5:k",
        " 5:k",
        "5",
        ":k",
        "5:\x00",
        "5:" + "k" * 2000,
    ]:
        assert parse_cursor(junk) is None, junk


@pytest.mark.e2e
def test_a_bad_cursor_leaves_the_keep_alive_connection_usable(tmp_path: Path) -> None:
    server: ServerProcess = make_server(tmp_path / "data")
    server.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        headers = {"Authorization": f"Bearer {server.admin_key}"}
        conn.request(
            "GET", "/v1/profiles/u/events?cursor=9999999999999999999999:x", headers=headers
        )
        first = conn.getresponse()
        assert first.status == 400, first.read()
        assert b"invalid_parameter" in first.read()
        assert (first.getheader("connection") or "").lower() != "close"
        # the same connection answers the next request (it was reset after the 500)
        conn.request("GET", "/v1/failed-events", headers=headers)
        second = conn.getresponse()
        assert second.status == 200, second.read()
        second.read()
        conn.close()
    finally:
        server.stop()

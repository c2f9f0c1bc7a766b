"""The served OpenAPI document is the contract: Schemathesis generates requests from it for
every route, valid and invalid ones, and every answer must be documented (status, content
type, headers, body schema) and never a 5xx.

The app runs in-process (ASGI, with its lifespan, so the stream worker applies what the
collector takes) on a real SQLite data folder, with a write key and an admin key, so the
authenticated paths answer too, not only 401s.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import checks as schemathesis_checks
from schemathesis.generation import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans

from personify.api.app import create_app
from personify.auth.keys import ApiKeyRepository
from personify.ingest.sources import SourceRepository
from personify.store.database import open_database
from tests.conftest import make_settings

# generated requests per operation and generation mode (valid, invalid)
EXAMPLES = 60
MIN_CASES = 2000
CHECKS = [
    schemathesis_checks.not_a_server_error,
    schemathesis_checks.status_code_conformance,
    schemathesis_checks.content_type_conformance,
    schemathesis_checks.response_headers_conformance,
    schemathesis_checks.response_schema_conformance,
]


@dataclass
class Contract:
    """The loaded document of a running app, and the credentials to call it with."""

    schema: Any
    write_key: str
    admin_key: str
    cases: dict[str, int] = field(default_factory=dict)
    # the statuses each route answered, over both generation modes
    statuses: dict[str, set[int]] = field(default_factory=dict)

    def headers(self, path: str) -> dict[str, str]:
        """The credentials a route takes: the write key on the collector, else the API key."""
        if path.startswith("/v1/projects/") or path == "/personify.js":
            return {}
        if any(path == f"/v1/{name}" for name in COLLECTOR_PATHS):
            token = base64.b64encode(f"{self.write_key}:".encode()).decode()
            return {"Authorization": f"Basic {token}"}
        return {"Authorization": f"Bearer {self.admin_key}"}


COLLECTOR_PATHS = {
    *("track", "identify", "page", "screen", "group", "alias"),
    *("t", "i", "p", "s", "g", "a", "b", "m", "batch", "import"),
}


@pytest.fixture
def contract(tmp_path: Path) -> Iterator[Contract]:
    data = tmp_path / "data"
    # the worker applies what the collector takes, so profile routes find profiles too
    app_settings = make_settings(data, run_worker=True, run_lake_sink=False)
    db = open_database(app_settings)
    try:
        _, write_key = SourceRepository(db).create("web")
        _, admin_key = ApiKeyRepository(db).create("contract", "admin")
    finally:
        db.dispose()
    app = create_app(app_settings)
    try:
        # starts the app's lifespan, which lives until shutdown_lifespans
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        yield Contract(schema, write_key, admin_key)
    finally:
        shutdown_lifespans()


def _run(contract: Contract, operation: Any, mode: GenerationMode) -> None:
    label = f"{mode.value} {operation.method.upper()} {operation.path}"

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        headers = contract.headers(operation.path)
        response = case.call(headers=headers)
        case.validate_response(response, checks=CHECKS, headers=headers)
        contract.cases[label] = contract.cases.get(label, 0) + 1
        route = f"{operation.method.upper()} {operation.path}"
        contract.statuses.setdefault(route, set()).add(response.status_code)

    try:
        check()
    except Unsatisfiable:
        # nothing invalid can be made of this operation (no parameters, a body of any shape)
        contract.cases.setdefault(label, 0)


# every operation of the document in one test: about 3 minutes on a quiet machine, more on a
# busy one (the default 300 s is meant for one ordinary test)
@pytest.mark.timeout(1200)
def test_every_route_honours_the_served_document(contract: Contract) -> None:
    operations = [result.ok() for result in contract.schema.get_all_operations()]
    paths = {operation.path for operation in operations}
    # the collector's fast-path routes are in the same document as the admin API
    assert {"/v1/track", "/v1/t", "/v1/batch", "/v1/import", "/v1/m"} <= paths
    assert {"/v1/failed-events", "/v1/profiles/{id}/events", "/healthz"} <= paths
    assert "/v1/projects/{write_key}/settings" in paths
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _run(contract, operation, mode)
    sent = {label: count for label, count in contract.cases.items() if count}
    assert {label.split(" ", 1)[1] for label in sent} == {
        f"{op.method.upper()} {op.path}" for op in operations
    }
    total = sum(sent.values())
    assert total >= MIN_CASES, contract.cases
    # the keys were taken: authenticated routes answered, not only refused
    for route in ("GET /v1/failed-events", "GET /v1/log", "GET /v1/worker/status"):
        assert 200 in contract.statuses[route], contract.statuses[route]
    assert 200 in contract.statuses["POST /v1/track"]
    assert 200 in contract.statuses["POST /v1/batch"]

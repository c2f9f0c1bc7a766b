"""The model routes through the real ASGI app over real SQLite: versions listed, filtered and
shown, promotion by hand and the served flags, the promotion history, rollback, the 404s,
409s and 422s, a tampered or missing model file refused, roles, and the OpenAPI document.

The versions are tiny real models (LightGBM boosters fitted on random numbers) registered
directly, not trained on a lake."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import pytest

from personify.predict.learning import FeatureSpec, Model
from personify.predict.registry import ModelVersion
from personify.predict.targets import target
from tests.api import Harness, assert_error, running_app

AS_OF = datetime(2025, 3, 1, tzinfo=UTC)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "data") as h:
        yield h


def tiny_model(name: str, seed: int) -> Model:
    """A real model of ``name`` over two features, fitted on 80 random rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(80, 2))
    y = (x[:, 0] + rng.normal(scale=0.5, size=80) > 0).astype(np.float64)
    booster = lightgbm.train({"objective": "binary", "verbose": -1}, lightgbm.Dataset(x, y), 5)
    spec = FeatureSpec(("a", "b"))
    if name == "churn":
        return Model(target("churn"), spec, "churn", {"churn": booster}, None, prior={"churn": 0.4})
    boosters = {"orders": booster, "revenue": booster}
    return Model(target("clv"), spec, "tweedie", boosters, None, prior={"revenue": 12.5})


def register(harness: Harness, name: str, seed: int, *, candidate: float = 0.7) -> ModelVersion:
    """Register a tiny model of ``name`` as a kept version, with a small report."""
    metric = "roc_auc" if name == "churn" else "revenue_mae"
    report = {
        "kind": "churn" if name == "churn" else "tweedie",
        "validation": {"method": "next_window"},
        "gate": {"metric": metric, "candidate": candidate, "baseline": 0.6, "decision": "kept"},
        "model": {metric: candidate},
    }
    return harness.services.models.register(
        tiny_model(name, seed),
        as_of=AS_OF,
        definitions="x",
        lineage_id=None,
        report=report,
        status="kept",
    )


async def call(harness: Harness, method: str, path: str, **params: Any) -> Any:
    response = await harness.client.request(method, path, params=params, headers=harness.admin)
    assert response.status_code == 200, (path, response.text)
    return response.json()


async def test_versions_are_listed_newest_first_filtered_and_shown(harness: Harness) -> None:
    first = register(harness, "churn", 1, candidate=0.71)
    second = register(harness, "churn", 2, candidate=0.74)
    clv = register(harness, "clv", 3, candidate=8.5)

    listing = (await call(harness, "GET", "/v1/models"))["models"]
    assert [m["id"] for m in listing] == [clv.id, second.id, first.id]
    assert listing[1] == second.to_dict()
    assert [m["version"] for m in listing] == [1, 2, 1]
    assert listing[1]["value"] == 0.74 and listing[1]["metric"] == "roc_auc"
    assert listing[0]["targetKey"] == "clv:90d:Order Completed"
    assert not any(m["served"] for m in listing)
    assert all("report" not in m and "file" not in m for m in listing)

    churn = (await call(harness, "GET", "/v1/models", target="churn"))["models"]
    assert [m["id"] for m in churn] == [second.id, first.id]
    only_clv = (await call(harness, "GET", "/v1/models", target="clv"))["models"]
    assert [m["id"] for m in only_clv] == [clv.id]

    unknown = await harness.client.get("/v1/models?target=ltv", headers=harness.admin)
    assert_error(unknown, 422, "invalid_target")

    shown = await call(harness, "GET", f"/v1/models/{second.id}")
    assert shown == second.to_dict(full=True)
    assert shown["report"]["gate"]["candidate"] == 0.74
    assert shown["features"] == {"numeric": ["a", "b"], "categorical": {}}
    assert Path(shown["file"]).is_file()

    missing = await harness.client.get("/v1/models/999", headers=harness.admin)
    assert_error(missing, 404, "model_not_found")


async def test_promotion_rollback_and_the_promotion_history(harness: Harness) -> None:
    first = register(harness, "churn", 1)
    second = register(harness, "churn", 2)
    clv = register(harness, "clv", 3)

    assert (await call(harness, "GET", "/v1/models/targets/churn/promotions")) == {"promotions": []}
    nothing = await harness.client.post("/v1/models/targets/churn/rollback", headers=harness.admin)
    assert_error(nothing, 404, "no_served_model")

    promoted = await call(harness, "POST", f"/v1/models/{first.id}/promote")
    assert (promoted["id"], promoted["served"], promoted["status"]) == (first.id, True, "promoted")
    assert "report" in promoted
    alone = await harness.client.post("/v1/models/targets/churn/rollback", headers=harness.admin)
    assert_error(alone, 409, "nothing_to_roll_back")

    await call(harness, "POST", f"/v1/models/{second.id}/promote")
    served = {m["id"]: m["served"] for m in (await call(harness, "GET", "/v1/models"))["models"]}
    assert served == {first.id: False, second.id: True, clv.id: False}
    history = (await call(harness, "GET", "/v1/models/targets/churn/promotions"))["promotions"]
    assert [(p["modelId"], p["reason"]) for p in history] == [
        (second.id, "manual"),
        (first.id, "manual"),
    ]
    assert all(p["targetKey"] == "churn:30d:*" and p["promotedAt"] for p in history)

    restored = await call(harness, "POST", "/v1/models/targets/churn/rollback")
    assert (restored["id"], restored["served"]) == (first.id, True)
    assert (await call(harness, "GET", f"/v1/models/{second.id}"))["served"] is False
    history = (await call(harness, "GET", "/v1/models/targets/churn/promotions"))["promotions"]
    assert [(p["modelId"], p["reason"]) for p in history] == [
        (first.id, "rollback"),
        (second.id, "manual"),
        (first.id, "manual"),
    ]
    current = harness.services.models.served("churn")
    assert current is not None and current.id == first.id
    # the other target is untouched
    assert (await call(harness, "GET", "/v1/models/targets/clv/promotions"))["promotions"] == []
    assert harness.services.models.served("clv") is None

    unknown = await harness.client.post("/v1/models/999/promote", headers=harness.admin)
    assert_error(unknown, 404, "model_not_found")
    for response in (
        await harness.client.post("/v1/models/targets/ltv/rollback", headers=harness.admin),
        await harness.client.get("/v1/models/targets/ltv/promotions", headers=harness.admin),
    ):
        assert_error(response, 422, "invalid_target")


async def test_a_tampered_or_missing_model_file_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_app(data) as harness:
        tampered = register(harness, "churn", 1)
        gone = register(harness, "churn", 2)
    # another process (a fresh registry, nothing loaded) finds the files changed
    file = Path(tampered.file)
    file.write_bytes(file.read_bytes().replace(b'"prior"', b'"prior" ', 1))
    Path(gone.file).unlink()
    async with running_app(data) as harness:
        refused = await harness.client.post(
            f"/v1/models/{tampered.id}/promote", headers=harness.admin
        )
        assert_error(refused, 422, "model_checksum_mismatch")
        absent = await harness.client.post(f"/v1/models/{gone.id}/promote", headers=harness.admin)
        assert_error(absent, 404, "model_file_missing")
        # neither was promoted
        assert harness.services.models.served("churn") is None
        history = await call(harness, "GET", "/v1/models/targets/churn/promotions")
        assert history == {"promotions": []}
        assert (await call(harness, "GET", f"/v1/models/{tampered.id}"))["status"] == "kept"


async def test_keys_and_roles(harness: Harness) -> None:
    version = register(harness, "churn", 1)
    _, secret = harness.services.api_keys.create("reader", "read")
    reader = {"Authorization": f"Bearer {secret}"}
    reads = [
        "/v1/models",
        f"/v1/models/{version.id}",
        "/v1/models/targets/churn/promotions",
    ]
    for path in reads:
        assert (await harness.client.get(path, headers=reader)).status_code == 200, path
        assert_error(await harness.client.get(path), 401, "missing_api_key")
        bad = {"Authorization": "Bearer pk_nope"}
        assert_error(await harness.client.get(path, headers=bad), 401, "invalid_api_key")
    writes = [f"/v1/models/{version.id}/promote", "/v1/models/targets/churn/rollback"]
    for path in writes:
        assert_error(await harness.client.post(path), 401, "missing_api_key")
        assert_error(await harness.client.post(path, headers=reader), 403, "forbidden")
    assert harness.services.models.served("churn") is None


async def test_bad_path_parameters_are_400s(harness: Harness) -> None:
    for path in ("/v1/models/0", f"/v1/models/{2**31}"):
        response = await harness.client.get(path, headers=harness.admin)
        error = assert_error(response, 400, "invalid_parameter")
        assert error["details"] == {"parameter": "model_id"}
    long = await harness.client.get(
        "/v1/models/targets/" + "x" * 300 + "/promotions", headers=harness.admin
    )
    assert assert_error(long, 400, "invalid_parameter")["details"] == {"parameter": "target"}


async def test_the_routes_are_in_the_openapi_document(harness: Harness) -> None:
    document = (await harness.client.get("/openapi.json")).json()
    paths = document["paths"]
    expected = {
        ("/v1/models", "get"): {"200", "422"},
        ("/v1/models/{model_id}", "get"): {"200", "404"},
        ("/v1/models/{model_id}/promote", "post"): {"200", "404", "422"},
        ("/v1/models/targets/{target}/rollback", "post"): {"200", "404", "409", "422"},
        ("/v1/models/targets/{target}/promotions", "get"): {"200", "422"},
        ("/v1/models/targets/{target}/monitoring", "get"): {"200", "422"},
    }
    for (path, method), statuses in expected.items():
        operation = paths[path][method]
        assert operation["summary"] and operation["description"], path
        assert operation["tags"] == ["models"]
        scope = operation["x-personify-scope"]
        assert scope in ("models:read", "models:write")
        assert operation["security"] == [{"apiKey": [scope]}]
        assert statuses | {"400", "401", "403", "503"} <= set(operation["responses"]), path
        assert "$ref" in operation["responses"]["200"]["content"]["application/json"]["schema"]
    models = {path for path in paths if path.startswith("/v1/models")}
    assert models == {path for path, _ in expected}
    detail = document["components"]["schemas"]["ModelVersionDetail"]["properties"]
    assert {"report", "features", "file", "served", "sha256"} <= set(detail)
    assert all(field.get("description") for field in detail.values())


async def test_monitoring_lists_a_targets_checks_newest_first(harness: Harness) -> None:
    empty = await harness.client.get("/v1/models/targets/churn/monitoring", headers=harness.admin)
    assert empty.status_code == 200 and empty.json() == {"checks": []}
    bad = await harness.client.get("/v1/models/targets/ltv/monitoring", headers=harness.admin)
    assert_error(bad, 422, "invalid_target")

"""GET /metrics through the real app: the served models' health in Prometheus' text format,
read from the monitoring checks kept in the state database, behind the API key guard."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from personify.api.app import create_app
from personify.predict.trainer import monitoring_reference
from personify.runtime import Runtime
from tests.conftest import make_settings
from tests.predict.test_stage import churn_model


class Scraper:
    def __init__(self, services: Runtime, client: httpx.AsyncClient, key: str) -> None:
        self.services = services
        self.client = client
        self.headers = {"Authorization": f"Bearer {key}"}

    async def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = await self.client.get("/metrics", headers=self.headers)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }


@pytest.fixture
async def scraper(tmp_path: Path) -> AsyncIterator[Scraper]:
    settings = make_settings(tmp_path / "data", run_worker=False, run_lake_sink=False)
    services = Runtime.build(settings)
    app = create_app(settings, services=services)
    await services.start()
    _, key = services.api_keys.create("prometheus", "read")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield Scraper(services, client, key)
    await services.close()


async def send(scraper: Scraper, user: str, count: int) -> None:
    services = scraper.services
    _, write_key = services.sources.create(f"web-{user}")
    now = datetime.now(UTC)
    events: list[dict[str, Any]] = [
        {
            "type": "track",
            "userId": user,
            "event": "Product Viewed",
            "messageId": f"{user}-{i}",
            "timestamp": (now - timedelta(minutes=i)).isoformat().replace("+00:00", "Z"),
        }
        for i in range(count)
    ]
    response = await scraper.client.post("/v1/batch", json={"batch": events}, auth=(write_key, ""))
    assert response.status_code == 200, response.text
    await services.worker.run(until_idle=True)


async def test_metrics_need_a_key(scraper: Scraper) -> None:
    response = await scraper.client.get("/metrics")
    assert response.status_code == 401


async def test_nothing_served_gives_empty_families(scraper: Scraper) -> None:
    samples = await scraper.samples()
    assert not [name for name, _ in samples if name.startswith("personify_prediction")]


async def test_the_served_models_health_is_reported_from_the_newest_check(
    scraper: Scraper,
) -> None:
    services = scraper.services
    model = churn_model(falling=True)
    # trained on very active users: the two-event users scored now have drifted
    trained_on = np.column_stack([np.arange(300) % 11 + 30.0, np.zeros(300)])
    version = services.models.register(
        model,
        as_of=datetime.now(UTC),
        definitions="test",
        lineage_id=None,
        report={
            "kind": "churn",
            "model": {"roc_auc": 0.81},
            "monitoring": monitoring_reference(model, trained_on, trained_on),
        },
        status="kept",
    )
    services.models.promote(version.id)
    for number in range(5):
        await send(scraper, f"u{number}", 2)
    [check] = services.model_monitor.check()
    samples = await scraper.samples()
    churn = (("target", "churn"),)
    assert samples[("personify_prediction_served_version", churn)] == 1
    assert samples[
        ("personify_prediction_validation", (("metric", "roc_auc"), ("target", "churn")))
    ] == pytest.approx(0.81)
    psi = samples[
        ("personify_prediction_feature_psi", (("feature", "events_total"), ("target", "churn")))
    ]
    assert psi == pytest.approx(check["featureDrift"]["events_total"]) and psi > 0.25
    assert samples[("personify_prediction_score_psi", churn)] == pytest.approx(
        check["scoreDrift"]["psi"]
    )
    drift = (("kind", "feature_drift"), ("target", "churn"))
    assert samples[("personify_prediction_alerts", drift)] >= 1
    assert (
        samples[("personify_prediction_alerts", (("kind", "realised_auc"), ("target", "churn")))]
        == 0
    )
    checked = samples[("personify_prediction_checked_timestamp_seconds", churn)]
    assert abs(checked - datetime.now(UTC).timestamp()) < 120

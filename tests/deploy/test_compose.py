"""``deploy/compose.yaml`` is valid and wires what Personify needs.

Where the Docker CLI has its compose plugin, ``docker compose config`` validates the file.
Everywhere, the file (interpolated as compose does) goes through the ``compose-spec``
parser, which rejects anything the Compose specification does not define, and then through
checks of our own: every ``PERSONIFY_`` variable is a real setting, every reference
(``depends_on``, named volumes, mounted files) points at something that exists, and the
topology is the scaled-out one of docs/deploy.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_spec import PyCompose

from personify.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
# what an operator exports before `docker compose up` (docs/deploy.md)
REQUIRED_ENV = {
    "PERSONIFY_PII_HASH_KEY": "0" * 64,
    "POSTGRES_PASSWORD": "test-password",
    "GRAFANA_ADMIN_PASSWORD": "test-password",
}
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` substitution."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name)
        if op and op.endswith("?") and not value:
            raise AssertionError(f"${{{name}}} is required: {arg}")
        if op and op.endswith("-") and not value:
            return arg
        return value or ""

    return _VARIABLE.sub(substitute, text)


def load(env: dict[str, str] | None = None) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(
        interpolate(COMPOSE.read_text(), REQUIRED_ENV if env is None else env)
    )
    return document


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = load()["services"]
    return found


def personify_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in services().items()
        if str(service.get("image", "")).startswith("personify")
    }


def test_the_compose_specification_accepts_it() -> None:
    compose = PyCompose.from_json(json.dumps(load()))
    compose.validate()
    assert set(compose.service_names()) >= {"api", "worker", "postgres", "redpanda"}


def test_docker_compose_config_accepts_it(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI (the compose-spec check above stands in)")
    plugin = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
    if plugin.returncode != 0:
        pytest.skip("the docker CLI has no compose plugin (the compose-spec check stands in)")
    done = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
        env={**os.environ, **REQUIRED_ENV},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_secrets_are_required_not_defaulted() -> None:
    for name in REQUIRED_ENV:
        with pytest.raises(AssertionError, match=name):
            load({k: v for k, v in REQUIRED_ENV.items() if k != name})


def test_every_personify_variable_is_a_setting() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    found = 0
    for name, service in personify_services().items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), name
        for variable in environment:
            assert variable.startswith("PERSONIFY_"), (name, variable)
            assert variable.removeprefix("PERSONIFY_") in fields, (name, variable)
            found += 1
        # and together they make settings that load (production: the PII key is required)
        values = {k.removeprefix("PERSONIFY_").lower(): v for k, v in environment.items()}
        Settings(_env_file=None, **values)
    assert found


def test_the_scaled_out_topology() -> None:
    found = services()
    assert found["api"]["deploy"]["replicas"] == 2
    assert found["worker"]["deploy"]["replicas"] == 2
    api_env = found["api"]["environment"]
    assert api_env["PERSONIFY_EVENTLOG_URL"].startswith("kafka://redpanda:")
    assert api_env["PERSONIFY_EVENTLOG_DEDUPE_URL"].startswith("redis://redis:")
    assert api_env["PERSONIFY_STATE_URL"].startswith("postgresql://")
    assert api_env["PERSONIFY_CACHE_URL"].startswith("redis://redis-cache:")
    assert "--no-worker" in found["api"]["command"]
    assert found["worker"]["command"] == ["worker"]
    assert found["lake-sink"]["command"] == ["lake", "sink"]
    # the lake has one writer: the workers leave it to the lake-sink service
    assert api_env["PERSONIFY_RUN_LAKE_SINK"] == "false"
    for name in ("postgres", "redis", "redis-cache", "redpanda", "prometheus", "grafana"):
        assert name in found, name


def test_references_point_at_what_exists() -> None:
    document = load()
    found = document["services"]
    declared_volumes = set(document.get("volumes", {}))
    for name, service in found.items():
        assert "image" in service or "build" in service, name
        depends = service.get("depends_on", {})
        for target in depends if isinstance(depends, list) else depends.keys():
            assert target in found, (name, target)
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith((".", "/")):
                # files of this repository; alerts.yml and the dashboard come with metrics
                path = (DEPLOY / source).resolve()
                assert path.is_relative_to(ROOT), (name, mount)
                if path.name not in ("alerts.yml", "personify.json"):
                    assert path.exists(), (name, mount)
            else:
                assert source in declared_volumes, (name, mount)


def test_health_checks() -> None:
    found = services()
    for engine in ("postgres", "redis", "redis-cache", "redpanda"):
        assert found[engine]["healthcheck"]["test"], engine
    for name, service in personify_services().items():
        if name == "api":
            # the image's HEALTHCHECK (GET /healthz) applies; the proxy waits for it
            assert "healthcheck" not in service
        else:
            # no HTTP server in these processes
            assert service["healthcheck"] == {"disable": True}, name
    assert found["proxy"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    # the key file the metrics-key service writes, here in the test's folder
    key = tmp_path / "metrics.key"
    key.write_text("pk_test\n")
    text = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert "/etc/prometheus/secrets/metrics.key" in text
    (tmp_path / "prometheus.yml").write_text(
        text.replace("/etc/prometheus/secrets/metrics.key", str(key))
    )
    # the rules beside it, as the compose file mounts them (their own test checks them)
    rules = DEPLOY / "prometheus" / "alerts.yml"
    if rules.exists():
        shutil.copy(rules, tmp_path / "alerts.yml")
    else:
        (tmp_path / "alerts.yml").write_text("groups: []\n")
    done = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    api = next(job for job in config["scrape_configs"] if job["job_name"] == "personify-api")
    assert api["dns_sd_configs"][0]["names"] == ["api"]

"""The ``Dockerfile``: multi-stage, compiled in a builder, run as an unprivileged user with
a health check on ``/healthz``, and every ``PERSONIFY_`` variable it sets a real setting."""

from __future__ import annotations

import re
from pathlib import Path

from personify.settings import Settings

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def test_multi_stage_with_a_builder_that_compiles() -> None:
    built = stages()
    names = [stage[0][1].split()[-1] for stage in built]
    assert "builder" in names and names[-1] == "runtime"
    builder = " ".join(rest for _, rest in built[names.index("builder")])
    assert "build-essential" in builder and "pip wheel" in builder
    # the image refuses to build without the compiled ingest path
    assert "_wire_native" in builder
    runtime = " ".join(rest for _, rest in built[-1])
    assert "build-essential" not in runtime
    assert "from=builder" in runtime


def test_runs_as_an_unprivileged_user() -> None:
    runtime = stages()[-1]
    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # the last USER comes before the process starts
    keywords = [keyword for keyword, _ in runtime]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")


def test_health_check_is_liveness() -> None:
    checks = [rest for keyword, rest in stages()[-1] if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/healthz" in checks[0] and "CMD" in checks[0]


def test_environment_names_real_settings() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    variables = []
    for keyword, rest in stages()[-1]:
        if keyword == "ENV":
            variables += re.findall(r"([A-Z_][A-Z0-9_]*)=", rest)
    personify = [v for v in variables if v.startswith("PERSONIFY_")]
    assert "PERSONIFY_HOST" in personify and "PERSONIFY_LOG_FORMAT" in personify
    for variable in personify:
        assert variable.removeprefix("PERSONIFY_") in fields, variable

"""The command line run in-process with click's runner, on a temporary data folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from personify.cli.main import main

Invoke = Callable[..., Result]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def run(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    # the CLI reads .env from the working directory; run it where there is none
    monkeypatch.chdir(data_dir.parent)
    env = {
        "PERSONIFY_DATA_DIR": str(data_dir),
        "PERSONIFY_PII_HASH_KEY": "x",
        "PERSONIFY_ENVIRONMENT": "test",
    }

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    return invoke


def ok(result: Result) -> str:
    """The output of a command that must have succeeded."""
    assert result.exit_code == 0, result.output
    return result.output

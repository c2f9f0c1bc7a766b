"""What every command shares: the settings (read once), errors as one line, JSON output."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import msgspec

from personify.errors import PersonifyError
from personify.settings import Settings


class CliContext:
    """The settings of one command line run, read from the environment on first use."""

    def __init__(self) -> None:
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        """The settings (``PERSONIFY_*`` variables, ``.env``)."""
        if self._settings is None:
            self._settings = Settings()
        return self._settings

    @classmethod
    def current(cls) -> CliContext:
        """The context of the command being run."""
        return click.get_current_context().find_root().ensure_object(cls)


pass_ctx = click.make_pass_decorator(CliContext, ensure=True)


class PersonifyGroup(click.Group):
    """Turns a ``PersonifyError`` into a one-line message and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PersonifyError as error:
            click.echo(f"error [{error.code}]: {error.message}", err=True)
            sys.exit(1)


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON."""
    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def read_json(value: str) -> Any:
    """A command's JSON argument: the text itself, ``@FILE`` holding it, or ``-`` for
    standard input (a ``click.BadParameter`` saying what is wrong otherwise)."""
    if value == "-":
        text = sys.stdin.read()
    elif value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value[1:]}: {exc}") from exc
    else:
        text = value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from exc


def parse_moment(text: str) -> datetime:
    """An ISO-8601 date or timestamp from the command line, as aware UTC."""
    from personify.events.normalize import parse_timestamp

    return parse_timestamp("time", text if "T" in text or " " in text else text + "T00:00:00Z")

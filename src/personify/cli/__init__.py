"""The ``personify`` command line."""

from __future__ import annotations

from personify.cli.main import main

__all__ = ["main"]

"""Personify: a self-hosted, real-time content personalization engine.

The public surface is small on purpose: the client (``personify.Client``), the settings, the
error tree and the version. Everything else is reached through its package
(``personify.eventlog``, ``personify.ingest``…).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from personify.errors import (
    BackendUnavailable,
    ConfigurationError,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PersonifyError,
    Unauthorized,
    UnsupportedMediaType,
    ValidationError,
)
from personify.settings import Settings

if TYPE_CHECKING:
    from personify.client import Client

try:
    __version__ = version("personify")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"


def __getattr__(name: str) -> Any:
    """``personify.Client``, imported on first use: it pulls in httpx, which the server's
    processes (they import ``personify`` too) do not need at start-up."""
    if name == "Client":
        from personify.client import Client

        return Client
    raise AttributeError(f"module 'personify' has no attribute {name!r}")


__all__ = [
    "BackendUnavailable",
    "Client",
    "ConfigurationError",
    "Conflict",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "PersonifyError",
    "Settings",
    "Unauthorized",
    "UnsupportedMediaType",
    "ValidationError",
    "__version__",
]

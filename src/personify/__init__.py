"""Personify: a self-hosted, real-time content personalization engine.

The public surface is small on purpose: the settings, the error tree and the version.
Everything else is reached through its package (``personify.eventlog``, ``personify.ingest``…).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

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

try:
    __version__ = version("personify")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = [
    "BackendUnavailable",
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

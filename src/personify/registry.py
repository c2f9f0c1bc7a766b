"""The one place where a backend URL picks an adapter. Adapters are imported lazily."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from personify.errors import ConfigurationError

# scheme -> "module:Class"; each class has ``from_url(url, settings)``.
EVENTLOG_ADAPTERS: dict[str, str] = {
    "sqlite": "personify.eventlog.sqlite:SQLiteEventLog",
    "redis": "personify.eventlog.redis:RedisEventLog",
    "kafka": "personify.eventlog.kafka:KafkaEventLog",
}

CACHE_ADAPTERS: dict[str, str] = {
    "memory": "personify.cache.memory:MemoryCache",
    "redis": "personify.cache.redis:RedisCache",
}

# the extra that brings each optional engine, for the error message
_EXTRAS = {"redis": "redis", "kafka": "kafka", "postgresql": "postgres"}


def scheme_of(url: str) -> str:
    """The URL's scheme without a driver suffix (``postgresql+psycopg`` -> ``postgresql``)."""
    return urlsplit(url).scheme.split("+", 1)[0]


def load_adapter(table: dict[str, str], url: str, port: str) -> Any:
    """Import and return the adapter class registered for ``url``'s scheme."""
    scheme = scheme_of(url)
    target = table.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(table))
        raise ConfigurationError(
            f"no {port} backend for {scheme or 'an empty'}:// URL {url!r}; use one of {known}",
            code="unknown_backend",
        )
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get(scheme, scheme)
        raise ConfigurationError(
            f"the {scheme}:// {port} needs the {exc.name!r} package: "
            f"pip install 'personify[{extra}]'",
            code="missing_extra",
        ) from exc
    return getattr(module, class_name)

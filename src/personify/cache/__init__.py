"""The online cache port: a ``Cache`` protocol and one module per backend."""

from __future__ import annotations

from personify.cache.base import Cache, open_cache

__all__ = ["Cache", "open_cache"]

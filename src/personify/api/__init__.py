"""The ASGI application that mounts every router."""

from __future__ import annotations

from personify.api.app import create_app

__all__ = ["create_app"]

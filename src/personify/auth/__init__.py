"""API keys and roles for the admin API."""

from __future__ import annotations

from personify.auth.keys import ROLES, ApiKey, ApiKeyRepository

__all__ = ["ROLES", "ApiKey", "ApiKeyRepository"]

"""The consent rule: may this profile be used for personalization?

The rule (documented in docs/profiles.md): the latest event, by event time, that carries
``context.consent.categoryPreferences`` decides. Personalization is denied when that object
sets any of the configured categories (``consent_categories`` in the features file, by
default ``personalization`` and ``personalisation``, compared case-insensitively) to
``false``. A profile that never stated a preference is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def consent_preferences(data: Mapping[str, Any]) -> dict[str, bool] | None:
    """The event's ``context.consent.categoryPreferences`` (boolean entries only), if any."""
    context = data.get("context")
    if type(context) is not dict:
        return None
    consent = context.get("consent")
    if type(consent) is not dict:
        return None
    preferences = consent.get("categoryPreferences")
    if type(preferences) is not dict:
        return None
    return {str(k): v for k, v in preferences.items() if isinstance(v, bool)}


def is_personalization_allowed(
    preferences: Mapping[str, Any] | None, categories: frozenset[str]
) -> bool:
    """False when the preferences deny one of ``categories`` (lower-case names)."""
    if not preferences:
        return True
    return not any(
        value is False and name.strip().lower() in categories for name, value in preferences.items()
    )

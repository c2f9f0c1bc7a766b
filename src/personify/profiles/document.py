"""The profile as the API shows it: ids, traits, features evaluated at a time, consent."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from personify.profiles.consent import is_personalization_allowed
from personify.profiles.events import format_ms
from personify.profiles.features import FeatureSet
from personify.profiles.state import ProfileState, evaluate_profile


def personalization_allowed(state: ProfileState, features: FeatureSet) -> bool:
    """The consent flag later stages read: ``False`` means treat this user as anonymous."""
    preferences = state.consent.value if state.consent else None
    return is_personalization_allowed(preferences, features.consent_categories)


def present_profile(
    profile_id: str,
    state: ProfileState,
    features: FeatureSet,
    *,
    as_of_ms: int,
    version: int | None,
    created_at: datetime | None,
    updated_at: datetime | None,
) -> dict[str, Any]:
    """The JSON document of ``GET /v1/profiles/{id}`` (windows relative to ``as_of_ms``)."""
    consent = state.consent
    return {
        "profileId": profile_id,
        "ids": {
            "userIds": sorted(state.user_ids),
            "anonymousIds": sorted(state.anonymous_ids),
            "previousIds": sorted(state.previous_ids),
        },
        "traits": {k: s.value for k, s in sorted(state.traits.items()) if s.value is not None},
        "groups": {
            group_id: {k: s.value for k, s in sorted(traits.items()) if s.value is not None}
            for group_id, traits in sorted(state.groups.items())
        },
        "features": evaluate_profile(state, features, as_of_ms),
        "consent": {
            "personalizationAllowed": personalization_allowed(state, features),
            "categoryPreferences": consent.value if consent else None,
            "updatedAt": format_ms(consent.ts) if consent else None,
        },
        "version": version,
        "createdAt": created_at.isoformat() if created_at else None,
        "lastUpdated": updated_at.isoformat() if updated_at else None,
        "asOf": format_ms(as_of_ms),
    }

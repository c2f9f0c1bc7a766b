"""The event contract: Segment's spec, validation, normalisation, PII hashing, consent."""

from __future__ import annotations

from personify.events.hashing import PiiHasher
from personify.events.normalize import EVENT_TYPES, Normalizer, partition_key

__all__ = ["EVENT_TYPES", "Normalizer", "PiiHasher", "partition_key"]

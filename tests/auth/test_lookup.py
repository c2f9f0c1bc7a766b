"""The cache of key lookups: bounded, flood-proof, and never holding an answer from before a
revocation."""

from __future__ import annotations

import time

from personify.auth.lookup import ExpiringLookup
from personify.auth.secrets import hash_secret


def test_a_full_cache_drops_unknown_keys_before_known_ones() -> None:
    lookup: ExpiringLookup[str] = ExpiringLookup(600.0, max_entries=100)
    lookup.put(hash_secret("good"), "source")
    for i in range(1000):
        lookup.put(hash_secret(f"junk-{i}"), None)
        assert len(lookup) <= 100
    assert lookup.get(hash_secret("good")) == (True, "source")


def test_a_cache_full_of_known_keys_starts_over() -> None:
    lookup: ExpiringLookup[int] = ExpiringLookup(600.0, max_entries=10)
    for i in range(25):
        lookup.put(hash_secret(str(i)), i)
        assert len(lookup) <= 10
    assert lookup.get(hash_secret("24")) == (True, 24)


def test_expired_entries_are_misses_and_go_first() -> None:
    lookup: ExpiringLookup[int] = ExpiringLookup(0.01, max_entries=3)
    lookup.put("a", 1)
    time.sleep(0.02)
    assert lookup.get("a") == (False, None)
    lookup.put("b", 2)
    lookup.put("c", 3)
    lookup.put("d", 4)  # full: the expired "a" goes, the live ones stay
    assert len(lookup) == 3


def test_an_answer_looked_up_before_a_clear_is_not_kept() -> None:
    lookup: ExpiringLookup[str] = ExpiringLookup(600.0)
    started = lookup.generation
    lookup.clear()  # a revocation while the lookup was under way
    lookup.put("k", "active source", generation=started)
    assert lookup.get("k") == (False, None)
    lookup.put("k", None, generation=lookup.generation)
    assert lookup.get("k") == (True, None)


def test_forget_drops_one_entry() -> None:
    lookup: ExpiringLookup[int] = ExpiringLookup(600.0)
    lookup.put("a", 1)
    lookup.put("b", 2)
    lookup.forget("a")
    lookup.forget("missing")
    assert lookup.get("a") == (False, None)
    assert lookup.get("b") == (True, 2)

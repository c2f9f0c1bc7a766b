"""Versions as JSON diffs of the stored state, and replaying them.

A diff is ``{"set": [[path, value], …], "unset": [path, …]}`` where a path is the list of
keys from the state's root. Dicts are compared key by key, recursing only where they
differ (the equality test itself runs in C), so a diff names exactly the buckets, traits
and sessions that an update touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Diff = dict[str, list[Any]]


def diff_documents(old: Mapping[str, Any], new: Mapping[str, Any]) -> Diff:
    """What turns ``old`` into ``new`` (both JSON objects)."""
    sets: list[Any] = []
    unsets: list[Any] = []
    _diff(old, new, [], sets, unsets)
    return {"set": sets, "unset": unsets}


def _diff(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    path: list[str],
    sets: list[Any],
    unsets: list[Any],
) -> None:
    for key, value in new.items():
        before = old.get(key, _MISSING)
        if before is _MISSING:
            sets.append([[*path, key], value])
        elif before != value:
            if isinstance(before, dict) and isinstance(value, dict):
                _diff(before, value, [*path, key], sets, unsets)
            else:
                sets.append([[*path, key], value])
    for key in old:
        if key not in new:
            unsets.append([*path, key])


_MISSING = object()


def apply_diff(document: dict[str, Any], diff: Mapping[str, list[Any]]) -> None:
    """Apply a diff made by ``diff_documents`` to ``document`` in place."""
    for path, value in diff.get("set", []):
        target = document
        for key in path[:-1]:
            child = target.get(key)
            if not isinstance(child, dict):
                child = target[key] = {}
            target = child
        target[path[-1]] = value
    for path in diff.get("unset", []):
        target = document
        for key in path[:-1]:
            child = target.get(key)
            if not isinstance(child, dict):
                break
            target = child
        else:
            target.pop(path[-1], None)


def changed_sections(diff: Mapping[str, list[Any]]) -> list[str]:
    """The top-level parts of the state a diff touches (for a readable history)."""
    names = {path[0] for path, _ in diff.get("set", []) if path}
    names.update(path[0] for path in diff.get("unset", []) if path)
    return sorted(names)

"""The identity graph's rules: which ids belong together, and which id names the profile.

Ids that appear together on one event (``userId`` and ``anonymousId``; an alias's
``previousId`` and its ``userId``/``anonymousId``) belong to one person. The canonical
profile id of a connected set of ids is a function of that set alone — the smallest
``userId`` if there is one, else the smallest other id — so the order in which links
arrive can never change which id names the merged profile.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

_T = TypeVar("_T", bound=Hashable)


def canonical_id(user_ids: Iterable[str], other_ids: Iterable[str]) -> str:
    """The profile id of a set of linked ids: prefer a userId, then the smallest string."""
    users = sorted(user_ids)
    if users:
        return users[0]
    others = sorted(other_ids)
    if not others:
        raise ValueError("a profile needs at least one id")
    return others[0]


class UnionFind(Generic[_T]):
    """Disjoint sets with path halving (Tarjan 1975), to group a batch's linked ids."""

    def __init__(self) -> None:
        self._parent: dict[_T, _T] = {}

    def find(self, item: _T) -> _T:
        """The representative of ``item``'s set (adding it as a singleton if new)."""
        parent = self._parent
        if item not in parent:
            parent[item] = item
            return item
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(self, a: _T, b: _T) -> None:
        """Join the sets of ``a`` and ``b``."""
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[rb] = ra

    def groups(self) -> dict[_T, list[_T]]:
        """Every set, keyed by its representative."""
        result: dict[_T, list[_T]] = {}
        for item in self._parent:
            result.setdefault(self.find(item), []).append(item)
        return result

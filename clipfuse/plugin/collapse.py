"""Pure variant collapse: one hit per group value, the group's other documents as its variants.

Applied to the whole ranked window before paging, so a page of 24 shows 24
distinct products. A group is represented by its best-ranked document (the hit);
its other documents in the window become the hit's variants, in rank order. A
document without a value for the field (or with a list of several values, which
names no single group) stands alone. A pinned document is its group's
representative wherever the best variant ranked.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clipfuse.plugin.ranking import Candidate

__all__ = ["Group", "collapse", "group_key", "singletons"]


@dataclass(slots=True)
class Group:
    """A hit of the collapsed ranking: the representative document and the group's other documents."""

    head: Candidate
    key: str | None = None
    variants: list[Candidate] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [self.head.id, *(v.id for v in self.variants)]


def group_key(value: Any) -> str | None:
    """The group a payload value names: a non-empty keyword (a one-item list counts), else None."""
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    return text if text else None


def singletons(ranking: Sequence[Candidate]) -> list[Group]:
    """The ranking as groups of one (no collapse)."""
    return [Group(head=c) for c in ranking]


def collapse(
    ranking: Sequence[Candidate],
    payloads: Mapping[str, Mapping[str, Any]],
    field_name: str,
    *,
    heads: Collection[str] = (),
) -> list[Group]:
    """Collapse ``ranking`` (best first) by the keyword ``field_name`` of each document's payload.

    Groups are ordered by their best document; ``heads`` (pinned ids) represent their
    group even when another variant ranks higher. All variants are kept here; the
    response lists at most ``max_variants`` of them.
    """
    groups: list[Group] = []
    by_key: dict[str, Group] = {}
    preferred = {key: doc for doc in heads if (key := group_key(payloads.get(doc, {}).get(field_name))) is not None}
    for candidate in ranking:
        key = group_key(payloads.get(candidate.id, {}).get(field_name))
        if key is None:
            groups.append(Group(head=candidate))
            continue
        group = by_key.get(key)
        if group is None:
            group = Group(head=candidate, key=key)
            by_key[key] = group
            groups.append(group)
        else:
            group.variants.append(candidate)
    for key, doc in preferred.items():
        group = by_key.get(key)
        if group is None or group.head.id == doc:
            continue
        for i, variant in enumerate(group.variants):
            if variant.id == doc:
                group.variants[i] = group.head
                group.head = variant
                group.variants.sort(key=lambda c: _position(ranking, c.id))
                break
    return groups


def _position(ranking: Sequence[Candidate], doc: str) -> int:
    for i, c in enumerate(ranking):
        if c.id == doc:
            return i
    return len(ranking)

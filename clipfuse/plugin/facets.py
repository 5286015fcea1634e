"""Pure facet counting over a named set of documents (the window, or every filtered match).

Keyword and bool fields give ``value -> count``, most frequent first (equal counts:
values in string order), at most ``max_values``. Number fields give
``count / min / max / avg / sum`` over the documents that have a value. A list
attribute (``sizes: ["38", "39"]``) counts each of its values once per document.

``groups``: count groups instead of documents: a value counts once per group that
has it in any of its documents (a product in red and blue counts once for red and
once for blue); number stats stay over documents. Bool values are the keys
``"true"`` / ``"false"``; numbers on a keyword field are their text (``38``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from clipfuse.plugin.collapse import group_key
from clipfuse.schemas import FieldType
from clipfuse.schemas.search import FacetStats

__all__ = [
    "FacetField",
    "FacetValue",
    "FieldValues",
    "count_facets",
    "count_payloads",
    "facet_key",
    "field_values_from_payloads",
]


class FacetValue(BaseModel):
    value: str | float | bool
    count: int


class FacetField(BaseModel):
    name: str
    type: FieldType
    #: keyword / bool fields: the most frequent values, most frequent first
    values: list[FacetValue] = []
    #: number fields: the smallest and largest value seen
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True)
class FieldValues:
    """An index's values of its filterable fields (for the web page's filter controls)."""

    fields: list[FacetField]
    #: how they were found: the engine's facet counts / aggregations, a sample of documents, or not at all
    source: Literal["engine", "sample", "none"]
    #: documents read when sampled
    sampled: int | None = None

    @classmethod
    def types_only(cls, fields: Mapping[str, FieldType]) -> FieldValues:
        return cls([FacetField(name=k, type=v) for k, v in sorted(fields.items())], "none", None)


def field_values_from_payloads(
    payloads: Iterable[Mapping[str, Any]], fields: Mapping[str, FieldType], max_values: int
) -> FieldValues:
    """:class:`FieldValues` of a sample of payloads (source ``"sample"``)."""
    counters: dict[str, Counter[Any]] = {k: Counter() for k in fields}
    ranges: dict[str, list[float]] = {}
    seen = 0
    for payload in payloads:
        seen += 1
        for name, kind in fields.items():
            for item in _items(payload.get(name)):
                if kind == "number":
                    if isinstance(item, (int, float)) and not isinstance(item, bool):
                        lo_hi = ranges.setdefault(name, [float(item), float(item)])
                        lo_hi[0] = min(lo_hi[0], float(item))
                        lo_hi[1] = max(lo_hi[1], float(item))
                elif kind == "bool":
                    if isinstance(item, bool):
                        counters[name][item] += 1
                else:
                    counters[name][str(item)] += 1
    out = []
    for name, kind in sorted(fields.items()):
        if kind == "number":
            lo, hi = ranges.get(name, [None, None])
            out.append(FacetField(name=name, type=kind, min=lo, max=hi))
        else:
            values = [FacetValue(value=v, count=c) for v, c in counters[name].most_common(max_values)]
            out.append(FacetField(name=name, type=kind, values=values))
    return FieldValues(out, "sample", seen)


def facet_key(value: Any, kind: FieldType) -> str | None:
    """The key a payload item counts under, or None if it is not a value of that field type."""
    if kind == "bool":
        return ("true" if value else "false") if isinstance(value, bool) else None
    if kind == "keyword":
        if isinstance(value, bool) or value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value)
    return None


def _items(value: Any) -> list[Any]:
    return [] if value is None else (value if isinstance(value, list) else [value])


def count_facets(
    members: Sequence[Sequence[Mapping[str, Any]]],
    fields: Mapping[str, FieldType],
    *,
    max_values: int,
) -> tuple[dict[str, dict[str, int]], dict[str, FacetStats]]:
    """Facet counts over ``members``: one entry per counted unit (a document, or a group's documents).

    Each unit counts a value at most once, however many of its documents (or list
    items) carry it. Returns ``(facets, facets_stats)``.
    """
    facets: dict[str, dict[str, int]] = {}
    stats: dict[str, FacetStats] = {}
    for name, kind in fields.items():
        if kind == "number":
            values: list[float] = []
            for unit in members:
                for payload in unit:
                    seen: set[float] = set()
                    for item in _items(payload.get(name)):
                        if isinstance(item, bool) or not isinstance(item, (int, float)):
                            continue
                        number = float(item)
                        if math.isfinite(number) and number not in seen:
                            seen.add(number)
                            values.append(number)
            if values:
                total = math.fsum(values)
                stats[name] = FacetStats(
                    count=len(values), min=min(values), max=max(values), avg=total / len(values), sum=total
                )
            continue
        counter: Counter[str] = Counter()
        for unit in members:
            keys: set[str] = set()
            for payload in unit:
                for item in _items(payload.get(name)):
                    key = facet_key(item, kind)
                    if key is not None:
                        keys.add(key)
            counter.update(keys)
        ordered = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:max_values]
        facets[name] = dict(ordered)
    return facets, stats


def count_payloads(
    payloads: Iterable[Mapping[str, Any]],
    fields: Mapping[str, FieldType],
    *,
    max_values: int,
    group_by: str | None = None,
) -> tuple[dict[str, dict[str, int]], dict[str, FacetStats], int]:
    """:func:`count_facets` over a set of documents' payloads, grouped by ``group_by`` when given
    (a document without a group value stands alone). Returns ``(facets, stats, units counted)``."""
    units: dict[Any, list[Mapping[str, Any]]] = {}
    for position, payload in enumerate(payloads):
        key = group_key(payload.get(group_by)) if group_by is not None else None
        units.setdefault(("group", key) if key is not None else ("doc", position), []).append(payload)
    facets, stats = count_facets(list(units.values()), fields, max_values=max_values)
    return facets, stats, len(units)

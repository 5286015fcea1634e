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
from collections.abc import Mapping, Sequence
from typing import Any

from clipfuse.schemas import FieldType
from clipfuse.schemas.search import FacetStats

__all__ = ["count_facets", "facet_key"]


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

"""The index's filterable fields, with values for the web page's filter controls.

Keyword fields get their most frequent values, number fields their range, bool
fields their counts. Qdrant servers answer with facet counts and ordered scrolls
(the payload indexes clipfuse creates make both cheap); the embedded store and any
failure fall back to a bounded sample of documents. Elasticsearch answers with one
aggregation request. Values are read from the engine with the field name as a key,
never pasted into a query string.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel

from clipfuse.plugin.protocol import Backend
from clipfuse.schemas import FieldType

__all__ = ["FacetField", "FacetValue", "Facets", "compute_facets"]

log = logging.getLogger(__name__)


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


class Facets(BaseModel):
    index: str
    model: str | None
    dim: int | None
    documents: int
    fields: list[FacetField]
    #: how the values were found: the engine's facet counts / aggregations ("exact") or a sample of documents
    source: Literal["engine", "sample", "none"]
    sampled: int | None = None


def compute_facets(
    backend: Backend,
    index: str,
    fields: Mapping[str, FieldType],
    *,
    model: str | None,
    dim: int | None,
    sample: int,
    max_values: int,
) -> Facets:
    documents = backend.count()
    name = getattr(backend, "name", "")
    result: tuple[list[FacetField], str, int | None] | None = None
    if fields and name == "qdrant":
        result = _qdrant(backend, fields, sample=sample, max_values=max_values)
    elif fields and name == "qdrant-edge":
        payloads = backend.sample_payloads(list(fields), sample)  # type: ignore[attr-defined]  # EdgeBackend
        facet_fields, seen = _from_payloads(payloads, fields, max_values)
        result = (facet_fields, "sample", seen)
    elif fields and name == "elasticsearch":
        try:
            result = _elasticsearch(backend, fields, max_values=max_values)
        except Exception as e:  # an old cluster or a mapping clipfuse did not make: types only
            log.warning("facet aggregation on Elasticsearch failed: %s", e)
    if result is None:
        result = ([FacetField(name=k, type=v) for k, v in sorted(fields.items())], "none", None)
    facet_fields, source, sampled = result
    return Facets(
        index=index,
        model=model,
        dim=dim,
        documents=documents,
        fields=facet_fields,
        source=source,  # type: ignore[arg-type]
        sampled=sampled,
    )


def _from_payloads(
    payloads: Iterable[Mapping[str, Any]], fields: Mapping[str, FieldType], max_values: int
) -> tuple[list[FacetField], int]:
    counters: dict[str, Counter[Any]] = {k: Counter() for k in fields}
    ranges: dict[str, list[float]] = {}
    seen = 0
    for payload in payloads:
        seen += 1
        for name, kind in fields.items():
            value = payload.get(name)
            if value is None:
                continue
            items = value if isinstance(value, list) else [value]
            for item in items:
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
    return out, seen


def _qdrant(
    backend: Any, fields: Mapping[str, FieldType], *, sample: int, max_values: int
) -> tuple[list[FacetField], str, int | None]:
    client, collection = backend.client, backend.collection
    if not getattr(backend, "is_local", True):
        try:
            return _qdrant_server(client, collection, fields, max_values=max_values), "engine", None
        except Exception as e:  # an old server, or a field without payload index: sample instead
            log.info("Qdrant facets failed (%s); sampling documents instead", e)
    payloads: list[Mapping[str, Any]] = []
    offset = None
    while len(payloads) < sample:
        points, offset = client.scroll(
            collection,
            limit=min(256, sample - len(payloads)),
            offset=offset,
            with_payload=list(fields),
            with_vectors=False,
        )
        payloads.extend(p.payload or {} for p in points)
        if offset is None or not points:
            break
    facet_fields, seen = _from_payloads(payloads, fields, max_values)
    return facet_fields, "sample", seen


def _qdrant_server(
    client: Any, collection: str, fields: Mapping[str, FieldType], *, max_values: int
) -> list[FacetField]:
    from qdrant_client import models

    out = []
    for name, kind in sorted(fields.items()):
        if kind == "number":
            ends = []
            for direction in (models.Direction.ASC, models.Direction.DESC):
                points, _ = client.scroll(
                    collection,
                    limit=1,
                    order_by=models.OrderBy(key=name, direction=direction),
                    with_payload=[name],
                    with_vectors=False,
                )
                value = (points[0].payload or {}).get(name) if points else None
                if isinstance(value, list):
                    value = (min if direction == models.Direction.ASC else max)(value) if value else None
                ends.append(float(value) if isinstance(value, (int, float)) else None)
            out.append(FacetField(name=name, type=kind, min=ends[0], max=ends[1]))
        else:
            response = client.facet(collection, key=name, limit=max_values, exact=False)
            values = [FacetValue(value=hit.value, count=int(hit.count)) for hit in response.hits]
            out.append(FacetField(name=name, type=kind, values=values))
    return out


def _elasticsearch(
    backend: Any, fields: Mapping[str, FieldType], *, max_values: int
) -> tuple[list[FacetField], str, int | None]:
    aggs: dict[str, Any] = {}
    for i, (name, kind) in enumerate(sorted(fields.items())):
        if kind == "number":
            aggs[f"f{i}_min"] = {"min": {"field": name}}
            aggs[f"f{i}_max"] = {"max": {"field": name}}
        else:
            aggs[f"f{i}"] = {"terms": {"field": name, "size": max_values}}
    response = backend.client.search(index=backend.index, size=0, aggs=aggs, track_total_hits=False)
    results = response["aggregations"]
    out = []
    for i, (name, kind) in enumerate(sorted(fields.items())):
        if kind == "number":
            out.append(
                FacetField(
                    name=name,
                    type=kind,
                    min=results[f"f{i}_min"].get("value"),
                    max=results[f"f{i}_max"].get("value"),
                )
            )
        else:
            values = []
            for bucket in results[f"f{i}"]["buckets"]:
                key = bucket.get("key_as_string", bucket["key"]) if kind == "bool" else bucket["key"]
                if kind == "bool":
                    key = key in (True, 1, "true")
                values.append(FacetValue(value=key, count=int(bucket["doc_count"])))
            out.append(FacetField(name=name, type=kind, values=values))
    return out, "engine", None

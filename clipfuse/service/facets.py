"""The index's filterable fields, with values for the web page's filter controls.

Keyword fields get their most frequent values, number fields their range, bool
fields their counts. The backend computes them itself (capability
:class:`~clipfuse.plugin.protocol.Facetable`, behind its own error mapping): Qdrant
servers answer with facet counts and ordered scrolls, the embedded stores with a
bounded sample of documents, Elasticsearch with one aggregation request. A backend
without the capability gives the fields' types only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel

from clipfuse.plugin.facets import FacetField, FacetValue, FieldValues
from clipfuse.plugin.protocol import Backend, Facetable
from clipfuse.schemas import FieldType

__all__ = ["FacetField", "FacetValue", "Facets", "compute_facets"]


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
    if fields and isinstance(backend, Facetable):
        values = backend.field_values(fields, sample=sample, max_values=max_values)
    else:
        values = FieldValues.types_only(fields)
    return Facets(
        index=index,
        model=model,
        dim=dim,
        documents=documents,
        fields=values.fields,
        source=values.source,
        sampled=values.sampled,
    )

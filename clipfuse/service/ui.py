"""What the web search page shows: its facets, the field it collapses on, what a variant swatch carries.

``GET /api/ui`` answers :func:`page_config` so the page (plain JavaScript) asks the
search API for exactly these facets and this collapse, and the operator chooses them
in settings (``CLIPFUSE_SERVICE__UI_FACETS``, ``CLIPFUSE_SERVICE__UI_COLLAPSE_FIELD``).
Without ``ui_facets`` the page offers every number field of the index as a range, and
every keyword and bool field as a checklist except the collapse field, fields whose
values are ISO dates, and fields with ``facet_max_values`` or more distinct values in
the sample ``/api/facets`` reads (a list nobody would tick through).
"""

from __future__ import annotations

from pydantic import BaseModel

from clipfuse.schemas import FieldType
from clipfuse.schemas import limits as L
from clipfuse.schemas.search import parse_date
from clipfuse.service.facets import FacetField, Facets
from clipfuse.settings import ServiceSettings

__all__ = ["PageConfig", "PageFacet", "page_config"]

#: payload fields a variant always carries, so its swatch can show its own photo and title
_VARIANT_TEXTS = ("title", "images")
#: values listed per checklist at most (the most frequent in the results)
_MAX_LISTED = 20


class PageFacet(BaseModel):
    name: str
    type: FieldType


class PageConfig(BaseModel):
    """The web page's facets (in display order), its collapse field, and the fields each variant carries."""

    facets: list[PageFacet]
    #: one card per value of this keyword field (None: one card per document)
    collapse: str | None
    #: ``collapse.fields`` the page asks for: a variant's photo, title and facet values
    variant_fields: list[str]
    #: values asked per keyword facet (``max_values_per_facet``): ``facet_max_values``, at most 20
    max_values_per_facet: int


def _listable(field: FacetField, collapse: str | None, max_values: int) -> bool:
    if field.type == "number":
        return True
    if field.name == collapse or len(field.values) >= max_values:
        return False
    texts = [v.value for v in field.values if isinstance(v.value, str)]
    return not (texts and all(parse_date(t) is not None for t in texts))


def page_config(settings: ServiceSettings, facets: Facets) -> PageConfig:
    """The page's configuration for the index ``facets`` describes (its fields and sampled values)."""
    by_name = {f.name: f for f in facets.fields}
    collapse = settings.ui_collapse_field or None
    if collapse is not None and (collapse not in by_name or by_name[collapse].type != "keyword"):
        collapse = None  # this index has no such group field: one card per document
    if settings.ui_facets is not None:
        chosen = [by_name[name] for name in settings.ui_facets if name in by_name]
    else:
        max_values = settings.facet_max_values
        listable = [f for f in facets.fields if _listable(f, collapse, max_values)]
        chosen = sorted(listable, key=lambda f: (f.type == "number", f.name))  # checklists, then ranges
    chosen = chosen[: L.MAX_FACETS]
    variant_fields = [*_VARIANT_TEXTS, *(f.name for f in chosen if f.name not in _VARIANT_TEXTS)]
    return PageConfig(
        facets=[PageFacet(name=f.name, type=f.type) for f in chosen],
        collapse=collapse,
        variant_fields=variant_fields[: L.MAX_VARIANT_FIELDS],
        max_values_per_facet=min(settings.facet_max_values, _MAX_LISTED),
    )

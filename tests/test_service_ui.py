"""What the web page shows (GET /api/ui): its facets, its collapse field and a variant's fields, from the index."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from clipfuse.schemas import limits as L
from clipfuse.service.facets import FacetField, Facets, FacetValue
from clipfuse.service.ui import page_config
from clipfuse.settings import ServiceSettings, Settings


def _keyword(name: str, *values: str) -> FacetField:
    return FacetField(name=name, type="keyword", values=[FacetValue(value=v, count=2) for v in values])


def _facets(*fields: FacetField) -> Facets:
    return Facets(index="products", model=None, dim=None, documents=100, fields=list(fields), source="sample")


DEMO = _facets(
    _keyword("brand", "Acme", "Orla"),
    _keyword("category", "cap", "scarf"),
    _keyword("created_at", "2025-04-17", "2024-11-02"),
    _keyword("group_id", *(f"g{i:03d}" for i in range(50))),
    _keyword("sku", *(f"s{i:03d}" for i in range(50))),
    FacetField(name="in_stock", type="bool", values=[FacetValue(value=True, count=80)]),
    FacetField(name="popularity", type="number", min=0, max=600),
    FacetField(name="price", type="number", min=10.5, max=314),
)


def test_default_lists_keyword_and_bool_fields_then_ranges_without_groups_dates_or_ids() -> None:
    config = page_config(ServiceSettings(), DEMO)
    assert [(f.name, f.type) for f in config.facets] == [
        ("brand", "keyword"),
        ("category", "keyword"),
        ("in_stock", "bool"),
        ("popularity", "number"),
        ("price", "number"),
    ]
    assert config.collapse == "group_id"
    assert config.variant_fields[:2] == ["title", "images"]
    assert set(config.variant_fields) == {"title", "images", "brand", "category", "in_stock", "popularity", "price"}
    assert config.max_values_per_facet == 20


def test_the_operator_chooses_the_facets_their_order_and_the_collapse_field() -> None:
    settings = ServiceSettings(ui_facets=["price", "sku", "nope", "brand"], ui_collapse_field="")
    config = page_config(settings, DEMO)
    assert [f.name for f in config.facets] == ["price", "sku", "brand"]  # a field the index lacks is left out
    assert config.collapse is None
    assert page_config(ServiceSettings(ui_collapse_field="sku"), DEMO).collapse == "sku"
    # no such keyword field in this index: one card per document
    assert page_config(ServiceSettings(ui_collapse_field="price"), DEMO).collapse is None
    assert page_config(ServiceSettings(ui_collapse_field="colour_group"), DEMO).collapse is None


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPFUSE_SERVICE__UI_FACETS", '["brand", "price"]')
    monkeypatch.setenv("CLIPFUSE_SERVICE__UI_COLLAPSE_FIELD", "")
    service = Settings().service
    assert service.ui_facets == ["brand", "price"] and page_config(service, DEMO).collapse is None
    with pytest.raises(ValidationError):
        ServiceSettings(ui_facets=[f"f{i}" for i in range(L.MAX_FACETS + 1)])

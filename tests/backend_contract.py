"""The contract every backend satisfies, as a mixin of tests.

An engine's test module subclasses :class:`BackendContract` and provides a
``backend`` fixture (an empty, uniquely named index). Vectors here are handmade
unit vectors of dimension 8, so the expected rankings are known exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from clipfuse.errors import ConfigurationError, InvalidQuery
from clipfuse.plugin import Bm25Encoder, HybridSearcher, IndexedDocument
from clipfuse.plugin.protocol import Backend
from clipfuse.schemas import FilterCondition, SearchRequest, Weights

DIM = 8
_BM25 = Bm25Encoder()


def unit(*components: float) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(components)] = components
    return (v / np.linalg.norm(v)).astype(np.float32)


CATALOG: list[dict[str, Any]] = [
    {
        "id": "boot-red",
        "v": unit(1, 0.1),
        "t": "red leather ankle boots",
        "a": {"category": "shoes", "color": "red", "price": 110.0, "in_stock": True},
    },
    {
        "id": "boot-black",
        "v": unit(1, 0.3),
        "t": "black leather ankle boots",
        "a": {"category": "shoes", "color": "black", "price": 130.0, "in_stock": True},
    },
    {
        "id": "sneaker-red",
        "v": unit(0.8, 0.8),
        "t": "red canvas sneakers",
        "a": {"category": "shoes", "color": "red", "price": 60.0, "in_stock": False},
    },
    {
        "id": "bag-red",
        "v": unit(0.1, 1),
        "t": "red leather handbag",
        "a": {"category": "bags", "color": "red", "price": 90.0, "in_stock": True},
    },
    {
        "id": "tee-blue",
        "v": unit(0, 0.1, 1),
        "t": "blue cotton t-shirt",
        "a": {"category": "tops", "color": "blue", "price": 20.0, "in_stock": True, "tags": ["summer", "basic"]},
    },
    {
        "id": "scarf-blue",
        "v": unit(0, 0, 1, 1),
        "t": "blue wool scarf",
        "a": {"category": "accessories", "color": "blue", "price": 35.5, "in_stock": False},
    },
]


def indexed(entry: dict[str, Any], backend: Backend, *, image: np.ndarray | None = None) -> IndexedDocument:
    text = entry["t"]
    return IndexedDocument(
        id=entry["id"],
        payload={"title": text, **entry["a"]},
        image_vector=entry["v"] if image is None else image,
        text_vector=entry["v"],
        sparse=_BM25.encode_documents([text])[0] if backend.lexical == "sparse" else None,
        text=text,
    )


FIELDS = {"category": "keyword", "color": "keyword", "price": "number", "in_stock": "bool", "tags": "keyword"}


class BackendContract:
    """Mix into a test class that defines the ``backend`` fixture."""

    @pytest.fixture
    def loaded(self, backend: Backend) -> Backend:
        backend.ensure_schema(dim=DIM, model="contract-model")
        backend.register_fields(FIELDS)  # type: ignore[arg-type]
        assert backend.upsert([indexed(e, backend) for e in CATALOG]) == {}
        return backend

    @pytest.fixture
    def searcher(self, loaded: Backend) -> HybridSearcher:
        return HybridSearcher(loaded)

    # -- schema ----------------------------------------------------------------------
    def test_index_info_absent_then_present(self, backend: Backend) -> None:
        assert backend.index_info() is None
        assert backend.count() == 0
        backend.ensure_schema(dim=DIM, model="m1")
        info = backend.index_info()
        assert info is not None and info.dim == DIM and info.model == "m1" and dict(info.fields) == {}

    def test_ensure_schema_twice_is_a_noop(self, loaded: Backend) -> None:
        loaded.ensure_schema(dim=DIM, model="contract-model")
        assert loaded.count() == len(CATALOG)

    def test_other_dimension_is_a_clear_error(self, loaded: Backend) -> None:
        with pytest.raises(ConfigurationError, match=r"8-dimensional.*16"):
            loaded.ensure_schema(dim=16, model="contract-model")

    def test_other_model_is_a_clear_error(self, loaded: Backend) -> None:
        with pytest.raises(ConfigurationError, match="built with model 'contract-model'"):
            loaded.ensure_schema(dim=DIM, model="another-model")

    def test_fields_are_recorded(self, loaded: Backend) -> None:
        info = loaded.index_info()
        assert info is not None and dict(info.fields) == FIELDS
        loaded.register_fields({"brand": "keyword"})
        info = loaded.index_info()
        assert info is not None and info.fields["brand"] == "keyword" and info.fields["price"] == "number"

    # -- writes ----------------------------------------------------------------------
    def test_upsert_is_idempotent(self, loaded: Backend) -> None:
        assert loaded.upsert([indexed(e, loaded) for e in CATALOG]) == {}
        assert loaded.count() == len(CATALOG)

    def test_upsert_replaces_the_previous_version(self, loaded: Backend, searcher: HybridSearcher) -> None:
        entry = dict(CATALOG[0], t="green suede loafers", a={**CATALOG[0]["a"], "color": "green"})
        loaded.upsert([indexed(entry, loaded)])
        assert loaded.count() == len(CATALOG)
        hits = searcher.search(
            SearchRequest(text="loafers", weights=Weights(image=0, text=0, bm25=1)), dense=unit(1)
        ).hits
        assert [h.id for h in hits] == ["boot-red"]
        assert hits[0].payload["color"] == "green"

    def test_wrong_vector_size_is_refused_alone(self, loaded: Backend) -> None:
        bad = indexed(dict(CATALOG[0], id="bad-dim"), loaded, image=np.ones(DIM + 1, dtype=np.float32))
        good = indexed(dict(CATALOG[1], id="good-one"), loaded)
        failures = loaded.upsert([bad, good])
        assert set(failures) == {"bad-dim"} and "expects" in failures["bad-dim"]
        assert loaded.count() == len(CATALOG) + 1

    def test_delete(self, loaded: Backend, searcher: HybridSearcher) -> None:
        loaded.delete(["boot-red", "not-there"])
        assert loaded.count() == len(CATALOG) - 1
        hits = searcher.search(SearchRequest(text="red leather ankle boots"), dense=unit(1, 0.1)).hits
        assert "boot-red" not in [h.id for h in hits]

    # -- reads -----------------------------------------------------------------------
    def test_dense_ranking_and_signal_scores(self, searcher: HybridSearcher) -> None:
        response = searcher.search(
            SearchRequest(text="x", weights=Weights(image=1, text=0, bm25=0), k=3), dense=unit(1, 0.1)
        )
        assert [h.id for h in response.hits] == ["boot-red", "boot-black", "sneaker-red"]
        top = response.hits[0]
        assert top.signals.image == pytest.approx(1.0, abs=1e-4)
        assert top.signals.text is None and top.signals.bm25 is None
        assert top.ranks.image == 1

    def test_bm25_finds_keywords(self, searcher: HybridSearcher) -> None:
        response = searcher.search(SearchRequest(text="handbag", weights=Weights(image=0, text=0, bm25=1)))
        assert [h.id for h in response.hits] == ["bag-red"]
        assert response.hits[0].signals.bm25 is not None and response.hits[0].signals.bm25 > 0

    @pytest.mark.parametrize("fusion", ["rrf", "dbsf", "linear", "zscore"])
    def test_hybrid_every_fusion(self, searcher: HybridSearcher, fusion: str) -> None:
        response = searcher.search(
            SearchRequest(text="red leather ankle boots", fusion=fusion, k=4), dense=unit(1, 0.1)
        )  # type: ignore[arg-type]
        ids = [h.id for h in response.hits]
        assert ids[0] == "boot-red"
        assert len(ids) == len(set(ids)) == 4
        scores = [h.score for h in response.hits]
        assert scores == sorted(scores, reverse=True)
        assert response.hits[0].signals.image is not None and response.hits[0].signals.bm25 is not None

    def test_weighted_rrf_engine_equals_client(self, searcher: HybridSearcher) -> None:
        """Where the engine fuses, its ranking equals clipfuse's own fusion of the same candidates."""
        from clipfuse.plugin import fusion

        request = SearchRequest(text="red leather", weights=Weights(image=2, text=0.5, bm25=1), k=6, rrf_k=3)
        query = searcher.build_query(request, dense=unit(1, 0.5))
        result = searcher.backend.search(query)
        client = fusion.rrf(result.lists, k=3, weights=[r.weight for r in query.retrievers], limit=6)
        if result.fused is not None:
            assert [round(r.score, 5) for r in result.fused] == [round(f.score, 5) for f in client]
            assert {r.id for r in result.fused} == {f.id for f in client}

    def test_pagination_is_consistent(self, searcher: HybridSearcher) -> None:
        full = searcher.search(SearchRequest(text="red leather", k=6), dense=unit(1, 0.5)).hits
        page1 = searcher.search(SearchRequest(text="red leather", k=3), dense=unit(1, 0.5)).hits
        page2 = searcher.search(SearchRequest(text="red leather", k=3, offset=3), dense=unit(1, 0.5)).hits
        assert [h.id for h in page1 + page2] == [h.id for h in full]
        assert [h.rank for h in page2] == [4, 5, 6]

    @pytest.mark.parametrize(
        ("condition", "expected"),
        [
            (FilterCondition(field="category", op="eq", value="shoes"), {"boot-red", "boot-black", "sneaker-red"}),
            (FilterCondition(field="category", op="ne", value="shoes"), {"bag-red", "tee-blue", "scarf-blue"}),
            (FilterCondition(field="price", op="lte", value=90), {"sneaker-red", "bag-red", "tee-blue", "scarf-blue"}),
            (FilterCondition(field="price", op="gt", value=110), {"boot-black"}),
            (FilterCondition(field="price", op="eq", value=35.5), {"scarf-blue"}),
            (
                FilterCondition(field="color", op="in", value=["black", "blue"]),
                {"boot-black", "tee-blue", "scarf-blue"},
            ),
            (FilterCondition(field="color", op="nin", value=["red", "blue"]), {"boot-black"}),
            (FilterCondition(field="in_stock", op="eq", value=False), {"sneaker-red", "scarf-blue"}),
            (FilterCondition(field="tags", op="eq", value="summer"), {"tee-blue"}),
        ],
    )
    def test_filters(self, searcher: HybridSearcher, condition: FilterCondition, expected: set[str]) -> None:
        response = searcher.search(SearchRequest(text="anything", filters=[condition], k=20), dense=unit(1))
        assert {h.id for h in response.hits} == expected

    def test_filter_values_are_coerced_to_the_field_type(self, searcher: HybridSearcher) -> None:
        from clipfuse.schemas import parse_filter

        request = SearchRequest(text="x", filters=[parse_filter("price<=60"), parse_filter("in_stock=false")], k=20)
        assert {h.id for h in searcher.search(request, dense=unit(1)).hits} == {"sneaker-red", "scarf-blue"}

    def test_unknown_filter_field_is_a_clear_error(self, searcher: HybridSearcher) -> None:
        with pytest.raises(InvalidQuery, match=r"unknown filter field 'size'.*category"):
            searcher.search(SearchRequest(text="x", filters=[FilterCondition(field="size", value="M")]), dense=unit(1))

    def test_wrong_query_vector_size_is_a_clear_error(self, searcher: HybridSearcher) -> None:
        with pytest.raises(InvalidQuery, match="3 dimensions; the index holds 8"):
            searcher.search(SearchRequest(text="x"), dense=np.ones(3, dtype=np.float32))

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
from clipfuse.schemas.rules import parse_rules
from clipfuse.schemas.search import Total

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
        "a": {
            "category": "shoes",
            "color": "red",
            "price": 110.0,
            "in_stock": True,
            "group_id": "boot-1",
            "popularity": 10.0,
            "created_at": "2025-01-10",
            "sizes": ["38", "39"],
        },
    },
    {
        "id": "boot-black",
        "v": unit(1, 0.3),
        "t": "black leather ankle boots",
        "a": {
            "category": "shoes",
            "color": "black",
            "price": 130.0,
            "in_stock": True,
            "group_id": "boot-1",
            "popularity": 500.0,
            "created_at": "2025-03-01",
            "sizes": ["39", "40"],
        },
    },
    {
        "id": "sneaker-red",
        "v": unit(0.8, 0.8),
        "t": "red canvas sneakers",
        "a": {
            "category": "shoes",
            "color": "red",
            "price": 60.0,
            "in_stock": False,
            "group_id": "sneaker-1",
            "popularity": 50.0,
            "created_at": "2024-12-01",
            "sizes": ["38"],
        },
    },
    {
        "id": "bag-red",
        "v": unit(0.1, 1),
        "t": "red leather handbag",
        "a": {"category": "bags", "color": "red", "price": 90.0, "in_stock": True, "popularity": 5.0},
    },
    {
        "id": "tee-blue",
        "v": unit(0, 0.1, 1),
        "t": "blue cotton t-shirt",
        "a": {
            "category": "tops",
            "color": "blue",
            "price": 20.0,
            "in_stock": True,
            "tags": ["summer", "basic"],
            "group_id": "tee-1",
            "popularity": 1000.0,
            "created_at": "2025-03-10",
            "sizes": ["S", "M"],
        },
    },
    {
        "id": "scarf-blue",
        "v": unit(0, 0, 1, 1),
        "t": "blue wool scarf",
        "a": {"category": "accessories", "color": "blue", "price": 35.5, "in_stock": False, "created_at": "2024-06-01"},
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


FIELDS = {
    "category": "keyword",
    "color": "keyword",
    "price": "number",
    "in_stock": "bool",
    "tags": "keyword",
    "group_id": "keyword",
    "popularity": "number",
    "created_at": "keyword",
    "sizes": "keyword",
}
BY_ID = {e["id"]: e for e in CATALOG}


def brute_force_facets(ids: list[str], fields: list[str], *, groups: bool = False) -> dict[str, dict[str, int]]:
    """Facet counts computed the slow, obvious way over CATALOG documents ``ids``."""
    units: dict[str, list[str]] = {}
    for doc in ids:
        key = BY_ID[doc]["a"].get("group_id") if groups else None
        units.setdefault(key if key is not None else f"doc:{doc}", []).append(doc)
    out: dict[str, dict[str, int]] = {}
    for name in fields:
        counts: dict[str, int] = {}
        for members in units.values():
            values: set[str] = set()
            for doc in members:
                value = BY_ID[doc]["a"].get(name)
                for item in value if isinstance(value, list) else ([] if value is None else [value]):
                    values.add(str(item).lower() if isinstance(item, bool) else str(item))
            for v in values:
                counts[v] = counts.get(v, 0) + 1
        out[name] = counts
    return out


def passing(condition: FilterCondition | None) -> list[str]:
    from clipfuse.plugin.ranking import payload_matches

    return [e["id"] for e in CATALOG if condition is None or payload_matches(e["a"], [condition])]


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

    @pytest.mark.parametrize(
        ("where", "expected"),
        [
            (
                {"any": [{"field": "category", "value": "bags"}, {"field": "color", "value": "blue"}]},
                {"bag-red", "tee-blue", "scarf-blue"},
            ),
            (
                {"none": [{"all": [{"field": "category", "value": "shoes"}, {"field": "color", "value": "red"}]}]},
                {"boot-black", "bag-red", "tee-blue", "scarf-blue"},
            ),
            (
                {"any": [{"field": "price", "op": "gt", "value": 120}, {"field": "in_stock", "value": "false"}]},
                {"boot-black", "sneaker-red", "scarf-blue"},
            ),
        ],
    )
    def test_filter_trees(self, searcher: HybridSearcher, where: dict[str, Any], expected: set[str]) -> None:
        """Cross-field OR and NOT of a group (``where``; Algolia's ``filters``) on every engine."""
        request = SearchRequest.model_validate({"text": "anything", "where": where, "k": 20})
        assert {h.id for h in searcher.search(request, dense=unit(1)).hits} == expected

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

    # -- e-commerce ranking: facets, collapse, boosts, rules, cursors, ties ---------------------
    @pytest.mark.parametrize(
        "condition",
        [None, FilterCondition(field="category", value="shoes"), FilterCondition(field="sizes", value="38")],
    )
    def test_facets_equal_a_brute_force_count(
        self, searcher: HybridSearcher, condition: FilterCondition | None
    ) -> None:
        names = ["category", "color", "sizes", "in_stock", "tags"]
        response = searcher.search(
            SearchRequest(
                text="red leather",
                k=2,
                filters=[condition] if condition else [],
                facets=[*names, "price"],
                max_values_per_facet=100,
            ),
            dense=unit(1, 0.5),
        )
        expected_ids = passing(condition)  # dense signals reach every document of this small index
        assert response.total == Total(value=len(expected_ids), relation="eq")
        assert response.facet_scope == "window" and response.facets_count == "documents"
        assert response.facets == brute_force_facets(expected_ids, names)
        prices = [BY_ID[d]["a"]["price"] for d in expected_ids]
        stats = response.facets_stats["price"]
        assert (stats.count, stats.min, stats.max) == (len(prices), min(prices), max(prices))
        assert stats.sum == pytest.approx(sum(prices)) and stats.avg == pytest.approx(sum(prices) / len(prices))
        assert len(response.hits) == 2

    @pytest.mark.parametrize(
        ("text", "condition", "collapse"),
        [
            ("leather", None, False),
            ("red wool", FilterCondition(field="in_stock", value=True), False),
            ("leather", None, True),
            (None, FilterCondition(field="category", value="shoes"), False),
            ("zzzq", None, False),
        ],
    )
    def test_facets_over_the_matches_equal_a_brute_force_count(
        self, searcher: HybridSearcher, text: str | None, condition: FilterCondition | None, collapse: bool
    ) -> None:
        """``facet_scope: "matches"``: every document passing the filters and sharing a keyword with the
        query, not only the fused window (k=1, one candidate per signal here); lists count once."""
        names = ["category", "color", "sizes", "in_stock", "tags"]
        fields: dict[str, Any] = {
            "k": 1,
            "candidates": 1,
            "filters": [condition] if condition else [],
            "facets": [*names, "price"],
            "facet_scope": "matches",
            "max_values_per_facet": 100,
        }
        if text is not None:
            fields["text"] = text
        else:  # an image query (its vector given): no keywords
            fields["image"] = "https://shop.test/query.jpg"
        if collapse:
            fields["collapse"] = "group_id"
        response = searcher.search(SearchRequest.model_validate(fields), dense=unit(1, 0.5))
        words = set((text or "").split())
        expected_ids = [d for d in passing(condition) if not words or words & set(BY_ID[d]["t"].split())]
        expected = brute_force_facets(expected_ids, names, groups=collapse)
        units = {BY_ID[d]["a"].get("group_id") or d for d in expected_ids} if collapse else set(expected_ids)
        assert response.facet_scope == "matches"
        assert response.facets_count == ("groups" if collapse else "documents")
        assert response.total == Total(value=len(units), relation="eq")
        assert response.facets == {name: dict(sorted(expected[name].items(), key=lambda kv: (-kv[1], kv[0])))
                                   for name in names}  # fmt: skip
        prices = [BY_ID[d]["a"]["price"] for d in expected_ids]
        if prices:
            stats = response.facets_stats["price"]
            assert (stats.count, stats.min, stats.max) == (len(prices), min(prices), max(prices))
            assert stats.sum == pytest.approx(sum(prices))
        else:
            assert "price" not in response.facets_stats
        assert len(response.hits) <= 1

    def test_facet_values_are_capped_most_frequent_first(self, searcher: HybridSearcher) -> None:
        response = searcher.search(SearchRequest(text="x", facets=["color"], max_values_per_facet=2), dense=unit(1))
        assert response.facets["color"] == {"red": 3, "blue": 2}

    def test_collapse_gives_one_hit_per_group_before_paging(self, searcher: HybridSearcher) -> None:
        request = SearchRequest(
            text="leather boots", k=10, collapse={"field": "group_id", "fields": ["color"]}, facets=["color"]
        )
        response = searcher.search(request, dense=unit(1, 0.2))
        ids = [h.id for h in response.hits]
        organic = [
            h.id for h in searcher.search(request.model_copy(update={"collapse": None}), dense=unit(1, 0.2)).hits
        ]
        best, other = sorted(["boot-red", "boot-black"], key=organic.index)
        assert ids[0] == best == organic[0] and other not in ids
        top = response.hits[0]
        assert top.group == "boot-1"
        assert [(v.id, v.payload) for v in top.variants] == [(other, {"color": BY_ID[other]["a"]["color"]})]
        assert top.variants[0].score <= top.score
        # documents without a group stand alone; every group appears once, in the order of its best document
        assert sorted(ids) == sorted([best, "sneaker-red", "bag-red", "tee-blue", "scarf-blue"])
        assert ids == [d for d in organic if d != other]
        assert response.total == Total(value=5, relation="eq") and response.collapsed_by == "group_id"
        # facets count groups: the boot group counts once for red and once for black
        assert response.facets_count == "groups"
        assert response.facets["color"] == brute_force_facets(passing(None), ["color"], groups=True)["color"]
        assert response.facets["color"] == {"red": 3, "blue": 2, "black": 1}
        page2 = searcher.search(request.model_copy(update={"k": 2, "offset": 2}), dense=unit(1, 0.2))
        assert [h.id for h in page2.hits] == ids[2:4] and [h.rank for h in page2.hits] == [3, 4]

    def test_boosts_rerank_the_whole_window_and_explain_themselves(self, searcher: HybridSearcher) -> None:
        import math

        request = SearchRequest.model_validate(
            {
                "text": "red leather ankle boots",
                "k": 6,
                "boosts": [
                    {"type": "field", "field": "popularity", "function": "log1p", "weight": 0.2},
                    {"type": "filter", "filters": [{"field": "in_stock", "value": False}], "weight": 0.05},
                    {"type": "decay", "field": "created_at", "origin": "2025-03-10", "scale": "30d", "weight": 0.1},
                ],
            }
        )
        response = searcher.search(request, dense=unit(1, 0.1))
        assert len(response.hits) == 6
        fused = [h.explanation.fused for h in response.hits if h.explanation]
        lo, hi = min(fused), max(fused)
        for hit in response.hits:
            e = hit.explanation
            assert e is not None and e.normalised == pytest.approx((e.fused - lo) / (hi - lo))
            a = BY_ID[hit.id]["a"]
            expected = [
                0.2 * math.log1p(a.get("popularity", 0.0)),
                0.05 if not a["in_stock"] else 0.0,
                0.1 * (decay_value(a["created_at"]) if "created_at" in a else 1.0),
            ]
            assert [b.contribution for b in e.boosts] == pytest.approx(expected)
            assert e.final == pytest.approx(e.normalised + sum(expected)) and hit.score == e.final
            assert sum(s.contribution for s in e.signals.values()) == pytest.approx(e.fused, rel=1e-5)
        scores = [h.score for h in response.hits]
        assert scores == sorted(scores, reverse=True)
        assert response.hits[0].id == "boot-black"  # popular and newer: above the better text match

    def test_bad_window_fields_are_clear_errors(self, searcher: HybridSearcher) -> None:
        cases = [
            ({"facets": ["size"]}, r"unknown facet field 'size'"),
            ({"collapse": "price"}, r"collapse needs a keyword field.*'price' is number"),
            ({"collapse": "nope"}, r"unknown collapse field 'nope'"),
            ({"boosts": [{"type": "field", "field": "color"}]}, r"boosts.0: linear needs a number field; 'color' is"),
            ({"boosts": [{"type": "field", "field": "rating"}]}, r"unknown boost field 'rating'"),
            (
                {"boosts": [{"type": "filter", "filters": [{"field": "size", "value": "M"}], "weight": 1}]},
                r"boosts.0: unknown filter field 'size'",
            ),
        ]
        for extra, message in cases:
            with pytest.raises(InvalidQuery, match=message):
                searcher.search(SearchRequest.model_validate({"text": "x", **extra}), dense=unit(1))
        with pytest.raises(ValueError, match="scale must be greater than 0"):
            SearchRequest.model_validate(
                {"text": "x", "boosts": [{"type": "decay", "field": "price", "origin": 1, "scale": 0}]}
            )

    def test_rules_pin_hide_and_bury(self, searcher: HybridSearcher) -> None:
        rules = parse_rules(
            [
                {
                    "id": "leather-campaign",
                    "conditions": [{"pattern": "leather", "anchoring": "contains"}],
                    "consequence": {
                        "pin": [{"id": "scarf-blue", "position": 1}],
                        "hide": ["boot-red"],
                        "boost": [{"filters": [{"field": "category", "value": "bags"}], "weight": -5}],
                    },
                }
            ]
        )
        searcher.load_rules(rules)
        request = SearchRequest(text="red leather ankle boots", k=6, collapse="group_id")
        response = searcher.search(request, dense=unit(1, 0.1))
        ids = [h.id for h in response.hits]
        assert ids[0] == "scarf-blue" and response.hits[0].rule == "leather-campaign"
        assert ids[-1] == "bag-red" and response.hits[-1].rule == "leather-campaign"  # buried
        assert "boot-red" not in ids and all(v.id != "boot-red" for h in response.hits for v in h.variants)
        assert "boot-black" in ids and response.rules_applied == ["leather-campaign"]
        # a pinned document the filters exclude is not shown
        shoes = searcher.search(
            SearchRequest(text="leather", k=6, filters=[FilterCondition(field="category", value="shoes")]),
            dense=unit(1, 0.1),
        )
        assert {h.id for h in shoes.hits} == {"boot-black", "sneaker-red"}
        # rules off: the organic ranking
        organic = searcher.search(request.model_copy(update={"rules": False}), dense=unit(1, 0.1))
        assert organic.hits[0].id == "boot-red" and organic.rules_applied == []
        # a query the rule does not match
        assert searcher.search(SearchRequest(text="scarf", k=6), dense=unit(1, 0.1)).rules_applied == []

    def test_rules_naming_unknown_documents_or_fields_are_refused(self, searcher: HybridSearcher) -> None:
        good = parse_rules([{"id": "ok", "conditions": [{"pattern": "x"}], "consequence": {"hide": ["tee-blue"]}}])
        searcher.load_rules(good)
        with pytest.raises(ConfigurationError, match=r"rule 'r1' names documents the index does not hold: \['nope'\]"):
            searcher.load_rules(
                parse_rules([{"id": "r1", "conditions": [{"pattern": "x"}], "consequence": {"hide": ["nope"]}}])
            )
        with pytest.raises(ConfigurationError, match=r"rule 'r2' \(conditions\): unknown filter field 'size'"):
            searcher.load_rules(
                parse_rules(
                    [
                        {
                            "id": "r2",
                            "conditions": [{"filters": [{"field": "size", "value": "M"}]}],
                            "consequence": {"hide": ["tee-blue"]},
                        }
                    ]
                )
            )
        assert searcher.rules.rules[0].id == "ok"  # the previous rules stay

    def test_cursor_pages_a_frozen_ranking(self, loaded: Backend, searcher: HybridSearcher) -> None:
        full = [h.id for h in searcher.search(SearchRequest(text="red leather", k=6), dense=unit(1, 0.5)).hits]
        first = searcher.search(SearchRequest(text="red leather", k=2), dense=unit(1, 0.5))
        assert first.next_cursor is not None
        # the index changes between pages: a new best match, a deleted document
        loaded.upsert([indexed(dict(CATALOG[0], id="boot-new", t="red leather"), loaded)])
        loaded.delete([full[3]])
        pages = [first]
        while pages[-1].next_cursor is not None:
            pages.append(searcher.search(SearchRequest(cursor=pages[-1].next_cursor)))
        ids = [h.id for page in pages for h in page.hits]
        assert ids == full and len(pages) == 3
        assert [h.rank for h in pages[1].hits] == [3, 4]
        assert pages[1].total == first.total
        assert pages[1].hits[0].payload.get("title")  # payloads are read for the page
        fresh = searcher.search(SearchRequest(text="red leather", k=2), dense=unit(1, 0.5))
        assert "boot-new" in [h.id for h in fresh.hits]
        with pytest.raises(InvalidQuery, match="signature does not match"):
            token = first.next_cursor
            searcher.search(SearchRequest(cursor=token[:-2] + ("AA" if not token.endswith("AA") else "BB")))

    def test_ties_are_broken_by_document_id(self, loaded: Backend, searcher: HybridSearcher) -> None:
        """Equal raw scores in a signal, and equal fused scores, are ordered by document id on every engine."""
        twins = [
            dict(CATALOG[4], id=name, t="striped linen shorts", v=unit(0, 0, 0, 0, 1))
            for name in ("twin-c", "twin-a", "twin-b")
        ]
        loaded.upsert([indexed(t, loaded) for t in twins])
        for weights in (Weights(image=0, text=0, bm25=1), Weights(image=1, text=0, bm25=0), Weights()):
            for _ in range(2):
                hits = searcher.search(
                    SearchRequest(text="striped linen shorts", weights=weights, k=3), dense=unit(0, 0, 0, 0, 1)
                ).hits
                assert [h.id for h in hits] == ["twin-a", "twin-b", "twin-c"]
                assert len({(h.signals.image, h.signals.bm25) for h in hits}) == 1


def decay_value(date: str) -> float:
    """gauss decay of a date from 2025-03-10, scale 30 days, decay 0.5 (Elasticsearch's formula)."""
    import math
    from datetime import date as d

    days = abs((d.fromisoformat("2025-03-10") - d.fromisoformat(date)).days)
    return math.exp(math.log(0.5) * (days / 30) ** 2)

"""Hybrid search around a shop's own Elasticsearch ``_search`` body, at the request level.

Three bodies shaped like the ones Magento, Shopware and Sylius send; the exact msearch
bodies are pinned, and recorded answers go through the real elasticsearch-py client
(the recording node of ``test_elasticsearch_requests``). The live suite runs the same
cases against a cluster (``test_elasticsearch_live.py``, ``ELASTICSEARCH_URL``).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from test_elasticsearch_requests import FakeCluster, as_list, unit

from clipfuse.errors import ConfigurationError, InvalidQuery
from clipfuse.plugin import HybridSearcher, fusion
from clipfuse.plugin.elasticsearch import ElasticsearchBackend, build_shop_msearch, hybrid_shop_search, shop_knn_filter
from clipfuse.plugin.fusion import Ranked

INDEX = "products"
QVEC = unit(1.0, 0.5, 0.0, 0.25)
SOURCE = {"excludes": ["image_vector", "text_vector"]}

MAGENTO = {
    "from": 0,
    "size": 2,
    "query": {
        "bool": {
            "must": [{"multi_match": {"query": "red boots", "fields": ["title^5", "sku", "description"]}}],
            "should": [{"term": {"brand": {"value": "Acme", "boost": 2.0}}}],
            "filter": [
                {"terms": {"visibility": [3, 4]}},
                {"term": {"in_stock": True}},
                {"range": {"price": {"gte": 50, "lte": 150}}},
            ],
        }
    },
    "aggs": {
        "brand_bucket": {"terms": {"field": "brand", "size": 10}},
        "price_bucket": {"histogram": {"field": "price", "interval": 50}},
    },
    "_source": ["title", "price", "brand"],
}
SHOPWARE = {
    "from": 0,
    "size": 3,
    "track_total_hits": True,
    "query": {"multi_match": {"query": "red boots", "fields": ["title^3", "description"], "type": "cross_fields"}},
    "post_filter": {"bool": {"filter": [{"terms": {"color": ["red"]}}]}},
    "aggs": {"color": {"terms": {"field": "color"}}, "manufacturer": {"terms": {"field": "brand"}}},
}
SYLIUS = {
    "size": 2,
    "query": {
        "bool": {
            "must": [
                {"match": {"title": "boots"}},
                {
                    "nested": {
                        "path": "attributes",
                        "query": {
                            "bool": {
                                "filter": [
                                    {"term": {"attributes.code": "size"}},
                                    {"term": {"attributes.value": "42"}},
                                ]
                            }
                        },
                    }
                },
            ],
            "must_not": [{"term": {"enabled": False}}],
        }
    },
    "sort": [{"_score": "desc"}],
}


def knn(field: str, k: int, flt: list[dict[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {"field": field, "query_vector": as_list(QVEC), "k": k, "num_candidates": 2 * k}
    if flt:
        body["filter"] = flt
    return {"knn": body, "size": k, "_source": SOURCE, "track_total_hits": False}


def test_magento_bool_with_should_boosts_and_terms_filters_exact_bodies() -> None:
    searches = build_shop_msearch(MAGENTO, {"image": QVEC, "text": QVEC}, index=INDEX, candidates=50)
    flt = MAGENTO["query"]["bool"]["filter"]  # type: ignore[index]
    lexical = {
        "query": MAGENTO["query"],
        "aggs": MAGENTO["aggs"],
        "_source": ["title", "price", "brand"],
        "from": 0,
        "size": 50,
    }
    source = ["title", "price", "brand"]
    image, text = knn("image_vector", 50, flt), knn("text_vector", 50, flt)
    image["_source"] = text["_source"] = source
    assert searches == [{"index": INDEX}, lexical, {"index": INDEX}, image, {"index": INDEX}, text]


def test_shopware_multi_match_with_post_filter_and_aggs_exact_bodies() -> None:
    searches = build_shop_msearch(SHOPWARE, {"image": QVEC}, index=INDEX, candidates=20)
    lexical = {
        "track_total_hits": True,
        "query": SHOPWARE["query"],
        "post_filter": SHOPWARE["post_filter"],
        "aggs": SHOPWARE["aggs"],
        "from": 0,
        "size": 20,
        "_source": SOURCE,
    }
    # the post_filter filters the shop's hits, so it filters the kNN signals too; the aggregations stay unfiltered
    assert searches == [{"index": INDEX}, lexical, {"index": INDEX}, knn("image_vector", 20, [SHOPWARE["post_filter"]])]


def test_sylius_nested_filter_and_must_not_reach_knn() -> None:
    nested = SYLIUS["query"]["bool"]["must"][1]  # type: ignore[index]
    assert shop_knn_filter(SYLIUS) == [nested, {"bool": {"must_not": [{"term": {"enabled": False}}]}}]
    searches = build_shop_msearch(SYLIUS, {"text": QVEC}, index=INDEX, candidates=10)
    assert searches[1] == {"query": SYLIUS["query"], "from": 0, "size": 10, "_source": SOURCE}  # sort on _score dropped
    assert searches[3] == knn("text_vector", 10, shop_knn_filter(SYLIUS))


def test_the_shops_body_is_not_modified() -> None:
    before = copy.deepcopy(MAGENTO)
    build_shop_msearch(MAGENTO, {"image": QVEC}, index=INDEX, candidates=10)
    assert before == MAGENTO


def hit(doc_id: str, score: float, **source: Any) -> dict[str, Any]:
    return {"_index": "products-v1", "_id": doc_id, "_score": score, "_source": source}


def answer(*hits: dict[str, Any], aggregations: dict[str, Any] | None = None, total: int | None = None) -> dict:
    body: dict[str, Any] = {
        "took": 3,
        "timed_out": False,
        "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
        "hits": {"max_score": hits[0]["_score"] if hits else None, "hits": list(hits)},
        "status": 200,
    }
    if total is not None:
        body["hits"]["total"] = {"value": total, "relation": "eq"}
    if aggregations is not None:
        body["aggregations"] = aggregations
    return body


AGGS = {
    "color": {"doc_count_error_upper_bound": 0, "sum_other_doc_count": 0, "buckets": [{"key": "red", "doc_count": 7}]},
    "manufacturer": {"buckets": [{"key": "Acme", "doc_count": 4}, {"key": "Bolt", "doc_count": 3}]},
}
RECORDED = {
    "took": 6,
    "responses": [
        answer(
            hit("boot-red", 9.0, title="Red boots", color="red", price=110.0),
            hit("bag-red", 4.0, title="Red bag", color="red", price=90.0),
            aggregations=AGGS,
            total=7,
        ),
        answer(
            hit("sneaker-red", 0.97, title="Red sneakers", color="red", price=70.0),
            hit("boot-red", 0.95, title="Red boots", color="red", price=110.0),
        ),
    ],
}


def test_shopware_through_the_real_client_keeps_its_response_shape_and_aggregations() -> None:
    cluster = FakeCluster(script=[(200, RECORDED)])
    response = hybrid_shop_search(
        cluster.client(), INDEX, SHOPWARE, vectors={"image": QVEC}, candidates=20, weights={"bm25": 1, "image": 1}
    )
    (call,) = cluster.calls
    assert (call.method, call.path) == ("POST", f"/{INDEX}/_msearch")
    assert call.body == build_shop_msearch(SHOPWARE, {"image": QVEC}, index=INDEX, candidates=20)
    expected = fusion.rrf(
        [[Ranked("boot-red", 9.0), Ranked("bag-red", 4.0)], [Ranked("sneaker-red", 0.94), Ranked("boot-red", 0.9)]],
        k=60,
    )
    assert [h["_id"] for h in response["hits"]["hits"]] == [f.id for f in expected][:3]
    assert [h["_score"] for h in response["hits"]["hits"]] == pytest.approx([f.score for f in expected][:3])
    top = response["hits"]["hits"][0]
    assert top["_id"] == "boot-red" and top["_index"] == "products-v1"
    assert top["_source"] == {"title": "Red boots", "color": "red", "price": 110.0}
    assert top["_clipfuse"]["signals"]["bm25"] == {"score": 9.0, "rank": 1}
    assert top["_clipfuse"]["signals"]["image"]["rank"] == 2
    assert top["_clipfuse"]["signals"]["image"]["score"] == pytest.approx(0.9)  # cosine, not (1 + cos) / 2
    assert response["hits"]["total"] == {"value": 3, "relation": "eq"}
    assert response["aggregations"] == AGGS  # the shop's own, computed on its query
    assert set(response) == {"took", "timed_out", "_shards", "hits", "aggregations"}


def test_from_and_size_page_the_fused_ranking() -> None:
    cluster = FakeCluster(script=[(200, RECORDED)])
    body = {**SHOPWARE, "from": 1, "size": 1}
    response = hybrid_shop_search(cluster.client(), INDEX, body, vectors={"image": QVEC}, candidates=20)
    (only,) = response["hits"]["hits"]
    assert only["_clipfuse"]["rank"] == 2


def test_hybrid_searcher_hybridize_runs_the_same_request() -> None:
    cluster = FakeCluster(script=[(200, RECORDED)])
    searcher = HybridSearcher(ElasticsearchBackend(cluster.client(), INDEX))
    response = searcher.hybridize(
        SHOPWARE, text="red boots", dense=QVEC, weights={"image": 1.0, "text": 0.0, "bm25": 1.0}, candidates=20
    )
    assert cluster.calls[0].body == build_shop_msearch(SHOPWARE, {"image": QVEC}, index=INDEX, candidates=20)
    assert response["hits"]["hits"][0]["_id"] == "boot-red"
    with pytest.raises(InvalidQuery, match="query text"):
        searcher.hybridize(SHOPWARE)


def test_hybridize_needs_elasticsearch(qdrant_client: Any, collection_name: str) -> None:
    with pytest.raises(ConfigurationError, match="Elasticsearch"):
        HybridSearcher(qdrant_client, collection=collection_name).hybridize(SHOPWARE, text="x", dense=QVEC)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"query": {"boosting": {"positive": {"match_all": {}}, "negative": {"term": {"x": 1}}}}}, "'boosting'"),
        ({"query": {"bool": {"must": [{"script": {"script": "doc.x > 1"}}]}}}, "bool.must[0]"),
        ({"query": {"bool": {"should": [{"term": {"a": 1}}], "minimum_should_match": 1}}}, "minimum_should_match"),
        ({"query": {"match_all": {}}, "sort": [{"price": "asc"}]}, "sort[0]"),
        ({"query": {"match_all": {}}, "collapse": {"field": "group_id", "inner_hits": {"name": "v"}}}, "inner_hits"),
        ({"query": {"match_all": {}}, "search_after": [1]}, "search_after"),
        ({"query": {"match_all": {}}, "size": -1}, "size"),
        ({"query": {"match_all": {}}, "from": 9999, "size": 10}, "from + size"),
        ({"query": {"bool": {"filter": ["not a clause"]}}}, "bool.filter[0]"),
    ],
)
def test_bodies_clipfuse_cannot_carry_are_invalid_query_naming_the_part(body: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidQuery) as error:
        build_shop_msearch(body, {"image": QVEC}, index=INDEX, candidates=10)
    assert needle in error.value.message


def test_explicit_knn_filter_carries_what_cannot_be_extracted() -> None:
    body = {"query": {"bool": {"should": [{"term": {"a": 1}}, {"term": {"b": 2}}], "minimum_should_match": 1}}}
    explicit = [{"bool": {"should": [{"term": {"a": 1}}, {"term": {"b": 2}}], "minimum_should_match": 1}}]
    searches = build_shop_msearch(body, {"image": QVEC}, index=INDEX, candidates=10, knn_filter=explicit)
    assert searches[3]["knn"]["filter"] == explicit


def test_function_score_and_constant_score_are_unwrapped() -> None:
    inner = {"bool": {"must": [{"match": {"title": "boots"}}], "filter": [{"term": {"brand": "Acme"}}]}}
    wrapped = {"query": {"function_score": {"query": inner, "field_value_factor": {"field": "popularity"}}}}
    assert shop_knn_filter(wrapped) == [{"term": {"brand": "Acme"}}]
    assert shop_knn_filter({"query": {"constant_score": {"filter": {"term": {"a": 1}}}}}) == [{"term": {"a": 1}}]


def variants_answer() -> dict[str, Any]:
    """Two colours of one boot (group b1) and a bag; the lexical search and one kNN search."""
    lexical = answer(
        hit("b1-red", 9.0, title="Red boots", group_id="b1", in_stock=False),
        hit("b1-black", 8.0, title="Black boots", group_id="b1", in_stock=True),
        hit("bag", 1.0, title="Bag", group_id="g2", in_stock=True),
        aggregations=AGGS,
    )
    knn_part = answer(hit("b1-red", 0.99, title="Red boots", group_id="b1", in_stock=False))
    return {"took": 4, "responses": [lexical, knn_part]}


def test_boosts_and_collapse_apply_to_the_fused_window_before_paging() -> None:
    from test_elasticsearch_requests import mapping_response

    mapping = mapping_response(extra={"group_id": {"type": "keyword"}, "in_stock": {"type": "boolean"}})
    cluster = FakeCluster(script=[(200, mapping), (200, variants_answer())])
    searcher = HybridSearcher(ElasticsearchBackend(cluster.client(), INDEX))
    body = {"query": {"match": {"title": "boots"}}, "size": 5, "_source": ["title"], "collapse": {"field": "group_id"}}
    response = searcher.hybridize(
        body, text="boots", dense=QVEC, weights={"image": 1.0, "text": 0.0, "bm25": 1.0}, boosts=["in_stock=true:+2"]
    )
    sent = cluster.calls[-1].body
    assert sent[1]["_source"] == ["title", "group_id", "in_stock"]  # what collapse and the boost read
    assert "collapse" not in sent[1]  # clipfuse collapses the fused ranking itself
    hits = response["hits"]["hits"]
    # the boost lifts the in-stock black boot over the red one; collapse keeps one boot, the bag stays alone
    assert [h["_id"] for h in hits] == ["b1-black", "bag"]
    assert hits[0]["fields"] == {"group_id": ["b1"]}
    assert [v["_id"] for v in hits[0]["_clipfuse"]["variants"]] == ["b1-red"]
    assert hits[0]["_clipfuse"]["boosts"][0]["contribution"] == 2.0
    assert hits[0]["_source"] == {"title": "Black boots"}  # the fields clipfuse added are not shown
    assert response["hits"]["total"] == {"value": 2, "relation": "eq"}
    assert response["aggregations"] == AGGS


def test_hybridize_checks_boost_and_collapse_fields() -> None:
    from test_elasticsearch_requests import fields_mapping

    cluster = FakeCluster(script=[(200, fields_mapping())])
    searcher = HybridSearcher(ElasticsearchBackend(cluster.client(), INDEX))
    with pytest.raises(InvalidQuery, match="collapse"):
        searcher.hybridize(SHOPWARE, text="x", dense=QVEC, collapse="group_id")
    with pytest.raises(InvalidQuery, match="popularity"):
        searcher.hybridize(SHOPWARE, text="x", dense=QVEC, boosts=["log1p(popularity)*0.1"])

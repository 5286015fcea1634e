"""The Elasticsearch backend at the request level: exact bodies, and recorded responses through the real client.

No Elasticsearch server runs here. The bodies the pure builders make are asserted
exactly; the backend is driven through a real ``elasticsearch.Elasticsearch``
whose *node* is a recording stub (``node_class=``), so elasticsearch-py's own
request serialisation (JSON, NDJSON for bulk / msearch, paths, query strings) and
its response / error handling run for real. The responses are written by hand in
the shape Elasticsearch documents. The live suite (``test_elasticsearch_live.py``)
runs the same behaviour against a cluster when ``ELASTICSEARCH_URL`` is set.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from elastic_transport import ApiResponseMeta, BaseNode, HttpHeaders
from elasticsearch import Elasticsearch

from clipfuse.errors import BackendError, BackendUnavailable, ConfigurationError, InvalidQuery
from clipfuse.plugin import HybridSearcher, IndexedDocument, fusion
from clipfuse.plugin.elasticsearch import (
    ElasticsearchBackend,
    build_bulk_actions,
    build_bulk_delete_actions,
    build_filter,
    build_index_body,
    build_mget,
    build_msearch,
    build_retriever_search,
    open_elasticsearch_client,
    server_fusion_unsupported_reason,
)
from clipfuse.plugin.fusion import Ranked
from clipfuse.plugin.protocol import Backend, HybridQuery, IndexInfo, Retriever
from clipfuse.plugin.searcher import backend_for
from clipfuse.schemas import FilterCondition, SearchRequest, Weights

INDEX = "products"
DIM = 4
_HEADERS = {"content-type": "application/json", "x-elastic-product": "Elasticsearch"}


# -- the recording node -----------------------------------------------------------------
class NodeResponse(NamedTuple):
    """What a node returns to the transport (``elastic_transport``'s ``NodeApiResponse``)."""

    meta: ApiResponseMeta
    body: bytes


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, str]
    body: Any
    content_type: str | None


Responder = Callable[[Call], tuple[int, Any]]


@dataclass
class FakeCluster:
    """Answers requests in order from ``script`` (a status/body pair, or a function of the call)."""

    script: list[tuple[int, Any] | Responder] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)

    def answer(self, method: str, target: str, body: bytes | None, headers: Any) -> tuple[int, Any]:
        url = urlsplit(target)
        params = {k: v[0] for k, v in parse_qs(url.query).items()}
        content_type = headers.get("content-type") if headers else None
        parsed: Any = None
        if body:
            text = body.decode("utf-8")
            parsed = (
                [json.loads(line) for line in text.splitlines() if line.strip()]
                if content_type and "ndjson" in content_type
                else json.loads(text)
            )
        call = Call(method, url.path, params, parsed, content_type)
        self.calls.append(call)
        if not self.script:
            raise AssertionError(f"unexpected request {method} {target}")
        step = self.script.pop(0)
        return step(call) if callable(step) else step

    def client(self, **kwargs: Any) -> Elasticsearch:
        cluster = self

        class RecordingNode(BaseNode):
            def perform_request(  # type: ignore[override]
                self,
                method: str,
                target: str,
                body: bytes | None = None,
                headers: Any = None,
                request_timeout: Any = None,
            ) -> NodeResponse:
                status, payload = cluster.answer(method, target, body, headers)
                meta = ApiResponseMeta(
                    status=status, http_version="1.1", headers=HttpHeaders(_HEADERS), duration=0.0, node=self.config
                )
                return NodeResponse(meta, json.dumps(payload).encode())

        return Elasticsearch("http://es.test:9200", node_class=RecordingNode, max_retries=0, **kwargs)


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


def backend_on(cluster: FakeCluster, **kwargs: Any) -> ElasticsearchBackend:
    kwargs.setdefault("initial_backoff", 0.0)
    return ElasticsearchBackend(cluster.client(), INDEX, **kwargs)


def unit(*components: float, dim: int = DIM) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[: len(components)] = components
    return (v / np.linalg.norm(v)).astype(np.float32)


def as_list(v: np.ndarray) -> list[float]:
    return [float(x) for x in v.astype(np.float32)]


def mapping_response(*, dim: int = DIM, model: str | None = "m1", extra: dict[str, Any] | None = None) -> dict:
    """``GET /<index>/_mapping`` as a cluster returns it for an index clipfuse made."""
    body = build_index_body(dim, model, "int8_hnsw")
    mappings = body["mappings"]
    mappings["properties"].update(extra or {})
    return {INDEX: {"mappings": mappings}}


def error_body(status: int, kind: str, reason: str, **extra: Any) -> dict[str, Any]:
    return {
        "error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason, **extra},
        "status": status,
    }


def bulk_answer(errors: dict[str, tuple[int, dict[str, Any]]] | None = None) -> Responder:
    """A ``_bulk`` response mirroring the request's actions; ``errors`` maps ids to (status, error)."""
    errors = errors or {}

    def respond(call: Call) -> tuple[int, Any]:
        items = []
        for line in call.body:
            if len(line) != 1 or next(iter(line)) not in ("index", "delete"):
                continue
            op, meta = next(iter(line.items()))
            doc_id = meta["_id"]
            if doc_id in errors:
                status, error = errors[doc_id]
                items.append({op: {"_index": INDEX, "_id": doc_id, "status": status, "error": error}})
            else:
                items.append({op: {"_index": INDEX, "_id": doc_id, "_version": 1, "result": "created", "status": 201}})
        return 200, {"took": 3, "errors": bool(errors), "items": items}

    return respond


def doc(doc_id: str, vec: np.ndarray | None = None, **payload: Any) -> IndexedDocument:
    v = unit(1) if vec is None else vec
    return IndexedDocument(id=doc_id, payload={"title": f"title of {doc_id}", **payload}, image_vector=v, text_vector=v)


# -- index body --------------------------------------------------------------------------
EXPECTED_ANALYSIS = {
    "analysis": {
        "filter": {
            "clipfuse_english_possessive": {"type": "stemmer", "language": "possessive_english"},
            "clipfuse_english_stemmer": {"type": "stemmer", "language": "light_english"},
        },
        "analyzer": {
            "clipfuse_product": {
                "type": "custom",
                "tokenizer": "standard",
                "filter": ["clipfuse_english_possessive", "lowercase", "asciifolding", "clipfuse_english_stemmer"],
            }
        },
    }
}


def expected_vector(dim: int, kind: str) -> dict[str, Any]:
    return {"type": "dense_vector", "dims": dim, "index": True, "similarity": "cosine", "index_options": {"type": kind}}


def test_index_body_is_exact() -> None:
    assert build_index_body(512, "ViT-B-32/laion2b_s34b_b79k", "int8_hnsw") == {
        "settings": EXPECTED_ANALYSIS,
        "mappings": {
            "_meta": {"clipfuse": {"version": 1, "model": "ViT-B-32/laion2b_s34b_b79k", "dim": 512, "fields": {}}},
            "dynamic": True,
            "date_detection": False,
            "numeric_detection": False,
            "dynamic_templates": [
                {"clipfuse_strings": {"match_mapping_type": "string", "mapping": {"type": "keyword"}}},
                {"clipfuse_integers": {"match_mapping_type": "long", "mapping": {"type": "double"}}},
                {"clipfuse_numbers": {"match_mapping_type": "double", "mapping": {"type": "double"}}},
                {"clipfuse_booleans": {"match_mapping_type": "boolean", "mapping": {"type": "boolean"}}},
            ],
            "properties": {
                "doc_id": {"type": "keyword"},
                "title": {"type": "text", "analyzer": "clipfuse_product"},
                "caption": {"type": "text", "analyzer": "clipfuse_product"},
                "description": {"type": "text", "analyzer": "clipfuse_product"},
                "images": {"type": "keyword", "index": False, "doc_values": False},
                "image_vector": expected_vector(512, "int8_hnsw"),
                "text_vector": expected_vector(512, "int8_hnsw"),
            },
            "_source": {"excludes": ["image_vector", "text_vector"]},
        },
    }


@pytest.mark.parametrize("kind", ["int8_hnsw", "bbq_hnsw", "hnsw", "int8_flat", "flat"])
def test_index_body_for_each_vector_index_type(kind: str) -> None:
    body = build_index_body(512, None, kind)  # type: ignore[arg-type]
    props = body["mappings"]["properties"]
    assert props["image_vector"] == expected_vector(512, kind)
    assert props["text_vector"] == expected_vector(512, kind)
    assert body["mappings"]["_meta"] == {"clipfuse": {"version": 1, "model": None, "dim": 512, "fields": {}}}
    assert body["settings"] == EXPECTED_ANALYSIS


def test_index_body_options_and_limits() -> None:
    assert "_source" not in build_index_body(8, None, exclude_vectors_from_source=False)["mappings"]
    with pytest.raises(ConfigurationError, match="bbq_hnsw needs at least 64 dimensions"):
        build_index_body(8, None, "bbq_hnsw")
    assert build_index_body(64, None, "bbq_hnsw")["mappings"]["properties"]["image_vector"]["dims"] == 64
    with pytest.raises(ConfigurationError, match=r"1\.\.4096"):
        build_index_body(4097, None)
    with pytest.raises(ConfigurationError, match="unknown vector index type"):
        build_index_body(8, None, "ivf")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="unknown vector index type"):
        ElasticsearchBackend(Elasticsearch("http://es.test:9200"), INDEX, vector_index_type="ivf")  # type: ignore[arg-type]


# -- bulk actions ------------------------------------------------------------------------
def test_bulk_actions_are_exact_and_idempotent() -> None:
    image, text = np.array([0.6, 0.8, 0, 0], dtype=np.float32), np.array([0, 0, 1, 0], dtype=np.float32)
    docs = [
        IndexedDocument(
            id="sku-1",
            payload={"title": "Red boots", "images": ["a.jpg"], "price": 110.0, "in_stock": True},
            image_vector=image,
            text_vector=text,
            text="Red boots",
        ),
        IndexedDocument(id="sku-2", payload={"title": "Scarf"}, text_vector=text),
    ]
    assert build_bulk_actions(docs, INDEX) == [
        {
            "_op_type": "index",
            "_index": INDEX,
            "_id": "sku-1",
            "_source": {
                "title": "Red boots",
                "images": ["a.jpg"],
                "price": 110.0,
                "in_stock": True,
                "doc_id": "sku-1",
                "image_vector": as_list(image),
                "text_vector": as_list(text),
            },
        },
        {
            "_op_type": "index",
            "_index": INDEX,
            "_id": "sku-2",
            "_source": {"title": "Scarf", "doc_id": "sku-2", "text_vector": as_list(text)},
        },
    ]
    assert build_bulk_delete_actions(["a", "b"], INDEX) == [
        {"_op_type": "delete", "_index": INDEX, "_id": "a"},
        {"_op_type": "delete", "_index": INDEX, "_id": "b"},
    ]


# -- filters -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (FilterCondition(field="category", op="eq", value="shoes"), [{"term": {"category": "shoes"}}]),
        (FilterCondition(field="in_stock", op="eq", value=False), [{"term": {"in_stock": False}}]),
        (FilterCondition(field="price", op="eq", value=35.5), [{"term": {"price": 35.5}}]),
        (
            FilterCondition(field="category", op="ne", value="shoes"),
            [{"bool": {"must_not": [{"term": {"category": "shoes"}}]}}],
        ),
        (FilterCondition(field="price", op="lt", value=10), [{"range": {"price": {"lt": 10}}}]),
        (FilterCondition(field="price", op="lte", value=120.5), [{"range": {"price": {"lte": 120.5}}}]),
        (FilterCondition(field="price", op="gt", value=0), [{"range": {"price": {"gt": 0}}}]),
        (FilterCondition(field="price", op="gte", value=99.9), [{"range": {"price": {"gte": 99.9}}}]),
        (FilterCondition(field="color", op="in", value=["red", "black"]), [{"terms": {"color": ["red", "black"]}}]),
        (
            FilterCondition(field="color", op="nin", value=["red", "blue"]),
            [{"bool": {"must_not": [{"terms": {"color": ["red", "blue"]}}]}}],
        ),
    ],
)
def test_filter_for_every_op(condition: FilterCondition, expected: list[dict[str, Any]]) -> None:
    assert build_filter([condition]) == expected


def test_filters_combine_positive_first_then_one_must_not() -> None:
    assert build_filter(
        [
            FilterCondition(field="category", op="ne", value="bags"),
            FilterCondition(field="price", op="lte", value=120),
            FilterCondition(field="color", op="nin", value=["red"]),
            FilterCondition(field="in_stock", op="eq", value=True),
        ]
    ) == [
        {"range": {"price": {"lte": 120}}},
        {"term": {"in_stock": True}},
        {"bool": {"must_not": [{"term": {"category": "bags"}}, {"terms": {"color": ["red"]}}]}},
    ]
    assert build_filter([]) == []


def test_hostile_values_stay_values() -> None:
    """User text is a JSON value of term / multi_match, never query syntax (no query_string anywhere)."""
    hostile = 'shoes" OR *:* AND NOT brand:(x) \\" }'
    query = HybridQuery(
        retrievers=(Retriever("bm25", 1.0, text=hostile), Retriever("image", 1.0, dense=unit(1))),
        filters=(FilterCondition(field="category", value=hostile),),
        fusion="rrf",
        rrf_k=60,
        limit=10,
        candidates=20,
    )
    searches = build_msearch(query, INDEX)
    assert searches[1]["query"]["bool"]["must"][0]["multi_match"]["query"] == hostile
    assert searches[1]["query"]["bool"]["filter"] == [{"term": {"category": hostile}}]
    serialised = json.dumps([searches, build_retriever_search(query, INDEX)])
    assert "query_string" not in serialised and "simple_query_string" not in serialised


# -- msearch bodies ----------------------------------------------------------------------
QVEC = unit(1, 0.5)
SHOES_UNDER_100 = [FilterCondition(field="category", value="shoes"), FilterCondition(field="price", op="lt", value=100)]
FLT = [{"term": {"category": "shoes"}}, {"range": {"price": {"lt": 100}}}]
SOURCE = {"excludes": ["image_vector", "text_vector"]}


def knn_body(field_name: str, k: int, flt: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    knn: dict[str, Any] = {"field": field_name, "query_vector": as_list(QVEC), "k": k, "num_candidates": 2 * k}
    if flt:
        knn["filter"] = flt
    return {"knn": knn, "size": k, "_source": SOURCE, "track_total_hits": False}


def bm25_query(text: str, flt: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    boolean: dict[str, Any] = {
        "must": [
            {
                "multi_match": {
                    "query": text,
                    "fields": ["title^3", "caption^2", "description"],
                    "type": "best_fields",
                    "tie_breaker": 0.3,
                }
            }
        ]
    }
    if flt:
        boolean["filter"] = flt
    return {"bool": boolean}


def bm25_body(text: str, k: int, flt: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"query": bm25_query(text, flt), "size": k, "_source": SOURCE, "track_total_hits": False}


def fields_mapping() -> dict[str, Any]:
    return mapping_response(extra={"category": {"type": "keyword"}, "price": {"type": "double"}})


def query_for(cluster: FakeCluster, request: SearchRequest) -> HybridQuery:
    """The HybridQuery the real searcher builds for ``request`` (index_info read through the fake)."""
    cluster.script.append((200, fields_mapping()))
    searcher = HybridSearcher(backend_on(cluster))
    return searcher.build_query(request, dense=QVEC)


def test_msearch_text_only(cluster: FakeCluster) -> None:
    query = query_for(cluster, SearchRequest(text="red leather boots", k=10))
    assert build_msearch(query, INDEX) == [
        {"index": INDEX},
        knn_body("image_vector", 100),
        {"index": INDEX},
        knn_body("text_vector", 100),
        {"index": INDEX},
        bm25_body("red leather boots", 100),
    ]


def test_msearch_image_only_has_no_bm25(cluster: FakeCluster) -> None:
    query = query_for(cluster, SearchRequest(image="look.jpg", k=5, candidates=40, filters=SHOES_UNDER_100))
    assert build_msearch(query, INDEX) == [
        {"index": INDEX},
        knn_body("image_vector", 40, FLT),
        {"index": INDEX},
        knn_body("text_vector", 40, FLT),
    ]


def test_msearch_composed_query_with_filters(cluster: FakeCluster) -> None:
    request = SearchRequest(
        image="look.jpg", text="but in black", weights=Weights(image=1, text=0.5, bm25=2), filters=SHOES_UNDER_100
    )
    query = query_for(cluster, request)
    assert build_msearch(query, INDEX) == [
        {"index": INDEX},
        knn_body("image_vector", 100, FLT),
        {"index": INDEX},
        knn_body("text_vector", 100, FLT),
        {"index": INDEX},
        bm25_body("but in black", 100, FLT),
    ]


def test_windows_are_capped_at_ten_thousand() -> None:
    query = HybridQuery(
        retrievers=(Retriever("image", 1.0, dense=QVEC),),
        filters=(),
        fusion="rrf",
        rrf_k=60,
        limit=11000,
        candidates=22000,
    )
    body = build_msearch(query, INDEX)[1]
    assert body["size"] == 10000 and body["knn"]["k"] == 10000 and body["knn"]["num_candidates"] == 10000


# -- retriever bodies --------------------------------------------------------------------
def hybrid(fusion_name: str, weights: tuple[float, float, float] = (1, 1, 1), rrf_k: float = 60) -> HybridQuery:
    return HybridQuery(
        retrievers=(
            Retriever("image", weights[0], dense=QVEC),
            Retriever("text", weights[1], dense=QVEC),
            Retriever("bm25", weights[2], text="red boots"),
        ),
        filters=tuple(SHOES_UNDER_100),
        fusion=fusion_name,  # type: ignore[arg-type]
        rrf_k=rrf_k,
        limit=20,
        candidates=50,
    )


def knn_clause(field_name: str, k: int) -> dict[str, Any]:
    return knn_body(field_name, k, FLT)["knn"]


def test_rrf_retriever_body() -> None:
    assert build_retriever_search(hybrid("rrf"), INDEX) == {
        "retriever": {
            "rrf": {
                "retrievers": [
                    {"knn": knn_clause("image_vector", 50)},
                    {"knn": knn_clause("text_vector", 50)},
                    {"standard": {"query": bm25_query("red boots", FLT)}},
                ],
                "rank_constant": 60,
                "rank_window_size": 50,
            }
        },
        "size": 20,
        "_source": SOURCE,
        "track_total_hits": False,
    }


def test_linear_retriever_body_keeps_weights() -> None:
    assert build_retriever_search(hybrid("linear", (2, 0.5, 1)), INDEX) == {
        "retriever": {
            "linear": {
                "retrievers": [
                    {"retriever": {"knn": knn_clause("image_vector", 50)}, "weight": 2.0, "normalizer": "minmax"},
                    {"retriever": {"knn": knn_clause("text_vector", 50)}, "weight": 0.5, "normalizer": "minmax"},
                    {
                        "retriever": {"standard": {"query": bm25_query("red boots", FLT)}},
                        "weight": 1.0,
                        "normalizer": "minmax",
                    },
                ],
                "rank_window_size": 50,
            }
        },
        "size": 20,
        "_source": SOURCE,
        "track_total_hits": False,
    }


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (hybrid("rrf", (2, 1, 1)), "weighted RRF"),
        (hybrid("rrf", rrf_k=2.5), "integer >= 1"),
        (hybrid("rrf", rrf_k=0), "integer >= 1"),
        (hybrid("dbsf"), "no dbsf fusion"),
        (hybrid("zscore"), "no zscore fusion"),
    ],
)
def test_fusions_elasticsearch_cannot_compute_stay_client_side(query: HybridQuery, reason: str) -> None:
    assert build_retriever_search(query, INDEX) is None
    assert reason in (server_fusion_unsupported_reason(query) or "")
    single = HybridQuery((Retriever("image", 1.0, dense=QVEC),), (), "rrf", 60, 10, 20)
    assert build_retriever_search(single, INDEX) is None


def test_elasticsearch_rrf_is_clipfuse_rrf_with_unit_weights() -> None:
    """The worked example of Elasticsearch's RRF page (rank_constant 1) through clipfuse.plugin.fusion.rrf."""
    query_hits = [Ranked("4", 0.16), Ranked("3", 0.15), Ranked("2", 0.14), Ranked("1", 0.13)]
    knn_hits = [Ranked("3", 1.0), Ranked("2", 0.5), Ranked("1", 0.2), Ranked("5", 0.1)]
    fused = fusion.rrf([query_hits, knn_hits], k=1)
    assert [(f.id, round(f.score, 4)) for f in fused] == [
        ("3", 0.8333),
        ("2", 0.5833),
        ("4", 0.5),
        ("1", 0.45),
        ("5", 0.2),
    ]


# -- search through the real client ------------------------------------------------------
def hit(doc_id: str, score: float, **source: Any) -> dict[str, Any]:
    return {"_index": INDEX, "_id": doc_id, "_score": score, "_source": {"doc_id": doc_id, **source}}


def search_response(*hits: dict[str, Any]) -> dict[str, Any]:
    return {
        "took": 2,
        "timed_out": False,
        "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
        "hits": {"max_score": hits[0]["_score"] if hits else None, "hits": list(hits)},
        "status": 200,
    }


# a recorded msearch answer for "red boots" over image / text / bm25; kNN _score = (1 + cos) / 2
MSEARCH = {
    "took": 5,
    "responses": [
        search_response(
            hit("boot-red", 0.99, title="Red boots", price=110.0),
            hit("boot-black", 0.95, title="Black boots", price=130.0),
            hit("bag-red", 0.80, title="Red bag", price=90.0),
        ),
        search_response(
            hit("boot-black", 0.97, title="Black boots", price=130.0),
            hit("boot-red", 0.96, title="Red boots", price=110.0),
        ),
        search_response(
            hit("boot-red", 7.5, title="Red boots", price=110.0), hit("bag-red", 2.1, title="Red bag", price=90.0)
        ),
    ],
}


def test_client_side_search_through_the_real_client(cluster: FakeCluster) -> None:
    cluster.script += [(200, fields_mapping()), (200, MSEARCH)]
    searcher = HybridSearcher(backend_on(cluster))
    response = searcher.search(SearchRequest(text="red boots", k=3), dense=QVEC)

    msearch = cluster.calls[-1]
    assert (msearch.method, msearch.path) == ("POST", f"/{INDEX}/_msearch")
    assert msearch.content_type is not None and "x-ndjson" in msearch.content_type
    assert msearch.body == build_msearch(searcher.build_query(SearchRequest(text="red boots", k=3), QVEC), INDEX)

    lists = [
        [Ranked("boot-red", 0.98), Ranked("boot-black", 0.90), Ranked("bag-red", 0.60)],
        [Ranked("boot-black", 0.94), Ranked("boot-red", 0.92)],
        [Ranked("boot-red", 7.5), Ranked("bag-red", 2.1)],
    ]
    expected = fusion.rrf(lists, k=60, limit=3)
    assert response.fused_by == "client"
    assert [h.id for h in response.hits] == [f.id for f in expected] == ["boot-red", "boot-black", "bag-red"]
    assert [h.score for h in response.hits] == pytest.approx([f.score for f in expected])
    top = response.hits[0]
    assert top.signals.image == pytest.approx(0.98) and top.signals.text == pytest.approx(0.92)
    assert top.signals.bm25 == pytest.approx(7.5) and top.ranks.text == 2
    assert top.payload == {"title": "Red boots", "price": 110.0}  # doc_id and vectors are not payload


def test_pagination_slices_the_fused_ranking(cluster: FakeCluster) -> None:
    cluster.script += [(200, fields_mapping()), (200, MSEARCH), (200, MSEARCH)]
    searcher = HybridSearcher(backend_on(cluster))
    page1 = searcher.search(SearchRequest(text="red boots", k=2), dense=QVEC).hits
    page2 = searcher.search(SearchRequest(text="red boots", k=2, offset=2), dense=QVEC).hits
    assert [h.id for h in page1 + page2] == ["boot-red", "boot-black", "bag-red"]
    assert [h.rank for h in page2] == [3]


def test_server_side_rrf_through_the_real_client(cluster: FakeCluster) -> None:
    fused = search_response(
        hit("boot-red", 0.0489, title="Red boots"),
        hit("boot-black", 0.0325, title="Black boots"),
        hit("bag-red", 0.0320, title="Red bag"),
    )
    cluster.script += [(200, fields_mapping()), (200, MSEARCH), (200, fused)]
    backend = backend_on(cluster, server_side_fusion=True)
    searcher = HybridSearcher(backend)
    request = SearchRequest(text="red boots", k=2)
    response = searcher.search(request, dense=QVEC)

    search = cluster.calls[-1]
    assert (search.method, search.path) == ("POST", f"/{INDEX}/_search")
    assert search.body == build_retriever_search(searcher.build_query(request, QVEC), INDEX)
    assert response.fused_by == "engine"
    assert [(h.id, h.score) for h in response.hits] == [("boot-red", 0.0489), ("boot-black", 0.0325)]
    assert response.hits[0].signals.bm25 == pytest.approx(7.5)  # per-signal scores still from the msearch


def test_licence_refusal_falls_back_to_client_fusion_once(cluster: FakeCluster) -> None:
    refused = error_body(
        403,
        "security_exception",
        "current license is non-compliant for [Reciprocal Rank Fusion (RRF)]",
        **{"license.expired.feature": "Reciprocal Rank Fusion (RRF)"},
    )
    cluster.script += [(200, fields_mapping()), (200, MSEARCH), (403, refused), (200, MSEARCH)]
    backend = backend_on(cluster, server_side_fusion=True)
    searcher = HybridSearcher(backend)
    first = searcher.search(SearchRequest(text="red boots", k=3), dense=QVEC)
    assert first.fused_by == "client" and first.hits[0].id == "boot-red"
    assert backend.server_fusion_refused is not None and "non-compliant" in backend.server_fusion_refused
    second = searcher.search(SearchRequest(text="red boots", k=3), dense=QVEC)
    assert second.fused_by == "client"
    assert [c.path for c in cluster.calls].count(f"/{INDEX}/_search") == 1  # not asked again


def test_old_cluster_without_the_linear_retriever_falls_back(cluster: FakeCluster) -> None:
    unknown = error_body(400, "parsing_exception", "unknown retriever [linear]")
    cluster.script += [(200, fields_mapping()), (200, MSEARCH), (400, unknown)]
    searcher = HybridSearcher(backend_on(cluster, server_side_fusion=True))
    assert searcher.search(SearchRequest(text="red boots", fusion="linear", k=3), dense=QVEC).fused_by == "client"


def test_other_retriever_errors_are_not_swallowed(cluster: FakeCluster) -> None:
    cluster.script += [
        (200, fields_mapping()),
        (200, MSEARCH),
        (400, error_body(400, "illegal_argument_exception", "boom")),
    ]
    searcher = HybridSearcher(backend_on(cluster, server_side_fusion=True))
    with pytest.raises(BackendError, match="illegal_argument_exception: boom"):
        searcher.search(SearchRequest(text="red boots", k=3), dense=QVEC)


def test_msearch_item_errors_are_raised(cluster: FakeCluster) -> None:
    rejected = {"error": {"type": "es_rejected_execution_exception", "reason": "queue full"}, "status": 429}
    failed = error_body(400, "search_phase_execution_exception", "all shards failed")
    query = hybrid("rrf")
    cluster.script += [
        (200, {"responses": [MSEARCH["responses"][0], rejected, MSEARCH["responses"][2]]}),
        (200, {"responses": [MSEARCH["responses"][0], MSEARCH["responses"][1], failed]}),
    ]
    backend = backend_on(cluster)
    with pytest.raises(BackendUnavailable, match="es_rejected_execution_exception"):
        backend.search(query)
    with pytest.raises(BackendError, match="search_phase_execution_exception: all shards failed"):
        backend.search(query)


# -- writes ------------------------------------------------------------------------------
def test_upsert_maps_item_errors_to_rejections(cluster: FakeCluster) -> None:
    parse_error = {
        "type": "document_parsing_exception",
        "reason": "[1:42] failed to parse field [price] of type [double] in document with id 'b'",
        "caused_by": {"type": "number_format_exception", "reason": 'For input string: "cheap"'},
    }
    cluster.script += [(200, mapping_response()), bulk_answer({"b": (400, parse_error)})]
    backend = backend_on(cluster, refresh="wait_for")
    failures = backend.upsert([doc("a"), doc("b", price="cheap"), doc("c", vec=np.ones(DIM + 1, dtype=np.float32))])
    assert failures == {
        "b": "document_parsing_exception: [1:42] failed to parse field [price] of type [double] in document with "
        "id 'b' (caused by number_format_exception: For input string: \"cheap\")",
        "c": "image vector has 5 dimensions (shape (5,)); the index expects 4",
    }
    bulk = cluster.calls[-1]
    assert (bulk.method, bulk.path, bulk.params) == ("PUT", f"/{INDEX}/_bulk", {"refresh": "wait_for"})
    assert [line for line in bulk.body if "index" in line] == [
        {"index": {"_index": INDEX, "_id": "a"}},
        {"index": {"_index": INDEX, "_id": "b"}},
    ]  # "c" never left the process
    assert bulk.body[1] == build_bulk_actions([doc("a")], INDEX)[0]["_source"]


def test_upsert_refuses_bad_documents_before_sending(cluster: FakeCluster) -> None:
    cluster.script += [(200, mapping_response())]
    backend = backend_on(cluster)
    nan = np.array([np.nan, 0, 0, 1], dtype=np.float32)
    failures = backend.upsert(
        [
            doc("x" * 300 + "é" * 150),
            doc("nan", vec=nan),
            doc("zero", vec=np.zeros(DIM, dtype=np.float32)),
            IndexedDocument(id="clash", payload={"image_vector": "oops"}),
        ]
    )
    assert "Elasticsearch ids are at most 512" in failures["x" * 300 + "é" * 150]
    assert failures["nan"] == "image vector has non-finite values"
    assert "all zeros" in failures["zero"] and "reserved" in failures["clash"]
    assert len(cluster.calls) == 1  # only the mapping was read


def test_rejected_items_are_retried_then_unavailable_never_a_rejection(cluster: FakeCluster) -> None:
    full = {"type": "es_rejected_execution_exception", "reason": "rejected execution of coordinating operation"}
    cluster.script += [(200, mapping_response())] + [bulk_answer({"b": (429, full)}) for _ in range(3)]
    backend = backend_on(cluster, max_retries=2)
    with pytest.raises(BackendUnavailable, match="retry later"):
        backend.upsert([doc("a"), doc("b")])
    bulks = [c for c in cluster.calls if c.path.endswith("/_bulk")]
    assert len(bulks) == 3
    assert [line for line in bulks[1].body if "index" in line] == [{"index": {"_index": INDEX, "_id": "b"}}]


def test_a_retry_that_succeeds_is_silent(cluster: FakeCluster) -> None:
    full = {"type": "es_rejected_execution_exception", "reason": "queue full"}
    cluster.script += [(200, mapping_response()), bulk_answer({"b": (429, full)}), bulk_answer()]
    assert backend_on(cluster, max_retries=3).upsert([doc("a"), doc("b")]) == {}


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_overloaded_or_unavailable_responses_are_retryable(cluster: FakeCluster, status: int) -> None:
    body = error_body(status, "es_rejected_execution_exception", "rejected")
    cluster.script += [(200, mapping_response()), (status, body), (status, body)]
    backend = backend_on(cluster, max_retries=1)
    with pytest.raises(BackendUnavailable, match=f"unavailable \\({status}"):
        backend.upsert([doc("a")])
    cluster.script += [(status, body)]
    with pytest.raises(BackendUnavailable):
        backend.count()


def test_unreachable_cluster_is_retryable() -> None:
    client = Elasticsearch("http://127.0.0.1:9", max_retries=0, request_timeout=2)
    backend = ElasticsearchBackend(client, INDEX)
    with pytest.raises(BackendUnavailable, match="cannot reach Elasticsearch"):
        backend.count()
    with pytest.raises(BackendUnavailable, match="cannot reach Elasticsearch"):
        backend.ensure_schema(dim=DIM, model="m1")
    with pytest.raises(BackendUnavailable, match="cannot reach Elasticsearch"):
        backend.upsert([doc("a")])  # reading the mapping
    backend._info = IndexInfo(dim=DIM, model="m1", fields={})
    with pytest.raises(BackendUnavailable, match="cannot reach Elasticsearch while indexing 1 documents in"):
        backend.upsert([doc("a")])  # the bulk request itself
    with pytest.raises(BackendUnavailable, match="cannot reach Elasticsearch"):
        backend.search(hybrid("rrf"))


def test_delete_by_id_ignores_missing_documents(cluster: FakeCluster) -> None:
    cluster.script += [bulk_answer({"gone": (404, {})})]
    backend_on(cluster, refresh=True).delete(["a", "gone"])
    call = cluster.calls[-1]
    assert call.params == {"refresh": "true"}
    assert call.body == [{"delete": {"_index": INDEX, "_id": "a"}}, {"delete": {"_index": INDEX, "_id": "gone"}}]
    broken = {"type": "version_conflict_engine_exception", "reason": "conflict"}
    cluster.script += [bulk_answer({"a": (409, broken)})]
    with pytest.raises(BackendError, match="version_conflict_engine_exception"):
        backend_on(cluster).delete(["a"])


def test_count(cluster: FakeCluster) -> None:
    cluster.script += [
        (200, {"count": 42, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}),
        (404, error_body(404, "index_not_found_exception", "no such index [products]")),
    ]
    backend = backend_on(cluster)
    assert backend.count() == 42
    assert (cluster.calls[0].method, cluster.calls[0].path) == ("POST", f"/{INDEX}/_count")
    assert backend.count() == 0


# -- schema ------------------------------------------------------------------------------
def test_ensure_schema_creates_the_index(cluster: FakeCluster) -> None:
    cluster.script += [
        (404, error_body(404, "index_not_found_exception", "no such index [products]")),
        (200, {"acknowledged": True, "shards_acknowledged": True, "index": INDEX}),
    ]
    backend = backend_on(cluster, vector_index_type="bbq_hnsw")
    backend.ensure_schema(dim=768, model="ViT-L-14")
    get, put = cluster.calls
    assert (get.method, get.path) == ("GET", f"/{INDEX}/_mapping")
    assert (put.method, put.path) == ("PUT", f"/{INDEX}")
    assert put.body == build_index_body(768, "ViT-L-14", "bbq_hnsw")


def test_ensure_schema_twice_is_a_noop(cluster: FakeCluster) -> None:
    cluster.script += [(200, mapping_response()), (200, mapping_response())]
    backend = backend_on(cluster)
    backend.ensure_schema(dim=DIM, model="m1")
    backend.ensure_schema(dim=DIM, model="m1")
    assert [c.method for c in cluster.calls] == ["GET", "GET"]


def test_ensure_schema_race_is_success(cluster: FakeCluster) -> None:
    exists = error_body(400, "resource_already_exists_exception", "index [products/abc] already exists")
    cluster.script += [
        (404, error_body(404, "index_not_found_exception", "no such index")),
        (400, exists),
        (200, mapping_response()),
    ]
    backend_on(cluster).ensure_schema(dim=DIM, model="m1")
    assert [c.method for c in cluster.calls] == ["GET", "PUT", "GET"]


def test_ensure_schema_mismatches_are_clear(cluster: FakeCluster) -> None:
    cluster.script += [
        (200, mapping_response(dim=DIM)),
        (200, mapping_response(dim=DIM)),
        (200, {INDEX: {"mappings": {}}}),
    ]
    backend = backend_on(cluster)
    with pytest.raises(ConfigurationError, match=r"holds 4-dimensional vectors but the model m1 makes 16"):
        backend.ensure_schema(dim=16, model="m1")
    with pytest.raises(ConfigurationError, match="built with model 'm1', not 'm2'"):
        backend.ensure_schema(dim=DIM, model="m2")
    with pytest.raises(ConfigurationError, match="not made by clipfuse"):
        backend.ensure_schema(dim=DIM, model="m1")


def test_register_fields_puts_mapping_and_merged_meta(cluster: FakeCluster) -> None:
    existing = mapping_response(extra={"color": {"type": "keyword"}})
    cluster.script += [(200, existing), (200, {"acknowledged": True}), (200, existing)]
    backend = backend_on(cluster)
    backend.register_fields({"price": "number", "in_stock": "bool", "color": "keyword"})
    put = cluster.calls[1]
    assert (put.method, put.path) == ("PUT", f"/{INDEX}/_mapping")
    assert put.body == {
        "properties": {"price": {"type": "double"}, "in_stock": {"type": "boolean"}},
        "_meta": {
            "clipfuse": {
                "version": 1,
                "model": "m1",
                "dim": DIM,
                "fields": {"color": "keyword", "price": "number", "in_stock": "bool"},
            }
        },
    }
    backend.register_fields({"color": "keyword"})  # known: reads, sends nothing
    assert len(cluster.calls) == 3
    cluster.script += [(200, existing)]
    backend.register_fields({"image_vector": "keyword", "title": "keyword"})  # clipfuse's own: not remapped
    assert len(cluster.calls) == 4 and cluster.calls[-1].method == "GET"


def test_index_info_reads_meta_and_mapping(cluster: FakeCluster) -> None:
    mapping = mapping_response(
        extra={"brand": {"type": "keyword"}, "stock": {"type": "long"}, "sale": {"type": "boolean"}}
    )
    mapping[INDEX]["mappings"]["_meta"]["clipfuse"]["fields"] = {"brand": "keyword"}
    cluster.script += [(200, mapping), (404, error_body(404, "index_not_found_exception", "no such index"))]
    backend = backend_on(cluster)
    info = backend.index_info()
    assert info is not None and info.dim == DIM and info.model == "m1"
    assert dict(info.fields) == {"brand": "keyword", "stock": "number", "sale": "bool"}
    assert backend.index_info() is None


# -- wiring ------------------------------------------------------------------------------
def test_backend_for_wraps_an_elasticsearch_client() -> None:
    client = Elasticsearch("http://es.test:9200")
    backend = backend_for(client, "products")
    assert isinstance(backend, ElasticsearchBackend) and backend.index == "products" and backend.lexical == "native"
    assert isinstance(backend, Backend)  # the protocol, structurally
    with pytest.raises(ConfigurationError, match="refresh must be"):
        ElasticsearchBackend(client, "products", refresh="sometimes")
    assert isinstance(HybridSearcher(client, index="products").backend, ElasticsearchBackend)
    with pytest.raises(ConfigurationError, match="needs index="):
        HybridSearcher(client)


def test_open_client_sends_nothing_and_checks_auth(cluster: FakeCluster) -> None:
    client = open_elasticsearch_client("https://127.0.0.1:9", api_key="a2V5", request_timeout=5)
    assert isinstance(client, Elasticsearch)
    assert isinstance(open_elasticsearch_client("http://127.0.0.1:9", username="u", password="p"), Elasticsearch)
    with pytest.raises(ConfigurationError, match="not both"):
        open_elasticsearch_client("http://x:9200", api_key="k", username="u", password="p")
    with pytest.raises(ConfigurationError, match="both a username and a password"):
        open_elasticsearch_client("http://x:9200", username="u")


def test_bm25_needs_text_and_dense_needs_a_vector() -> None:
    with pytest.raises(InvalidQuery, match="bm25 signal needs query text"):
        build_msearch(HybridQuery((Retriever("bm25", 1.0),), (), "rrf", 60, 10, 10), INDEX)
    with pytest.raises(InvalidQuery, match="image signal needs a query vector"):
        build_msearch(HybridQuery((Retriever("image", 1.0),), (), "rrf", 60, 10, 10), INDEX)


def test_importing_the_plugin_does_not_import_elasticsearch() -> None:
    code = "import sys, clipfuse.plugin; print('elasticsearch' in sys.modules, 'elastic_transport' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


# -- e-commerce ranking through the real client: window, facets, collapse, boosts, rules, cursors --------
SHOP = {
    "boot-red": {"title": "Red boots", "color": "red", "group_id": "boot", "popularity": 10.0, "sizes": ["38", "39"]},
    "boot-black": {"title": "Black boots", "color": "black", "group_id": "boot", "popularity": 900.0, "sizes": ["39"]},
    "bag-red": {"title": "Red bag", "color": "red", "popularity": 50.0},
}


def shop_mapping() -> dict[str, Any]:
    return mapping_response(
        extra={
            "color": {"type": "keyword"},
            "group_id": {"type": "keyword"},
            "popularity": {"type": "double"},
            "sizes": {"type": "keyword"},
        }
    )


def shop_msearch() -> dict[str, Any]:
    def h(doc_id: str, score: float) -> dict[str, Any]:
        return hit(doc_id, score, **SHOP[doc_id])

    return {
        "took": 5,
        "responses": [
            search_response(h("boot-red", 0.99), h("boot-black", 0.95), h("bag-red", 0.80)),
            search_response(h("boot-black", 0.97), h("boot-red", 0.96)),
            # BM25 ties come back in Elasticsearch's internal order; clipfuse orders them by id
            search_response(h("boot-red", 7.5), h("bag-red", 2.1), h("boot-black", 2.1)),
        ],
    }


def mget_answer(call: Call) -> tuple[int, Any]:
    docs = []
    for wanted in call.body["docs"]:
        source = SHOP.get(wanted["_id"])
        if source is None:
            docs.append({"_index": INDEX, "_id": wanted["_id"], "found": False})
        else:
            spec = wanted["_source"]
            includes = [] if spec is False else spec.get("includes")
            body = {k: v for k, v in source.items() if includes is None or k in includes}
            docs.append(
                {"_index": INDEX, "_id": wanted["_id"], "found": True, "_source": {"doc_id": wanted["_id"], **body}}
            )
    return 200, {"docs": docs}


def test_window_features_use_one_msearch_and_count_what_it_returned(cluster: FakeCluster) -> None:
    cluster.script += [(200, shop_mapping()), (200, shop_msearch())]
    searcher = HybridSearcher(backend_on(cluster))
    request = SearchRequest.model_validate(
        {
            "text": "red boots",
            "k": 1,
            "facets": ["color", "sizes", "popularity"],
            "collapse": {"field": "group_id", "fields": ["color"]},
            "boosts": [{"type": "field", "field": "popularity", "function": "log1p", "weight": 0.1}],
        }
    )
    response = searcher.search(request, dense=QVEC)
    msearch = cluster.calls[-1]
    assert msearch.path == f"/{INDEX}/_msearch" and len(cluster.calls) == 2  # no request per page or per facet
    assert [body["size"] for body in msearch.body[1::2]] == [100, 100, 100]  # every signal's whole window

    lists = [
        [Ranked("boot-red", 0.98), Ranked("boot-black", 0.90), Ranked("bag-red", 0.60)],
        [Ranked("boot-black", 0.94), Ranked("boot-red", 0.92)],
        [Ranked("boot-red", 7.5), Ranked("bag-red", 2.1), Ranked("boot-black", 2.1)],  # tie: id order
    ]
    fused = {f.id: f.score for f in fusion.rrf(lists, k=60)}
    lo, hi = min(fused.values()), max(fused.values())
    final = {d: (s - lo) / (hi - lo) + 0.1 * np.log1p(SHOP[d]["popularity"]) for d, s in fused.items()}
    best = max(["boot-red", "boot-black"], key=lambda d: final[d])
    other = "boot-red" if best == "boot-black" else "boot-black"
    assert [h.id for h in response.hits] == [best]
    top = response.hits[0]
    assert top.score == pytest.approx(final[best]) and top.explanation is not None
    assert top.explanation.fused == pytest.approx(fused[best])
    assert [(v.id, v.payload) for v in top.variants] == [(other, {"color": SHOP[other]["color"]})]
    assert response.total is not None and (response.total.value, response.total.relation) == (2, "eq")
    # facets over the window, counting groups: the boot group is red and black, sizes 38 and 39 once
    assert response.facets == {"color": {"red": 2, "black": 1}, "sizes": {"38": 1, "39": 1}}
    assert response.facets_stats["popularity"].sum == pytest.approx(960.0)
    assert response.facets_count == "groups"

    # the next page comes from the frozen ranking: one _mget for the page's payloads, no search
    cluster.script.append(mget_answer)
    page2 = searcher.search(SearchRequest(cursor=response.next_cursor))
    mget = cluster.calls[-1]
    assert (mget.method, mget.path) == ("POST", f"/{INDEX}/_mget")
    assert mget.body == build_mget(["bag-red"])
    assert mget.body == {"docs": [{"_id": "bag-red", "_source": {"excludes": ["image_vector", "text_vector"]}}]}
    assert [h.id for h in page2.hits] == ["bag-red"] and page2.hits[0].payload["title"] == "Red bag"
    assert page2.next_cursor is None and page2.facets == response.facets


def test_rules_check_their_ids_and_pin_outside_the_window_through_mget(cluster: FakeCluster) -> None:
    from clipfuse.schemas.rules import parse_rules

    SHOP["tote-red"] = {"title": "Red tote", "color": "red", "popularity": 1.0}
    try:
        cluster.script += [(200, shop_mapping()), mget_answer]
        searcher = HybridSearcher(backend_on(cluster))
        rules = parse_rules(
            [
                {
                    "id": "tote",
                    "conditions": [{"pattern": "boots", "anchoring": "contains"}],
                    "consequence": {"pin": [{"id": "tote-red", "position": 1}], "hide": ["boot-black"]},
                }
            ]
        )
        searcher.load_rules(rules)
        assert cluster.calls[-1].body == build_mget(["boot-black", "tote-red"], ())
        cluster.script += [(200, shop_msearch()), mget_answer]
        response = searcher.search(SearchRequest(text="red boots", k=3), dense=QVEC)
        assert cluster.calls[-1].body == build_mget(["tote-red"])  # the pinned document outside the window
        assert [h.id for h in response.hits] == ["tote-red", "boot-red", "bag-red"]
        assert response.hits[0].rule == "tote" and response.hits[0].payload["title"] == "Red tote"
        cluster.script.append(mget_answer)
        with pytest.raises(ConfigurationError, match=r"rule 'bad' names documents the index does not hold: \['gone'\]"):
            searcher.load_rules(
                parse_rules([{"id": "bad", "conditions": [{"pattern": "x"}], "consequence": {"hide": ["gone"]}}])
            )
        assert searcher.rules.rules[0].id == "tote"
    finally:
        del SHOP["tote-red"]


# -- facet_scope "matches": aggregations over the keyword matches -------------------------
def test_facets_over_the_matches_are_one_aggregation_request(cluster: FakeCluster) -> None:
    """The exact body (the BM25 signal's multi_match, the filters, terms / stats / group counts) and the
    parsed counts: sorted by count then value, cut to max_values, groups = distinct values + loose docs."""
    cluster.script += [(200, shop_mapping()), (200, shop_msearch())]
    aggregations = {
        "f0": {"buckets": [{"key": "red", "doc_count": 2, "groups": {"value": 1}, "loose": {"doc_count": 1}},
                           {"key": "black", "doc_count": 1, "groups": {"value": 1}, "loose": {"doc_count": 0}},
                           {"key": "blue", "doc_count": 2, "groups": {"value": 2}, "loose": {"doc_count": 0}}]},
        "f1": {"count": 3, "min": 10.0, "max": 900.0, "avg": 320.0, "sum": 960.0},
        "f2": {"buckets": [{"key": "39", "doc_count": 2, "groups": {"value": 1}, "loose": {"doc_count": 0}}]},
        "groups": {"value": 2},
        "loose": {"doc_count": 1},
    }  # fmt: skip
    cluster.script.append((200, {"hits": {"total": {"value": 5, "relation": "eq"}, "hits": []},
                                 "aggregations": aggregations}))  # fmt: skip
    searcher = HybridSearcher(backend_on(cluster))
    request = SearchRequest(
        text="red boots",
        filters=[FilterCondition(field="popularity", op="gte", value=5)],
        facets=["color", "popularity", "sizes"],
        facet_scope="matches",
        collapse="group_id",
        max_values_per_facet=2,
        k=2,
    )
    response = searcher.search(request, dense=QVEC)
    body = cluster.calls[-1].body
    assert cluster.calls[-1].path == f"/{INDEX}/_search"
    groups = {
        "groups": {"cardinality": {"field": "group_id", "precision_threshold": 40000}},
        "loose": {"missing": {"field": "group_id"}},
    }
    assert body == {
        "size": 0,
        "track_total_hits": True,
        "query": {
            "bool": {
                "must": [
                    {"multi_match": {"query": "red boots", "fields": ["title^3", "caption^2", "description"],
                                     "type": "best_fields"}}
                ],
                "filter": [{"range": {"popularity": {"gte": 5}}}],
            }
        },
        "aggs": {
            "f0": {"terms": {"field": "color", "size": 10000}, "aggs": groups},
            "f1": {"stats": {"field": "popularity"}},
            "f2": {"terms": {"field": "sizes", "size": 10000}, "aggs": groups},
            **groups,
        },
    }  # fmt: skip
    assert response.facet_scope == "matches" and response.facets_count == "groups"
    assert response.facets == {"color": {"blue": 2, "red": 2}, "sizes": {"39": 1}}
    assert response.total is not None and (response.total.value, response.total.relation) == (3, "eq")
    stats = response.facets_stats["popularity"]
    assert (stats.count, stats.min, stats.max, stats.sum) == (3, 10.0, 900.0, 960.0)


def test_facets_over_the_matches_without_keywords_or_groups() -> None:
    from clipfuse.plugin.elasticsearch import build_facet_search, parse_facet_search
    from clipfuse.plugin.protocol import FacetQuery

    query = FacetQuery(fields={"in_stock": "bool"}, filters=(FilterCondition(field="color", value="red"),))
    body = build_facet_search(query)
    assert body["query"] == {"bool": {"filter": [{"term": {"color": "red"}}]}}
    assert body["aggs"] == {"f0": {"terms": {"field": "in_stock", "size": 10000}}}
    assert build_facet_search(FacetQuery(fields={"in_stock": "bool"}))["query"] == {"match_all": {}}
    answer = {
        "hits": {"total": {"value": 4, "relation": "eq"}},
        "aggregations": {"f0": {"buckets": [{"key": 1, "key_as_string": "true", "doc_count": 3},
                                            {"key": 0, "key_as_string": "false", "doc_count": 1}]}},
    }  # fmt: skip
    counts = parse_facet_search(answer, query)
    assert counts.facets == {"in_stock": {"true": 3, "false": 1}} and counts.total == 4 and counts.stats == {}


def test_declared_capabilities(cluster: FakeCluster) -> None:
    from clipfuse.plugin.protocol import Aliased, Facetable, Fetchable, Scrollable, Warmable, is_embedded

    backend = backend_on(cluster)
    for capability in (Aliased, Facetable, Fetchable, Scrollable):
        assert isinstance(backend, capability), capability
    assert not isinstance(backend, Warmable) and not is_embedded(backend)
    assert cluster.calls == []  # construction and the checks do no I/O

"""The backend contract and Elasticsearch specifics against a real cluster (8.15+ or 9.x).

Runs only when ``ELASTICSEARCH_URL`` is set (``ELASTICSEARCH_API_KEY``, or
``ELASTICSEARCH_USERNAME`` / ``ELASTICSEARCH_PASSWORD``, and ``ELASTICSEARCH_CA_CERTS``
when the cluster needs them). Use the elasticsearch-py major that matches the
cluster (9.x client for a 9.x cluster, 8.x client for an 8.x cluster): a 9.x client
asks for ``compatible-with=9``, which an 8.x server refuses. Every test works in
its own uuid-named index and deletes it; writes use ``refresh=True`` so they are
searchable at once. Vectors are small handmade unit vectors (dimension 8; 64 for
BBQ), so no model is needed.
"""

from __future__ import annotations

import copy
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from backend_contract import CATALOG, DIM, FIELDS, BackendContract, indexed, unit

from clipfuse.errors import ConfigurationError
from clipfuse.plugin import HybridSearcher, IndexedDocument, fusion
from clipfuse.plugin.elasticsearch import ElasticsearchBackend, open_elasticsearch_client
from clipfuse.schemas import SearchRequest, Weights

URL = os.environ.get("ELASTICSEARCH_URL")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not URL,
        reason="Elasticsearch live suite: set ELASTICSEARCH_URL (and ELASTICSEARCH_API_KEY if the cluster needs one)",
    ),
]


def _version(number: str) -> tuple[int, int]:
    major, minor = number.split("-")[0].split(".")[:2]
    return int(major), int(minor)


@pytest.fixture(scope="module")
def es_client() -> Iterator[Any]:
    import elasticsearch

    assert URL is not None
    client = open_elasticsearch_client(
        URL,
        api_key=os.environ.get("ELASTICSEARCH_API_KEY") or None,
        username=os.environ.get("ELASTICSEARCH_USERNAME") or None,
        password=os.environ.get("ELASTICSEARCH_PASSWORD") or None,
        ca_certs=os.environ.get("ELASTICSEARCH_CA_CERTS") or None,
    )
    try:
        info = client.info()
    except elasticsearch.ApiError as e:
        pytest.fail(
            f"ELASTICSEARCH_URL={URL} answered {e}: is elasticsearch-py {elasticsearch.__versionstr__} the "
            "same major version as the cluster? (a 9.x client cannot talk to an 8.x cluster)"
        )
    server = _version(info["version"]["number"])
    if server < (8, 15):
        pytest.fail(f"the cluster runs Elasticsearch {info['version']['number']}; clipfuse needs 8.15 or later")
    yield client
    client.close()


@pytest.fixture(scope="module")
def server_version(es_client: Any) -> tuple[int, int]:
    return _version(es_client.info()["version"]["number"])


@pytest.fixture(scope="module")
def licence(es_client: Any) -> str:
    """The cluster's licence type (``basic``, ``trial``, ``enterprise``, ...)."""
    return str(es_client.license.get()["license"]["type"])


@pytest.fixture
def index_name(es_client: Any) -> Iterator[str]:
    name = f"clipfuse-test-{uuid.uuid4().hex[:12]}"
    yield name
    es_client.options(ignore_status=404).indices.delete(index=name)


class TestElasticsearchContract(BackendContract):
    """The shared contract, client-side fusion. ``hnsw`` (float) so the exact score assertions hold."""

    @pytest.fixture
    def backend(self, es_client: Any, index_name: str) -> ElasticsearchBackend:
        return ElasticsearchBackend(es_client, index_name, vector_index_type="hnsw", refresh=True)


class TestElasticsearchContractServerFusion(BackendContract):
    """The shared contract with server-side fusion asked for (falls back to client-side where refused)."""

    @pytest.fixture
    def backend(self, es_client: Any, index_name: str) -> ElasticsearchBackend:
        return ElasticsearchBackend(
            es_client, index_name, vector_index_type="hnsw", refresh=True, server_side_fusion=True
        )


def _loaded(backend: ElasticsearchBackend, dim: int = DIM) -> ElasticsearchBackend:
    backend.ensure_schema(dim=dim, model="live-model")
    backend.register_fields(FIELDS)  # type: ignore[arg-type]
    assert backend.upsert([indexed(e, backend) for e in CATALOG]) == {}
    return backend


def test_default_int8_hnsw_index(es_client: Any, index_name: str) -> None:
    backend = _loaded(ElasticsearchBackend(es_client, index_name, refresh=True))
    mapping = es_client.indices.get_mapping(index=index_name)[index_name]["mappings"]
    assert mapping["properties"]["image_vector"]["index_options"]["type"] == "int8_hnsw"
    assert mapping["properties"]["image_vector"]["similarity"] == "cosine"
    assert mapping["_meta"]["clipfuse"]["model"] == "live-model"
    response = HybridSearcher(backend).search(
        SearchRequest(text="x", weights=Weights(image=1, text=0, bm25=0), k=3), dense=unit(1, 0.1)
    )
    assert response.hits[0].id == "boot-red"
    assert response.hits[0].signals.image == pytest.approx(1.0, abs=0.05)  # quantised scores are approximate


def test_vectors_are_not_stored_in_source(es_client: Any, index_name: str) -> None:
    _loaded(ElasticsearchBackend(es_client, index_name, vector_index_type="hnsw", refresh=True))
    source = es_client.get(index=index_name, id="boot-red")["_source"]
    assert "image_vector" not in source and "text_vector" not in source
    assert source["doc_id"] == "boot-red" and source["color"] == "red"


def test_bbq_hnsw_index(es_client: Any, index_name: str, server_version: tuple[int, int]) -> None:
    if server_version < (8, 16):
        pytest.skip(f"bbq_hnsw needs Elasticsearch 8.16+; the cluster runs {server_version}")
    backend = ElasticsearchBackend(es_client, index_name, vector_index_type="bbq_hnsw", refresh=True)
    backend.ensure_schema(dim=64, model="bbq")
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(20, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    docs = [
        IndexedDocument(id=f"d{i}", payload={"title": f"item {i}"}, image_vector=v, text_vector=v)
        for i, v in enumerate(vectors)
    ]
    assert backend.upsert(docs) == {}
    assert backend.count() == 20
    hits = (
        HybridSearcher(backend)
        .search(SearchRequest(text="x", weights=Weights(image=1, text=0, bm25=0), k=5), dense=vectors[3])
        .hits
    )
    assert hits[0].id == "d3"


def test_product_analyser(es_client: Any, index_name: str) -> None:
    backend = ElasticsearchBackend(es_client, index_name, vector_index_type="hnsw", refresh=True)
    backend.ensure_schema(dim=DIM, model="m")
    texts = {"a": "Men's Leather Boots", "b": "Café Racer Jacket", "c": "Running Shoe"}
    docs = [
        IndexedDocument(id=i, payload={"title": t}, image_vector=unit(1), text_vector=unit(1)) for i, t in texts.items()
    ]
    assert backend.upsert(docs) == {}
    searcher = HybridSearcher(backend)

    def bm25(text: str) -> list[str]:
        return [h.id for h in searcher.search(SearchRequest(text=text, weights=Weights(image=0, text=0, bm25=1))).hits]

    assert bm25("boot") == ["a"]  # stemming
    assert bm25("men leather") == ["a"]  # possessive
    assert bm25("cafe") == ["b"]  # ascii folding
    assert bm25("shoes") == ["c"]


def test_concurrent_ensure_schema_is_safe(es_client: Any, index_name: str) -> None:
    errors: list[BaseException] = []

    def create() -> None:
        try:
            ElasticsearchBackend(es_client, index_name).ensure_schema(dim=DIM, model="race")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with pytest.raises(ConfigurationError, match="8-dimensional"):
        ElasticsearchBackend(es_client, index_name).ensure_schema(dim=16, model="race")


def test_server_side_fusion_or_clean_fallback(es_client: Any, index_name: str, licence: str) -> None:
    """On any licence the search answers; Enterprise / trial fuse in the engine, others fall back, saying why."""
    backend = _loaded(
        ElasticsearchBackend(es_client, index_name, vector_index_type="hnsw", refresh=True, server_side_fusion=True)
    )
    response = HybridSearcher(backend).search(SearchRequest(text="red leather ankle boots", k=4), dense=unit(1, 0.1))
    assert response.hits[0].id == "boot-red"
    if licence in ("enterprise", "trial"):
        assert response.fused_by == "engine"
    else:
        assert response.fused_by == "client"
        assert backend.server_fusion_refused is not None and "licen" in backend.server_fusion_refused.lower()


@pytest.mark.parametrize(
    ("fusion_name", "weights", "since"),
    [("rrf", Weights(image=1, text=1, bm25=1), (8, 16)), ("linear", Weights(image=2, text=0.5, bm25=1), (8, 18))],
)
def test_engine_fusion_equals_client_fusion(
    es_client: Any,
    index_name: str,
    licence: str,
    server_version: tuple[int, int],
    fusion_name: str,
    weights: Weights,
    since: tuple[int, int],
) -> None:
    if licence not in ("enterprise", "trial"):
        pytest.skip(f"the cluster's {licence!r} licence refuses the rrf / linear retrievers (Enterprise or trial)")
    if server_version < since:
        pytest.skip(f"the {fusion_name} retriever needs Elasticsearch {since}; the cluster runs {server_version}")
    backend = _loaded(
        ElasticsearchBackend(es_client, index_name, vector_index_type="hnsw", refresh=True, server_side_fusion=True)
    )
    searcher = HybridSearcher(backend)
    request = SearchRequest(text="red leather", weights=weights, fusion=fusion_name, k=6, rrf_k=60)  # type: ignore[arg-type]
    query = searcher.build_query(request, dense=unit(1, 0.5))
    result = backend.search(query)
    assert result.fused is not None, backend.server_fusion_refused
    client = fusion.fuse(
        fusion_name,  # type: ignore[arg-type]
        result.lists,
        k=60,
        weights=[r.weight for r in query.retrievers],
        limit=6,
    )
    assert [r.score for r in result.fused] == pytest.approx([f.score for f in client], rel=1e-4, abs=1e-5)
    assert {r.id for r in result.fused} == {f.id for f in client}


# -- hybrid search around a shop's own _search body (the request-level cases of test_elasticsearch_shop.py) ------
def _shop_catalog(es_client: Any, index_name: str) -> ElasticsearchBackend:
    """Twelve products with Magento / Shopware / Sylius-like fields, a nested attribute list among them."""
    backend = ElasticsearchBackend(es_client, index_name, vector_index_type="hnsw", refresh=True)
    backend.ensure_schema(dim=DIM, model="live-model")
    es_client.indices.put_mapping(index=index_name, properties={"attributes": {"type": "nested"}})
    backend.register_fields(
        {"brand": "keyword", "color": "keyword", "price": "number", "in_stock": "bool", "visibility": "number",
         "enabled": "bool"}
    )  # fmt: skip
    docs = []
    for i in range(12):
        colour = ("red", "black", "blue")[i % 3]
        kind = ("boots", "bag", "sneakers")[i % 3 if i < 9 else 0]
        payload = {
            "title": f"{colour} {kind} {i}",
            "description": f"{('Acme', 'Bolt')[i % 2]} {colour} {kind}",
            "brand": ("Acme", "Bolt")[i % 2],
            "color": colour,
            "price": 40.0 + 10 * i,
            "in_stock": i % 4 != 3,
            "visibility": (1, 3, 4)[i % 3],
            "enabled": i != 5,
            "attributes": [{"code": "size", "value": str(38 + i % 6)}],
        }
        vec = unit(*[1.0 if j == i % DIM else 0.1 for j in range(DIM)])
        docs.append(IndexedDocument(id=f"p{i:02d}", payload=payload, image_vector=vec, text_vector=vec))
    assert backend.upsert(docs) == {}
    return backend


def _shop_bodies() -> dict[str, dict[str, Any]]:
    from test_elasticsearch_shop import MAGENTO, SHOPWARE, SYLIUS

    sylius = copy.deepcopy(SYLIUS)
    sylius["query"]["bool"]["must"][1]["nested"]["query"]["bool"]["filter"][1]["term"]["attributes.value"] = "40"
    return {"magento": MAGENTO, "shopware": SHOPWARE, "sylius": sylius}


def _passes(case: str, source: dict[str, Any]) -> bool:
    if case == "magento":
        return source["visibility"] in (3, 4) and source["in_stock"] is True and 50 <= source["price"] <= 150
    if case == "shopware":
        return source["color"] == "red"
    return source["enabled"] is not False and any(
        a["code"] == "size" and a["value"] == "40" for a in source["attributes"]
    )


@pytest.mark.parametrize("case", ["magento", "shopware", "sylius"])
def test_shop_body_hybrid_search_on_a_real_cluster(es_client: Any, index_name: str, case: str) -> None:
    from clipfuse.plugin.elasticsearch import hybrid_shop_search

    _shop_catalog(es_client, index_name)
    body = copy.deepcopy(_shop_bodies()[case])
    body["_source"] = True  # every field, to check the filters on each hit
    body["size"] = 12
    plain = es_client.search(index=index_name, body={**body, "size": 100}).body
    response = hybrid_shop_search(
        es_client, index_name, body, vectors={"image": unit(1.0), "text": unit(0.0, 1.0)}, candidates=50
    )
    hits = response["hits"]["hits"]
    assert hits, response
    assert all(_passes(case, h["_source"]) for h in hits), [h["_source"] for h in hits]
    # the shop's own matches are all in the fused ranking, with its aggregations as Elasticsearch computed them
    assert {h["_id"] for h in plain["hits"]["hits"]} <= {h["_id"] for h in hits}
    assert response.get("aggregations") == plain.get("aggregations")
    assert all(set(h) == {"_index", "_id", "_score", "_source", "_clipfuse"} for h in hits)
    scores = [h["_score"] for h in hits]
    assert scores == sorted(scores, reverse=True)

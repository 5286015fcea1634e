"""The Algolia-compatible API of `clipfuse serve` over a real Qdrant Edge store and the demo model."""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from clipfuse.images import ImageLoader
from clipfuse.ingest.pipeline import Indexer
from clipfuse.plugin.edge import EdgeBackend
from clipfuse.plugin.searcher import HybridSearcher
from clipfuse.service.app import create_app
from clipfuse.settings import Settings

STOREFRONT = "http://127.0.0.1:3999"
QUERIES = "/1/indexes/*/queries"


@pytest.fixture(scope="module")
def documents(demo_catalog: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in demo_catalog.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def searcher(tmp_path_factory: pytest.TempPathFactory, demo_embedder: Any, demo_catalog: Path) -> Iterator[Any]:
    backend = EdgeBackend(tmp_path_factory.mktemp("algolia-store"), "products")
    docs = [json.loads(line) for line in demo_catalog.read_text().splitlines() if line.strip()]
    assert Indexer(demo_embedder, backend, loader=ImageLoader(base_dir=demo_catalog.parent)).index(docs).indexed == 60
    yield HybridSearcher(backend, embedder=demo_embedder)
    backend.close()


def _app(searcher: Any, catalog: Path, **service: Any) -> TestClient:
    base = Settings()
    conf = {"catalog_root": catalog, "check_broker": False, "cors_origins": [STOREFRONT], **service}
    settings = base.model_copy(update={"index": "products", "service": base.service.model_copy(update=conf)})
    return TestClient(create_app(settings, searcher=searcher))


@pytest.fixture(scope="module")
def client(searcher: Any, demo_catalog: Path) -> Iterator[TestClient]:
    with _app(searcher, demo_catalog.parent) as test_client:
        yield test_client


def _v4(client: TestClient, *requests: dict[str, Any], **headers: str) -> Any:
    """What algoliasearch v4 sends: params URL-encoded, JSON as form-urlencoded (no preflight)."""
    body = {
        "requests": [
            {
                "indexName": "products",
                "params": urlencode({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()}),
            }
            for r in requests
        ]
    }
    return client.post(
        QUERIES, content=json.dumps(body), headers={"content-type": "application/x-www-form-urlencoded", **headers}
    )


def _one(client: TestClient, **params: Any) -> dict[str, Any]:
    response = client.post("/1/indexes/products/query", json=params)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_multi_query_with_v4_params_answers_in_algolia_shape(client: TestClient) -> None:
    response = _v4(client, {"query": "red backpack", "hitsPerPage": 5, "facets": ["brand", "price"]})
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert set(result) >= {
        "hits", "nbHits", "page", "nbPages", "hitsPerPage", "facets", "facets_stats", "exhaustiveNbHits",
        "exhaustiveFacetsCount", "processingTimeMS", "query", "params", "index",
    }  # fmt: skip
    assert result["index"] == "products" and result["query"] == "red backpack" and result["hitsPerPage"] == 5
    assert result["nbHits"] == 60 and result["nbPages"] == 12 and result["exhaustiveNbHits"] is True
    assert len(result["hits"]) == 5
    first = result["hits"][0]
    assert first["objectID"].startswith("p913-") and "backpack" in first["title"].lower()
    assert first["image_url"].startswith("http://testserver/images/")
    assert "<em>backpack</em>" in first["_highlightResult"]["title"]["value"].lower()
    assert sum(result["facets"]["brand"].values()) == 60
    stats = result["facets_stats"]["price"]
    assert stats["min"] <= stats["avg"] <= stats["max"]
    assert "query=red+backpack" in result["params"]


def test_v5_object_params_give_the_same_hits_as_v4(client: TestClient) -> None:
    v4 = _v4(client, {"query": "blue scarf", "hitsPerPage": 4}).json()["results"][0]
    v5 = client.post(QUERIES, json={"requests": [{"indexName": "products", "query": "blue scarf", "hitsPerPage": 4}]})
    assert [h["objectID"] for h in v5.json()["results"][0]["hits"]] == [h["objectID"] for h in v4["hits"]]


def test_facet_filters_filter_every_hit_and_disjunctive_counts_stay_brute_force(
    client: TestClient, documents: list[dict[str, Any]]
) -> None:
    brands = Counter(d["attributes"]["brand"] for d in documents)
    brand = brands.most_common(1)[0][0]
    red = [d for d in documents if d["attributes"]["color"] == "red"]
    # InstantSearch: the main query with every refinement, and one per refined disjunctive facet without it
    response = _v4(
        client,
        {
            "query": "bag",
            "hitsPerPage": 60,
            "facets": ["brand", "color"],
            "facetFilters": [[f"brand:{brand}"], ["color:red"]],
        },
        {"query": "bag", "hitsPerPage": 0, "facets": ["brand"], "facetFilters": [["color:red"]], "analytics": "false"},
    )
    main, disjunctive = response.json()["results"]
    expected = {d["id"] for d in red if d["attributes"]["brand"] == brand}
    assert {h["objectID"] for h in main["hits"]} == expected
    assert main["nbHits"] == len(expected)
    assert disjunctive["hits"] == [] and disjunctive["nbHits"] == len(red)
    assert disjunctive["facets"]["brand"] == dict(Counter(d["attributes"]["brand"] for d in red))


def test_numeric_filters_and_filters_string(client: TestClient, documents: list[dict[str, Any]]) -> None:
    result = _one(client, query="shoes", hitsPerPage=100, numericFilters=["price>=40", "price<=90"])
    prices = {d["id"]: d["attributes"]["price"] for d in documents}
    assert result["hits"] and all(40 <= prices[h["objectID"]] <= 90 for h in result["hits"])
    assert result["nbHits"] == sum(40 <= p <= 90 for p in prices.values())
    ranged = _one(client, query="shoes", hitsPerPage=100, filters="price:40 TO 90 AND NOT color:red")
    assert {h["objectID"] for h in ranged["hits"]} == {
        d["id"] for d in documents if 40 <= d["attributes"]["price"] <= 90 and d["attributes"]["color"] != "red"
    }


def test_pages_do_not_overlap_and_offset_length_cut_the_same_ranking(client: TestClient) -> None:
    pages = [_one(client, query="striped", hitsPerPage=10, page=p) for p in range(3)]
    ids = [[h["objectID"] for h in page["hits"]] for page in pages]
    assert all(len(page) == 10 for page in ids)
    assert len({i for page in ids for i in page}) == 30
    window = _one(client, query="striped", offset=5, length=10)
    assert [h["objectID"] for h in window["hits"]] == ids[0][5:] + ids[1][:5]
    assert window["offset"] == 5 and window["length"] == 10


def test_empty_query_browses_every_product_with_facets(client: TestClient, documents: list[dict[str, Any]]) -> None:
    result = _one(client, query="", hitsPerPage=0, facets=["*"])
    assert result["nbHits"] == 60 and result["hits"] == []
    assert set(result["facets"]) >= {"brand", "color", "category", "price", "in_stock"}
    assert result["facets"]["category"] == dict(
        sorted(Counter(d["attributes"]["category"] for d in documents).items(), key=lambda kv: (-kv[1], kv[0]))
    )


def test_ranking_info_carries_each_signal(client: TestClient) -> None:
    hit = _one(client, query="red striped t-shirt", hitsPerPage=1, getRankingInfo=True)["hits"][0]
    explained = hit["_rankingInfo"]["clipfuse"]
    assert explained["rank"] == 1 and explained["fusion"] == "rrf"
    assert set(explained["signals"]) == {"image", "text", "bm25"}
    assert explained["signals"]["image"]["rank"] is not None


def test_attributes_to_retrieve_and_highlight_tags(client: TestClient) -> None:
    hit = _one(
        client,
        query="leather",
        hitsPerPage=1,
        attributesToRetrieve=["title", "price"],
        highlightPreTag="[",
        highlightPostTag="]",
    )["hits"][0]
    assert set(hit) == {"title", "price", "objectID", "_highlightResult"}
    assert "[leather]" in hit["_highlightResult"]["description"]["value"].lower()


def test_image_extension_finds_the_photo_first(
    client: TestClient, demo_catalog: Path, documents: list[dict[str, Any]]
) -> None:
    doc = documents[7]
    data = base64.b64encode((demo_catalog.parent / doc["images"][0]["path"]).read_bytes()).decode()
    result = _one(client, clipfuseImage=f"data:image/jpeg;base64,{data}", hitsPerPage=3)
    assert result["hits"][0]["objectID"] == doc["id"]


def test_distinct_collapses_the_demo_catalogs_variant_groups(client: TestClient) -> None:
    """The demo catalog has variant groups (group_id): distinct gives one hit per group."""
    result = _one(client, query="solid", hitsPerPage=20, distinct=True)
    groups = [h["group_id"] for h in result["hits"]]
    assert len(groups) == len(set(groups)) == 20
    plain = _one(client, query="solid", hitsPerPage=60)
    assert len({h["group_id"] for h in plain["hits"]}) < len(plain["hits"])  # some products share a group


def test_cross_field_or_and_not_of_a_group_filter_on_edge(client: TestClient, documents: list[dict[str, Any]]) -> None:
    """``filters`` with an OR across attributes (a filter tree) runs on Qdrant Edge, as on every engine."""
    attributes = {d["id"]: d["attributes"] for d in documents}
    brand = Counter(a["brand"] for a in attributes.values()).most_common(1)[0][0]
    result = _one(client, query="bag", hitsPerPage=100, filters=f"brand:{brand} OR color:red")
    expected = {i for i, a in attributes.items() if a["brand"] == brand or a["color"] == "red"}
    assert expected and len(expected) < len(documents)
    assert {h["objectID"] for h in result["hits"]} == expected and result["nbHits"] == len(expected)
    result = _one(client, query="bag", hitsPerPage=100, filters=f"NOT (brand:{brand} AND color:red) AND price < 60")
    expected = {
        i for i, a in attributes.items() if not (a["brand"] == brand and a["color"] == "red") and a["price"] < 60
    }
    assert expected and {h["objectID"] for h in result["hits"]} == expected
    nested = _one(client, query="bag", hitsPerPage=100, facetFilters=[[f"brand:{brand}", "color:red"], ["-color:blue"]])
    expected = {
        i for i, a in attributes.items() if (a["brand"] == brand or a["color"] == "red") and a["color"] != "blue"
    }
    assert {h["objectID"] for h in nested["hits"]} == expected


@pytest.mark.parametrize(
    ("params", "status", "needle"),
    [
        ({"hitsPerPage": "lots"}, 400, "hitsPerPage"),
        ({"facets": ["colour"]}, 400, "unknown attribute 'colour'"),
        ({"filters": "brand:Acme OR OR"}, 400, "filters"),
        ({"filters": "price > cheap"}, 400, "not a number"),
        ({"facetFilters": [["size:38"]]}, 400, "unknown filter field 'size'"),
        ({"distinct": True, "clipfuseDistinctField": "nope"}, 400, "no attribute 'nope'"),
        ({"clipfuseImage": "bm90IGFuIGltYWdl"}, 400, "not an image"),
        ({"clipfuseImage": "%%%"}, 400, "clipfuseImage"),
        ({"query": "x" * 2000}, 400, "query"),
        ({"tagFilters": ["sale"]}, 400, "tagFilters"),
    ],
)
def test_bad_requests_are_400_in_algolia_shape(
    client: TestClient, params: dict[str, Any], status: int, needle: str
) -> None:
    response = client.post("/1/indexes/products/query", json=params)
    body = response.json()
    assert response.status_code == status and body["status"] == status, body
    assert needle in body["message"], body
    assert set(body) == {"message", "status"}


def test_malformed_bodies_and_unknown_index(client: TestClient) -> None:
    assert client.post(QUERIES, content=b"{not json").json()["status"] == 400
    assert client.post(QUERIES, json={"requests": []}).json()["status"] == 400
    assert client.post(QUERIES, json={"requests": [{"params": "query=x"}]}).json()["message"].endswith("indexName")
    assert client.post(QUERIES, json={"requests": [{"indexName": "p", "params": "a=%ZZ&&"}]}).status_code == 400
    missing = client.post("/1/indexes/other/query", json={"query": "x"})
    assert missing.status_code == 404 and "other" in missing.json()["message"]


def test_cors_preflight_and_simple_requests_for_the_configured_origin_only(client: TestClient) -> None:
    preflight = client.options(
        QUERIES,
        headers={
            "Origin": STOREFRONT,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-algolia-api-key,x-algolia-application-id",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == STOREFRONT
    assert "x-algolia-api-key" in preflight.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in preflight.headers
    simple = _v4(client, {"query": "bag", "hitsPerPage": 1}, Origin=STOREFRONT)
    assert simple.headers["access-control-allow-origin"] == STOREFRONT
    other = _v4(client, {"query": "bag", "hitsPerPage": 1}, Origin="http://evil.example")
    assert "access-control-allow-origin" not in other.headers
    refused = client.options(
        QUERIES, headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers


def test_no_cors_headers_by_default(searcher: Any, demo_catalog: Path) -> None:
    with _app(searcher, demo_catalog.parent, cors_origins=[]) as plain:
        response = plain.post(
            QUERIES, json={"requests": [{"indexName": "products", "query": "bag"}]}, headers={"Origin": STOREFRONT}
        )
        assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


def test_search_only_key_in_headers_or_query_string(searcher: Any, demo_catalog: Path) -> None:
    body = {"requests": [{"indexName": "products", "query": "bag", "hitsPerPage": 1}]}
    with _app(searcher, demo_catalog.parent, algolia_api_key=SecretStr("s3arch"), algolia_app_id="SHOP") as keyed:
        assert keyed.post(QUERIES, json=body).json() == {"message": "Invalid Application-ID or API key", "status": 403}
        wrong = keyed.post(
            QUERIES, json=body, headers={"X-Algolia-API-Key": "nope", "X-Algolia-Application-Id": "SHOP"}
        )
        assert wrong.status_code == 403
        headers = {"X-Algolia-API-Key": "s3arch", "X-Algolia-Application-Id": "SHOP"}
        assert keyed.post(QUERIES, json=body, headers=headers).status_code == 200
        query_string = f"{QUERIES}?x-algolia-api-key=s3arch&x-algolia-application-id=SHOP&x-algolia-agent=test"
        assert keyed.post(query_string, json=body).status_code == 200
        assert (
            keyed.post(f"{QUERIES}?x-algolia-api-key=s3arch&x-algolia-application-id=OTHER", json=body).status_code
            == 403
        )
        # the key opens search only: the write endpoints still want the service's own X-API-Key
        assert keyed.post("/documents", json={"documents": []}, headers=headers).status_code in (401, 403, 422)


def test_distinct_collapses_before_paging(client: TestClient, documents: list[dict[str, Any]]) -> None:
    categories = Counter(d["attributes"]["category"] for d in documents)
    result = _one(
        client, query="red", hitsPerPage=50, distinct=True, clipfuseDistinctField="category", facets=["category"]
    )
    shown = [h["category"] for h in result["hits"]]
    assert sorted(shown) == sorted(categories)  # one hit per category, every category once
    assert result["nbHits"] == len(categories)
    assert result["facets"]["category"] == dict.fromkeys(sorted(categories), 1)  # counts groups when collapsed
    refused = client.post("/1/indexes/products/query", json={"distinct": 2, "clipfuseDistinctField": "category"})
    assert refused.status_code == 400 and "distinct above 1" in refused.json()["message"]

"""The HTTP service against a real embedded Qdrant index of the demo catalog, with the shipped demo model."""

from __future__ import annotations

import base64
import io
import json
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from clipfuse.errors import BackendUnavailable, ConfigurationError, InvalidQuery
from clipfuse.images import ImageLoader
from clipfuse.ingest.pipeline import Indexer
from clipfuse.plugin import HybridSearcher
from clipfuse.plugin.protocol import IndexInfo
from clipfuse.plugin.qdrant import QdrantBackend
from clipfuse.schemas import SearchResponse
from clipfuse.service.app import create_app, resolve_under
from clipfuse.settings import Settings

API_KEY = "test-key-0123456789-abcdef"
MAX_UPLOAD = 256 * 1024


# -- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def catalog_dir(demo_catalog: Path) -> Path:
    return demo_catalog.parent


@pytest.fixture(scope="module")
def documents(demo_catalog: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in demo_catalog.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, demo_embedder: Any, demo_catalog: Path) -> Path:
    """The demo catalog indexed into an embedded Qdrant store (relative image paths, as the CLI does)."""
    from qdrant_client import QdrantClient

    path = tmp_path_factory.mktemp("service-store")
    docs = [json.loads(line) for line in demo_catalog.read_text().splitlines() if line.strip()]
    client = QdrantClient(path=str(path))
    try:
        indexer = Indexer(
            demo_embedder, QdrantBackend(client, "products"), loader=ImageLoader(base_dir=demo_catalog.parent)
        )
        report = indexer.index(docs)
        assert report.indexed == len(docs), report.rejected
    finally:
        client.close()
    return path


def _settings(store: Path, catalog_dir: Path, **service: Any) -> Settings:
    base = Settings()
    conf = {
        "catalog_root": catalog_dir,
        "api_key": SecretStr(API_KEY),
        "max_upload_bytes": MAX_UPLOAD,
        "check_broker": False,
        "facet_ttl_s": 0,
        **service,
    }
    return base.model_copy(
        update={
            "backend": "qdrant",  # the store fixture builds a qdrant-client local store (test_web_ui: Edge)
            "index": "products",
            "qdrant": base.qdrant.model_copy(update={"url": None, "path": store}),
            "broker": base.broker.model_copy(update={"queue": f"test-service-{uuid.uuid4().hex[:10]}"}),
            "service": base.service.model_copy(update=conf),
        }
    )


@pytest.fixture(scope="module")
def settings(store: Path, catalog_dir: Path) -> Settings:
    return _settings(store, catalog_dir)


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    """The service built the production way: it opens the store and loads the index's model at startup."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def searcher(client: TestClient) -> Any:
    return client.app.state.service.searcher  # type: ignore[attr-defined]


def _other_app(searcher: Any, store: Path, catalog_dir: Path, **service: Any) -> TestClient:
    """A second app with other settings, sharing the first one's searcher (the store allows one client)."""
    return TestClient(create_app(_settings(store, catalog_dir, **service), searcher=searcher))


def _image_bytes(catalog_dir: Path, doc: dict[str, Any]) -> bytes:
    return (catalog_dir / doc["images"][0]["path"]).read_bytes()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- startup ------------------------------------------------------------------------------
def test_startup_loads_the_model_recorded_in_the_index(client: TestClient, settings: Settings) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    assert settings.model.name != "clipfuse-demo"  # the default, not chosen explicitly
    assert service.model_id == "clipfuse-demo"
    assert service.searcher.embedder.loaded


# -- search -------------------------------------------------------------------------------
def test_text_search_finds_matching_products_with_every_signal(
    client: TestClient, documents: list[dict[str, Any]]
) -> None:
    target = documents[3]["attributes"]
    text = f"{target['color']} {target['pattern']} {target['category']}"
    response = client.post("/search", json={"text": text, "k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    SearchResponse.model_validate(
        {**body, "hits": [{k: v for k, v in h.items() if k != "image_url"} for h in body["hits"]]}
    )
    top = body["hits"][0]
    assert (top["payload"]["category"], top["payload"]["color"]) == (target["category"], target["color"])
    assert set(top["signals"]) == {"image", "text", "bm25"}
    assert all(top["signals"][s] is not None for s in ("image", "text", "bm25"))
    assert top["image_url"].startswith("/images/images/") and top["image_url"].endswith(".jpg")
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3, 4, 5]


def test_search_paginates_and_filters(client: TestClient, documents: list[dict[str, Any]]) -> None:
    category = documents[0]["attributes"]["category"]
    request = {
        "text": category,
        "k": 3,
        "filters": [
            {"field": "category", "op": "eq", "value": category},
            {"field": "price", "op": "lte", "value": 500},
        ],
    }
    first = client.post("/search", json=request).json()["hits"]
    second = client.post("/search", json={**request, "offset": 3}).json()["hits"]
    assert first and all(h["payload"]["category"] == category for h in first + second)
    assert not {h["id"] for h in first} & {h["id"] for h in second}
    assert all(h["rank"] > 3 for h in second)


def test_search_with_inline_base64_image_finds_the_same_product(
    client: TestClient, documents: list[dict[str, Any]], catalog_dir: Path
) -> None:
    doc = documents[5]
    data = base64.b64encode(_image_bytes(catalog_dir, doc)).decode()
    response = client.post("/search", json={"image": {"data": data}, "k": 3})
    assert response.status_code == 200, response.text
    assert response.json()["hits"][0]["id"] == doc["id"]


def test_search_with_an_image_path_under_the_catalog(client: TestClient, documents: list[dict[str, Any]]) -> None:
    doc = documents[7]
    response = client.post("/search", json={"image": {"path": doc["images"][0]["path"]}, "k": 3})
    assert response.status_code == 200, response.text
    assert response.json()["hits"][0]["id"] == doc["id"]


@pytest.mark.parametrize("path", ["../../../../etc/passwd", "/etc/passwd", "images/../../outside.jpg", "images"])
def test_search_refuses_image_paths_outside_the_catalog(client: TestClient, path: str) -> None:
    response = client.post("/search", json={"image": {"path": path}})
    assert response.status_code == 400
    assert "not a file under the catalog folder" in response.json()["detail"]


def test_search_refuses_image_paths_when_no_catalog_is_configured(
    searcher: Any, store: Path, catalog_dir: Path
) -> None:
    with _other_app(searcher, store, catalog_dir, catalog_root=None) as other:
        response = other.post("/search", json={"image": {"path": "images/x.jpg"}})
    assert response.status_code == 400
    assert "send the image as 'url' or base64 'data'" in response.json()["detail"]


def test_search_refuses_image_urls_on_private_addresses(client: TestClient) -> None:
    response = client.post("/search", json={"image": {"url": "http://127.0.0.1:1/secret.jpg"}})
    assert response.status_code == 400
    assert "non-public address" in response.json()["detail"]


def test_search_image_upload_finds_the_same_product_first(
    client: TestClient, documents: list[dict[str, Any]], catalog_dir: Path
) -> None:
    for doc in documents[:3]:
        response = client.post(
            "/search/image",
            files={"file": ("query.jpg", _image_bytes(catalog_dir, doc), "image/jpeg")},
            data={"k": "5"},
        )
        assert response.status_code == 200, response.text
        hits = response.json()["hits"]
        assert hits[0]["id"] == doc["id"]
        assert hits[0]["signals"]["bm25"] is None  # no text, no keyword signal


def test_search_image_upload_with_modifier_text(
    client: TestClient, documents: list[dict[str, Any]], catalog_dir: Path
) -> None:
    doc = next(d for d in documents if d["attributes"]["color"] != "black")
    category = doc["attributes"]["category"]
    response = client.post(
        "/search/image",
        files={"file": ("q.jpg", _image_bytes(catalog_dir, doc), "image/jpeg")},
        data={"text": f"black {category}", "k": "5", "weights": "image=1,text=1,bm25=1"},
    )
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert hits[0]["signals"]["bm25"] is not None
    assert any(h["payload"]["color"] == "black" for h in hits[:5])
    assert hits[0]["payload"]["category"] == category


def test_search_image_upload_with_filters_weights_and_fusion(
    client: TestClient, documents: list[dict[str, Any]], catalog_dir: Path
) -> None:
    doc = documents[2]
    other = next(
        d["attributes"]["category"] for d in documents if d["attributes"]["category"] != doc["attributes"]["category"]
    )
    response = client.post(
        "/search/image",
        files={"file": ("q.jpg", _image_bytes(catalog_dir, doc), "image/jpeg")},
        data={
            "filter": [f"category={other}", "price>=0"],
            "weights": "image=2,text=0.5,bm25=0",
            "fusion": "linear",
            "k": "4",
            "offset": "1",
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["fusion"] == "linear" and body["fused_by"] == "client"
    assert body["hits"] and all(h["payload"]["category"] == other for h in body["hits"])
    assert body["hits"][0]["rank"] == 2


# -- errors that tell what to change --------------------------------------------------------
def test_oversized_upload_is_413(client: TestClient) -> None:
    big = b"\xff\xd8" + b"\0" * MAX_UPLOAD
    response = client.post("/search/image", files={"file": ("big.jpg", big, "image/jpeg")})
    assert response.status_code == 413
    assert "CLIPFUSE_SERVICE__MAX_UPLOAD_BYTES" in response.json()["detail"]


def test_oversized_chunked_body_is_cut_off_with_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"x" * 16384  # 1 MiB in all, no Content-Length

    response = client.post(
        "/search/image", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=abc"}
    )
    assert response.status_code == 413
    assert "over the limit" in response.json()["detail"]


def test_oversized_inline_image_is_413(client: TestClient) -> None:
    data = base64.b64encode(b"\0" * (MAX_UPLOAD + 10)).decode()
    response = client.post("/search", json={"image": {"data": data}})
    assert response.status_code == 413
    assert "inline image" in response.json()["detail"]


def test_upload_that_is_not_an_image_is_400(client: TestClient) -> None:
    response = client.post("/search/image", files={"file": ("notes.txt", b"hello, I am text", "text/plain")})
    assert response.status_code == 400
    assert "not an image" in response.json()["detail"]


def test_empty_upload_is_400(client: TestClient) -> None:
    response = client.post("/search/image", files={"file": ("empty.jpg", b"", "image/jpeg")})
    assert response.status_code == 400
    assert "empty" in response.json()["detail"]


def test_upload_without_a_file_is_422(client: TestClient) -> None:
    response = client.post("/search/image", data={"text": "red"})
    assert response.status_code == 422
    assert "file" in response.json()["detail"]


def test_unknown_filter_field_is_400_listing_the_fields(
    client: TestClient, documents: list[dict[str, Any]], catalog_dir: Path
) -> None:
    response = client.post("/search", json={"text": "shoes", "filters": [{"field": "colour", "value": "red"}]})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "unknown filter field 'colour'" in detail
    for name in ("brand", "category", "color", "in_stock", "price"):
        assert name in detail
    upload = client.post(
        "/search/image",
        files={"file": ("q.jpg", _image_bytes(catalog_dir, documents[0]), "image/jpeg")},
        data={"filter": "size=42"},
    )
    assert upload.status_code == 400
    assert "unknown filter field 'size'" in upload.json()["detail"]


def test_unreadable_filter_expression_is_400(
    client: TestClient, documents: list[dict[str, Any]], catalog_dir: Path
) -> None:
    response = client.post(
        "/search/image",
        files={"file": ("q.jpg", _image_bytes(catalog_dir, documents[0]), "image/jpeg")},
        data={"filter": "price about 12"},
    )
    assert response.status_code == 400
    assert "write FIELD OP VALUE" in response.json()["detail"]


def test_neither_text_nor_image_is_422(client: TestClient) -> None:
    response = client.post("/search", json={"k": 5})
    assert response.status_code == 422
    assert "needs a text, an image, or both" in response.json()["detail"]
    blank = client.post("/search", json={"text": "   "})
    assert blank.status_code == 422


def test_bad_fusion_name_is_422(client: TestClient, documents: list[dict[str, Any]], catalog_dir: Path) -> None:
    response = client.post("/search", json={"text": "cap", "fusion": "borda"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("fusion:") and "'rrf'" in detail and "'zscore'" in detail
    assert "input" not in json.dumps(response.json()["errors"])  # the request is not echoed back
    upload = client.post(
        "/search/image",
        files={"file": ("q.jpg", _image_bytes(catalog_dir, documents[0]), "image/jpeg")},
        data={"fusion": "borda"},
    )
    assert upload.status_code == 422
    assert "fusion" in upload.json()["detail"] and "'rrf'" in upload.json()["detail"]


@pytest.mark.parametrize(
    ("weights", "message"),
    [("image=x", "cannot read"), ("colour=1", "cannot read"), ("image=1000", "less than or equal")],
)
def test_bad_weights_are_422(
    client: TestClient, documents: list[dict[str, Any]], catalog_dir: Path, weights: str, message: str
) -> None:
    response = client.post(
        "/search/image",
        files={"file": ("q.jpg", _image_bytes(catalog_dir, documents[0]), "image/jpeg")},
        data={"weights": weights},
    )
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_bad_json_body_fields_are_422(client: TestClient) -> None:
    assert client.post("/search", json={"text": "cap", "k": 0}).status_code == 422
    assert client.post("/search", json={"text": "cap", "bogus": 1}).status_code == 422
    response = client.post("/search", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422


class _StubSearcher:
    """A searcher whose search raises a chosen error (for the error mapping)."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.embedder = None
        self.backend = _StubBackend()

    def index_info(self, *, refresh: bool = False) -> IndexInfo:
        return IndexInfo(dim=4, model="stub", fields={})

    def search(self, request: Any) -> Any:
        raise self.error


class _StubBackend:
    name = "stub"
    lexical = "sparse"

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def index_info(self) -> IndexInfo:
        if self.error:
            raise self.error
        return IndexInfo(dim=4, model="stub", fields={})

    def count(self) -> int:
        return 0

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (InvalidQuery("the index does not exist yet"), 400, "the index does not exist yet"),
        (ConfigurationError("this searcher has no embedder"), 500, "service configuration error: this searcher"),
        (BackendUnavailable("cannot reach Qdrant"), 503, "the search engine is unavailable: cannot reach Qdrant"),
    ],
)
def test_clipfuse_errors_map_to_http_statuses(
    store: Path, catalog_dir: Path, error: Exception, status: int, message: str
) -> None:
    with _other_app(_StubSearcher(error), store, catalog_dir) as stub:
        response = stub.post("/search", json={"text": "anything"})
    assert response.status_code == status
    assert message in response.json()["detail"]
    if status == 503:
        assert response.headers["retry-after"] == "5"


# -- facets -------------------------------------------------------------------------------
def test_facets_list_fields_with_types_and_values(client: TestClient, documents: list[dict[str, Any]]) -> None:
    response = client.get("/api/facets")
    assert response.status_code == 200
    body = response.json()
    assert body["index"] == "products" and body["documents"] == len(documents) and body["model"] == "clipfuse-demo"
    assert body["source"] == "sample" and body["sampled"] == len(documents)
    fields = {f["name"]: f for f in body["fields"]}
    assert {n: f["type"] for n, f in fields.items()} == {
        "brand": "keyword",
        "category": "keyword",
        "color": "keyword",
        "created_at": "keyword",
        "group_id": "keyword",
        "in_stock": "bool",
        "material": "keyword",
        "pattern": "keyword",
        "popularity": "number",
        "price": "number",
    }
    categories = {v["value"]: v["count"] for v in fields["category"]["values"]}
    expected: dict[str, int] = {}
    for d in documents:
        expected[d["attributes"]["category"]] = expected.get(d["attributes"]["category"], 0) + 1
    assert categories == expected
    prices = [d["attributes"]["price"] for d in documents]
    assert fields["price"]["min"] == min(prices) and fields["price"]["max"] == max(prices)
    assert {v["value"] for v in fields["in_stock"]["values"]} <= {True, False}


# -- ingestion: API key and broker -----------------------------------------------------------
def _doc(doc_id: str) -> dict[str, Any]:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return {
        "id": doc_id,
        "title": "Acme red cap",
        "images": [{"data": base64.b64encode(buffer.getvalue()).decode()}],
        "attributes": {"category": "cap"},
    }


def test_write_endpoints_need_the_api_key(client: TestClient) -> None:
    body = {"documents": [_doc("new-1")]}
    missing = client.post("/documents", json=body)
    assert missing.status_code == 401 and "missing X-API-Key" in missing.json()["detail"]
    wrong = client.post("/documents", json=body, headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401 and "wrong API key" in wrong.json()["detail"]
    assert client.delete("/documents/new-1").status_code == 401
    assert client.delete("/documents/new-1", headers={"X-API-Key": API_KEY[:-1]}).status_code == 401


def test_write_endpoints_are_refused_without_a_configured_key(searcher: Any, store: Path, catalog_dir: Path) -> None:
    with _other_app(searcher, store, catalog_dir, api_key=None) as other:
        response = other.post("/documents", json={"documents": [_doc("x")]}, headers={"X-API-Key": "anything"})
        assert response.status_code == 403
        assert "CLIPFUSE_SERVICE__API_KEY" in response.json()["detail"]
        assert other.delete("/documents/x", headers={"X-API-Key": ""}).status_code == 403


def test_documents_are_validated_before_anything_is_enqueued(client: TestClient) -> None:
    headers = {"X-API-Key": API_KEY}
    bad = client.post("/documents", json={"documents": [{"id": "x"}]}, headers=headers)
    assert bad.status_code == 422 and "document is empty" in bad.json()["detail"]
    path = client.post(
        "/documents", json={"documents": [{"id": "x", "images": [{"path": "/etc/passwd"}]}]}, headers=headers
    )
    assert path.status_code == 422 and "image 'path' is not accepted over HTTP" in path.json()["detail"]
    assert client.post("/documents", json={"documents": []}, headers=headers).status_code == 422


def test_documents_over_the_request_limits_are_413(searcher: Any, store: Path, catalog_dir: Path) -> None:
    with _other_app(searcher, store, catalog_dir, max_documents_per_request=2, max_documents_body_bytes=4096) as other:
        headers = {"X-API-Key": API_KEY}
        three = {"documents": [{"id": str(i), "title": "t"} for i in range(3)]}
        assert other.post("/documents", json=three, headers=headers).status_code == 413
        big = {"documents": [{"id": "1", "title": "t", "description": "x" * 8000}]}
        response = other.post("/documents", json=big, headers=headers)
        assert response.status_code == 413
        assert "CLIPFUSE_SERVICE__MAX_DOCUMENTS_BODY_BYTES" in response.json()["detail"]


def test_documents_answer_503_when_the_producer_is_missing(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import clipfuse.workers

    # an install without the queue extras: the module cannot be imported (and is not already an attribute)
    monkeypatch.setitem(sys.modules, "clipfuse.workers.producer", None)
    monkeypatch.delattr(clipfuse.workers, "producer", raising=False)
    response = client.post("/documents", json={"documents": [_doc("y")]}, headers={"X-API-Key": API_KEY})
    assert response.status_code == 503
    assert "ingestion through the broker is not available" in response.json()["detail"]


def test_documents_answer_503_when_the_broker_is_down(searcher: Any, store: Path, catalog_dir: Path) -> None:
    settings = _settings(store, catalog_dir)
    settings = settings.model_copy(
        update={"broker": settings.broker.model_copy(update={"url": f"redis://127.0.0.1:{_closed_port()}/0"})}
    )
    with TestClient(create_app(settings, searcher=searcher)) as other:
        response = other.post("/documents", json={"documents": [_doc("z")]}, headers={"X-API-Key": API_KEY})
        assert response.status_code == 503
        assert "broker is unavailable" in response.json()["detail"]
        assert other.delete("/documents/z", headers={"X-API-Key": API_KEY}).status_code == 503


@pytest.fixture
def redis_queue(settings: Settings) -> Iterator[Settings]:
    if not _port_open(6379):
        pytest.fail("these tests need Redis on 127.0.0.1:6379: start redis-server (.ci/run does)")
    name = f"test-service-{uuid.uuid4().hex[:10]}"  # its own queue, and its own index for the producer's counters
    yield settings.model_copy(update={"index": name, "broker": settings.broker.model_copy(update={"queue": name})})
    import redis

    from clipfuse.workers.producer import redis_queue_keys

    r = redis.Redis.from_url(settings.broker.url)
    r.delete(
        *redis_queue_keys(name),
        f"_kombu.binding.{name}",
        f"_kombu.binding_permanent.{name}",
        f"clipfuse:{name}:stats",
        f"clipfuse:{name}:dead",
        f"clipfuse:{name}:dead:order",
    )
    r.close()


@pytest.mark.integration
def test_documents_and_deletions_are_enqueued_on_the_broker(searcher: Any, redis_queue: Settings) -> None:
    from clipfuse.workers.producer import queue_depth

    with TestClient(create_app(redis_queue, searcher=searcher)) as app_client:
        headers = {"X-API-Key": API_KEY}
        response = app_client.post("/documents", json={"documents": [_doc("a-1"), _doc("a-2")]}, headers=headers)
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["operation"] == "upsert" and body["accepted"] == 2 and body["ids"] == ["a-1", "a-2"]
        assert body["result"]["messages"] == 1
        deleted = app_client.delete("/documents/a%2F1", headers=headers)
        assert deleted.status_code == 202, deleted.text
        assert deleted.json()["ids"] == ["a/1"]
        assert queue_depth(redis_queue).pending == 2
        samples = _samples(app_client.get("/metrics").text)
    assert _value(samples, "clipfuse_documents_enqueued_total", operation="upsert") == 2
    assert _value(samples, "clipfuse_documents_enqueued_total", operation="delete") == 1


# -- health ---------------------------------------------------------------------------------
def test_healthz_ok(client: TestClient, documents: list[dict[str, Any]]) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["backend"]["detail"] == {
        "engine": "qdrant",
        "index": "products",
        "index_exists": True,
        "documents": len(documents),
    }
    assert body["checks"]["model"]["detail"]["model"] == "clipfuse-demo"
    assert "broker" not in body["checks"]


def test_healthz_checks_the_broker_by_default_only_against_an_engine_server(
    searcher: Any, store: Path, catalog_dir: Path
) -> None:
    with _other_app(searcher, store, catalog_dir, check_broker=None) as other:
        assert "broker" not in other.get("/healthz").json()["checks"]  # the embedded store: a demo, no workers
    server = _StubSearcher(InvalidQuery("unused"))  # not embedded: the broker is checked
    settings = _settings(store, catalog_dir, check_broker=None, health_timeout_s=1.0)
    settings = settings.model_copy(
        update={"broker": settings.broker.model_copy(update={"url": f"redis://127.0.0.1:{_closed_port()}/0"})}
    )
    with TestClient(create_app(settings, searcher=server)) as other:
        response = other.get("/healthz")
    assert response.status_code == 503 and response.json()["checks"]["broker"]["ok"] is False


def test_healthz_on_the_default_embedded_store_checks_no_broker(tmp_path: Path, store: Path, catalog_dir: Path) -> None:
    """Qdrant Edge (the default store) declares itself embedded: nothing but this process writes to it."""
    from clipfuse.plugin.edge import EdgeBackend

    edge = EdgeBackend(tmp_path / "edge", "products")
    settings = _settings(store, catalog_dir, check_broker=None, health_timeout_s=1.0)
    settings = settings.model_copy(
        update={"broker": settings.broker.model_copy(update={"url": f"redis://127.0.0.1:{_closed_port()}/0"})}
    )
    try:
        with TestClient(create_app(settings, searcher=HybridSearcher(edge))) as other:
            checks = other.get("/healthz").json()["checks"]
        assert "broker" not in checks and checks["backend"]["detail"]["engine"] == "qdrant-edge"
    finally:
        edge.close()


@pytest.mark.integration
def test_healthz_checks_the_broker(searcher: Any, store: Path, catalog_dir: Path) -> None:
    if not _port_open(6379):
        pytest.fail("this test needs Redis on 127.0.0.1:6379: start redis-server (.ci/run does)")
    with _other_app(searcher, store, catalog_dir, check_broker=True) as other:
        response = other.get("/healthz")
    assert response.status_code == 200, response.text
    broker = response.json()["checks"]["broker"]
    assert broker["ok"] is True and broker["detail"]["url"].startswith("redis://")


def test_healthz_503_when_the_broker_is_down(searcher: Any, store: Path, catalog_dir: Path) -> None:
    settings = _settings(store, catalog_dir, check_broker=True, health_timeout_s=1.0)
    port = _closed_port()
    settings = settings.model_copy(
        update={"broker": settings.broker.model_copy(update={"url": f"redis://:secret@127.0.0.1:{port}/0"})}
    )
    with TestClient(create_app(settings, searcher=searcher)) as other:
        response = other.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["backend"]["ok"] is True
    broker = body["checks"]["broker"]
    assert broker["ok"] is False and "error" in broker["detail"]
    assert "secret" not in response.text  # the broker password is never shown


def test_healthz_503_when_the_engine_is_unreachable(store: Path, catalog_dir: Path) -> None:
    backend = _StubBackend(BackendUnavailable("cannot reach Qdrant at qdrant:6333"))
    stub = _StubSearcher(InvalidQuery("unused"))
    stub.backend = backend
    with _other_app(stub, store, catalog_dir) as other:
        response = other.get("/healthz")
    assert response.status_code == 503
    detail = response.json()["checks"]["backend"]
    assert detail["ok"] is False and "cannot reach Qdrant" in detail["detail"]["error"]


# -- metrics --------------------------------------------------------------------------------
def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_metrics_count_requests_per_endpoint_and_search_latency(client: TestClient) -> None:
    before = _samples(client.get("/metrics").text)
    ok = _value(before, "clipfuse_http_requests_total", method="POST", endpoint="/search", status="200") or 0.0
    client.post("/search", json={"text": "red cap", "k": 2})
    client.post("/search", json={"fusion": "nope"})
    client.delete("/documents/some-id")
    client.get("/no/such/page")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    requests = "clipfuse_http_requests_total"
    assert _value(samples, requests, method="POST", endpoint="/search", status="200") == ok + 1
    assert _value(samples, requests, method="POST", endpoint="/search", status="422") >= 1  # type: ignore[operator]
    assert _value(samples, requests, method="DELETE", endpoint="/documents/{doc_id}", status="401") >= 1  # type: ignore[operator]
    assert _value(samples, requests, method="GET", endpoint="unmatched", status="404") >= 1  # type: ignore[operator]
    assert "/no/such/page" not in response.text and "some-id" not in response.text
    bucket = _value(
        samples, "clipfuse_http_request_duration_seconds_bucket", method="POST", endpoint="/search", le="+Inf"
    )
    assert bucket is not None and bucket >= ok + 1
    assert _value(samples, "clipfuse_search_duration_seconds_count", mode="text") >= 1  # type: ignore[operator]
    assert _value(samples, "clipfuse_search_duration_seconds_bucket", mode="text", le="10.0") >= 1  # type: ignore[operator]
    assert _value(samples, "clipfuse_searches_total", mode="text", outcome="ok") >= 1  # type: ignore[operator]
    assert _value(samples, "process_resident_memory_bytes") is not None


# -- images and the web page ------------------------------------------------------------------
def test_images_are_served_from_the_catalog(
    client: TestClient, documents: list[dict[str, Any]], catalog_dir: Path
) -> None:
    rel = documents[0]["images"][0]["path"]
    response = client.get(f"/images/{rel}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.content == (catalog_dir / rel).read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/images/../secret.txt",
        "/images/..%2Fsecret.txt",
        "/images/images%2F..%2F..%2Fsecret.txt",
        "/images/%2e%2e/%2e%2e/secret.txt",
        "/images//etc/passwd",
        "/images/%2Fetc%2Fpasswd",
        "/images/link-out.jpg",
        "/images/catalog.jsonl",
        "/images/images",
        "/images/nope.jpg",
        "/images/images/%00.jpg",
    ],
)
def test_image_paths_cannot_leave_the_catalog(client: TestClient, catalog_dir: Path, path: str) -> None:
    secret = catalog_dir.parent / "secret.txt"
    secret.write_text("top secret")
    link = catalog_dir / "link-out.jpg"
    if not link.is_symlink():
        link.symlink_to(secret)
    response = client.get(path)
    assert response.status_code == 404, (path, response.status_code)
    assert "top secret" not in response.text
    assert "root:" not in response.text


def test_resolve_under_follows_links_before_checking(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.jpg").write_bytes(b"x")
    (tmp_path / "out.jpg").write_bytes(b"o")
    (root / "link.jpg").symlink_to(tmp_path / "out.jpg")
    assert resolve_under(root, "a/x.jpg") == (root / "a" / "x.jpg").resolve()
    assert resolve_under(root, str(root / "a" / "x.jpg")) is not None
    for bad in ("link.jpg", "../out.jpg", str(tmp_path / "out.jpg"), "a", "", "a/\x00.jpg", "missing.jpg"):
        assert resolve_under(root, bad) is None, bad


def test_web_page_and_static_files(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "static/app.js" in page.text and 'id="drop-zone"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]


def test_openapi_docs(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {
        "/search",
        "/search/image",
        "/documents",
        "/documents/{doc_id}",
        "/healthz",
        "/metrics",
        "/api/facets",
    } <= set(spec["paths"])
    assert "APIKeyHeader" in spec["components"]["securitySchemes"]
    assert spec["paths"]["/documents"]["post"]["security"] == [{"APIKeyHeader": []}]


def test_serve_command_is_registered() -> None:
    from typer.testing import CliRunner

    from clipfuse.cli import app

    result = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--catalog-root" in result.output and "--port" in result.output


def test_serve_command_builds_the_app_from_its_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import uvicorn
    from typer.testing import CliRunner

    import clipfuse.service.app as service_app
    from clipfuse.cli import app

    (tmp_path / "demo" / "catalog").mkdir(parents=True)
    seen: dict[str, Any] = {}

    def fake_create_app(settings: Settings) -> Any:
        seen["settings"] = settings
        return types.SimpleNamespace(state=types.SimpleNamespace(service=types.SimpleNamespace(start=lambda: None)))

    monkeypatch.setattr(service_app, "create_app", fake_create_app)
    monkeypatch.setattr(uvicorn, "run", lambda application, **kwargs: seen.update(run=kwargs))
    monkeypatch.delenv("CLIPFUSE_QDRANT__URL", raising=False)
    store = tmp_path / "demo" / "qdrant"
    result = CliRunner(env={"COLUMNS": "400"}).invoke(
        app, ["serve", "--port", "8123", "--store", str(store), "--index", "shop"]
    )
    assert result.exit_code == 0, result.output
    settings = seen["settings"]
    assert settings.index == "shop" and settings.embedded_store == store and settings.engine == "qdrant-edge"
    assert settings.service.catalog_root == (tmp_path / "demo" / "catalog").resolve()  # the demo layout
    assert seen["run"]["host"] == "127.0.0.1" and seen["run"]["port"] == 8123


# -- shop ranking: facets, collapse, boosts, rules, cursors ----------------------------------
def test_search_with_facets_collapse_and_boosts(client: TestClient, documents: list[dict[str, Any]]) -> None:
    body = {
        "text": "handbag",
        "k": 5,
        "facets": ["brand", "color", "price"],
        "collapse": {"field": "group_id", "fields": ["color", "images"]},
        "boosts": [
            {"type": "field", "field": "popularity", "function": "log1p", "weight": 0.05},
            {"type": "filter", "filters": [{"field": "in_stock", "value": True}], "weight": 0.1},
        ],
    }
    response = client.post("/search", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["facet_scope"] == "window" and data["facets_count"] == "groups"
    assert data["collapsed_by"] == "group_id" and data["total"]["relation"] in ("eq", "gte")
    assert sum(data["facets"]["brand"].values()) == data["total"]["value"]  # one brand per group
    assert set(data["facets_stats"]["price"]) == {"count", "min", "max", "avg", "sum"}
    groups = [h["group"] for h in data["hits"]]
    assert len(groups) == len(set(groups)) == 5
    top = data["hits"][0]["explanation"]
    assert [b["boost"] for b in top["boosts"]] == ["log1p(popularity) * 0.05", "in_stock eq True: +0.1"]
    assert top["final"] == pytest.approx(top["normalised"] + sum(b["contribution"] for b in top["boosts"]))
    by_id = {d["id"]: d for d in documents}
    with_variants = [h for h in data["hits"] if h["variants"]]
    for hit in with_variants:
        for variant in hit["variants"]:
            assert by_id[variant["id"]]["attributes"]["group_id"] == hit["group"]
            assert variant["payload"]["color"] == by_id[variant["id"]]["attributes"]["color"]
            assert variant["image_url"].startswith("/images/")


def test_search_pages_with_a_cursor(client: TestClient) -> None:
    first = client.post("/search", json={"text": "scarf", "k": 4}).json()
    second = client.post("/search", json={"cursor": first["next_cursor"]}).json()
    third = client.post("/search", json={"cursor": second["next_cursor"], "k": 8}).json()
    ids = [h["id"] for page in (first, second, third) for h in page["hits"]]
    assert len(ids) == len(set(ids)) == 16
    plain = client.post("/search", json={"text": "scarf", "k": 16}).json()
    assert ids == [h["id"] for h in plain["hits"]]
    forged = first["next_cursor"][:-3] + "xyz"
    response = client.post("/search", json={"cursor": forged})
    assert response.status_code == 400 and "signature does not match" in response.json()["detail"]
    response = client.post("/search", json={"cursor": first["next_cursor"], "text": "boots"})
    assert response.status_code == 422 and "drop text" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"facets": ["size"]}, 400, "unknown facet field 'size'"),
        ({"collapse": "price"}, 400, "collapse needs a keyword field"),
        ({"boosts": [{"type": "field", "field": "brand", "function": "log1p"}]}, 400, "log1p needs a number field"),
        (
            {"boosts": [{"type": "decay", "field": "price", "origin": 50, "scale": 0}]},
            422,
            "scale must be greater than 0",
        ),
        ({"facets": ["brand"], "facet_scope": "everything"}, 422, "facet_scope"),
    ],
)
def test_bad_ranking_requests_name_the_field(
    client: TestClient, body: dict[str, Any], status: int, message: str
) -> None:
    response = client.post("/search", json={"text": "scarf", **body})
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_rules_file_is_reloaded_on_change_and_a_broken_one_keeps_the_previous(
    searcher: Any, store: Path, catalog_dir: Path, documents: list[dict[str, Any]], tmp_path: Path, caplog: Any
) -> None:
    from clipfuse.schemas.rules import RuleSet

    pinned, hidden = documents[7]["id"], documents[8]["id"]
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        f"rules:\n  - id: campaign\n    conditions: [{{pattern: scarf, anchoring: contains}}]\n"
        f"    consequence: {{pin: [{{id: {pinned}, position: 1}}]}}\n"
    )
    settings = _settings(store, catalog_dir)
    settings = settings.model_copy(
        update={"search": settings.search.model_copy(update={"rules_file": rules_file, "rules_reload_s": 0.01})}
    )
    try:
        with TestClient(create_app(settings, searcher=searcher)) as app:
            data = app.post("/search", json={"text": "blue scarf", "k": 5}).json()
            assert data["hits"][0]["id"] == pinned and data["hits"][0]["rule"] == "campaign"
            assert data["rules_applied"] == ["campaign"]
            # the file changes: the next search uses the new rules, no restart
            time.sleep(0.05)
            rules_file.write_text(
                "rules:\n  - id: hide-one\n    conditions: [{pattern: scarf, anchoring: contains}]\n"
                f"    consequence: {{hide: [{hidden}]}}\n"
            )
            time.sleep(0.05)
            data = app.post("/search", json={"text": "blue scarf", "k": 60}).json()
            assert data["rules_applied"] == ["hide-one"] and hidden not in [h["id"] for h in data["hits"]]
            # a broken file: the previous rules stay, the log and /healthz say why
            time.sleep(0.05)
            rules_file.write_text(
                "rules:\n  - id: bad\n    conditions: [{pattern: 'scarf*'}]\n    consequence: {hide: [x]}\n"
            )
            time.sleep(0.05)
            with caplog.at_level("ERROR", logger="clipfuse.service.app"):
                data = app.post("/search", json={"text": "blue scarf", "k": 60}).json()
            assert data["rules_applied"] == ["hide-one"]
            assert "previous rules stay in use" in caplog.text and "'scarf*' contains *" in caplog.text
            health = app.get("/healthz").json()
            assert "scarf*" in health["checks"]["rules"]["detail"]["error"]
    finally:
        searcher.rules = RuleSet()

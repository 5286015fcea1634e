"""Documents that carry precomputed embeddings (``Document.vectors``).

The schema refuses wrong-shaped vectors (not numbers, not finite, empty, too long, all
zeros) everywhere a document is validated; a vector of the wrong *dimension* is valid JSON
that only the ingest core can refuse, since only it knows the index's model. Either way only
that document is rejected and the rest of its batch lands.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipfuse.errors import InvalidDocument
from clipfuse.ingest.pipeline import Indexer, document_payload
from clipfuse.plugin import HybridSearcher
from clipfuse.plugin.edge import EdgeBackend
from clipfuse.plugin.protocol import Backend
from clipfuse.plugin.qdrant import QdrantBackend
from clipfuse.schemas import RESERVED_FIELDS, Document, DocumentVectors, Rejection, parse_document
from clipfuse.schemas import limits as L
from clipfuse.settings import Settings, WorkerSettings
from clipfuse.workers import producer as producer_module
from clipfuse.workers.app import INGEST_TASK
from clipfuse.workers.batches import BatchProcessor
from clipfuse.workers.producer import enqueue

DIM = 128  # the shipped demo model's dimension


def _vector(seed: int, dim: int = DIM, scale: float = 7.0) -> list[float]:
    """A random direction, deliberately not unit length (ingest must normalise it)."""
    return [float(x) for x in np.random.default_rng(seed).normal(size=dim) * scale]


def _unit(values: Sequence[float]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v / np.linalg.norm(v)


def invalid(raw: dict[str, Any]) -> str:
    with pytest.raises(InvalidDocument) as info:
        parse_document(raw)
    assert info.value.code == "validation"
    assert info.value.doc_id == raw.get("id")
    return str(info.value)


# -- the schema ----------------------------------------------------------------------------------


def test_a_vector_alone_makes_a_document() -> None:
    doc = parse_document({"id": "v", "vectors": {"image": [0, 1, 0.5]}})
    assert doc.vectors == DocumentVectors(image=[0.0, 1.0, 0.5])
    assert doc.images == [] and doc.text == ""
    assert parse_document({"id": "t", "vectors": {"text": [0.25, -1]}}).vectors.text == [0.25, -1.0]  # type: ignore[union-attr]


def test_vectors_round_trip_and_stay_out_of_the_payload() -> None:
    raw = {"id": "v", "title": "scarf", "vectors": {"image": [0.5, -0.5], "text": [1.0, 2.0]}, "attributes": {"a": 1}}
    doc = parse_document(raw)
    assert parse_document(doc.model_dump(mode="json", exclude_none=True)) == doc
    assert "vectors" in RESERVED_FIELDS
    assert document_payload(doc) == {"title": "scarf", "images": [], "a": 1}


def test_vectors_is_a_reserved_attribute_name() -> None:
    assert "reserved" in invalid({"id": "1", "title": "t", "attributes": {"vectors": "x"}})


@pytest.mark.parametrize(
    ("vectors", "expected"),
    [
        ({"image": [0.1, float("nan")]}, "vectors.image.1: Input should be a finite number"),
        ({"text": [float("inf"), 0.1]}, "vectors.text.0: Input should be a finite number"),
        ({"image": [0.1, "0.2"]}, "vectors.image.1: Input should be a valid number"),
        ({"image": [True, 0.2]}, "vectors.image.0: Input should be a valid number"),
        ({"image": []}, "vectors.image: List should have at least 1 item"),
        ({"image": [0.0, -0.0, 0]}, "vectors.image is all zeros"),
        ({"text": [0.0] * 4}, "vectors.text is all zeros"),
        ({}, "vectors needs 'image' and/or 'text'"),
        ({"image": None, "text": None}, "vectors needs 'image' and/or 'text'"),
        ({"bm25": [1.0]}, "vectors.bm25: Extra inputs are not permitted"),
        ({"image": {"0": 1.0}}, "vectors.image: Input should be a valid list"),
    ],
)
def test_wrong_shaped_vectors_are_refused(vectors: dict[str, Any], expected: str) -> None:
    assert expected in invalid({"id": "v", "title": "t", "vectors": vectors})


@pytest.mark.parametrize("name", ["image", "text"])
def test_vector_length_limit_names_its_limit(name: str) -> None:
    message = invalid({"id": "v", "title": "t", "vectors": {name: [0.5] * (L.MAX_VECTOR_DIM + 1)}})
    assert f"MAX_VECTOR_DIM={L.MAX_VECTOR_DIM}" in message
    assert "MAX_QUERY_TEXT_CHARS" not in message
    assert len(message) < 300
    assert parse_document({"id": "v", "vectors": {name: [0.5] * L.MAX_VECTOR_DIM}}).vectors is not None


def test_a_huge_vector_of_nans_gives_one_short_error() -> None:
    message = invalid({"id": "v", "vectors": {"image": [float("nan")] * 1_000_000}})
    assert "MAX_VECTOR_DIM" in message and len(message) < 300


# -- the ingest core, real model, real embedded stores ---------------------------------------------


@pytest.fixture(params=["qdrant-local", "edge"])
def store(request: pytest.FixtureRequest, qdrant_client: Any, collection_name: str, tmp_path: Path) -> Iterator[Any]:
    if request.param == "qdrant-local":
        yield QdrantBackend(qdrant_client, collection_name)
    else:
        backend = EdgeBackend(tmp_path / "edge", "products")
        yield backend
        backend.close()


def _mixed_batch(demo_documents: list[dict[str, Any]], tmp_path: Path) -> tuple[list[Any], dict[str, Any]]:
    given = {
        "id": "given",
        # the given image vector wins: this image is never read (it would be rejected as image_not_found)
        "images": [{"path": str(tmp_path / "missing.jpg")}],
        "title": "hand knitted merino scarf",
        "vectors": {"image": _vector(1), "text": _vector(2)},
        "attributes": {"category": "accessories"},
    }
    batch = [
        demo_documents[0],
        given,
        {"id": "image-512", "title": "x", "vectors": {"image": _vector(3, dim=512)}},
        {
            "id": "text-64",
            "title": "x",
            "images": [{"path": str(tmp_path / "nope.jpg")}],
            "vectors": {"text": _vector(4, 64)},
        },
        {"id": "nan", "title": "x", "vectors": {"image": [float("nan")] * DIM}},
        demo_documents[1],
        {"id": "vector-only", "vectors": {"image": _vector(5)}},
    ]
    return batch, given


def test_precomputed_vectors_land_and_bad_ones_are_rejected_alone(
    demo_embedder: Any, store: Backend, demo_documents: list[dict[str, Any]], tmp_path: Path
) -> None:
    batch, given = _mixed_batch(demo_documents, tmp_path)
    report = Indexer(demo_embedder, store, batch_size=16).index_batch(batch)

    assert report.indexed == 4 and store.count() == 4
    rejected = {r.id: r for r in report.rejected}
    assert {k: (r.code, r.stage) for k, r in rejected.items()} == {
        "image-512": ("vector_dimension", "validate"),
        "text-64": ("vector_dimension", "validate"),
        "nan": ("validation", "validate"),
    }
    assert rejected["image-512"].reason == "image vector has 512 dimensions; the index's model clipfuse-demo makes 128"
    assert rejected["text-64"].reason == "text vector has 64 dimensions; the index's model clipfuse-demo makes 128"
    assert "vectors.image.0: Input should be a finite number" in rejected["nan"].reason
    assert rejected["image-512"].document is not None  # kept for replay after a fix
    assert [r.position for r in report.rejected] == [2, 3, 4]
    assert set(report.stage_seconds) == {"validate", "load", "embed_images", "embed_texts", "bm25", "upsert"}

    searcher = HybridSearcher(store, embedder=demo_embedder)
    for signal in ("image", "text"):
        weights = {"image": 0.0, "text": 0.0, "bm25": 0.0, signal: 1.0}
        query = np.asarray(given["vectors"][signal], dtype=np.float32)
        hits = searcher.search(text="anything", weights=weights, dense=query, k=4).hits
        assert hits[0].id == "given", signal
        assert getattr(hits[0].signals, signal) == pytest.approx(1.0, abs=1e-4)
        assert all(getattr(h.signals, signal) < 0.9 for h in hits[1:])
    # BM25 still comes from the document's text
    lexical = searcher.search(text="merino scarf", weights={"image": 0, "text": 0, "bm25": 1}, k=4).hits
    assert lexical[0].id == "given"
    assert lexical[0].payload["images"] == [str(tmp_path / "missing.jpg")]
    assert "vectors" not in lexical[0].payload


def test_given_vectors_are_stored_normalised_and_replace_the_model(
    demo_embedder: Any, qdrant_client: Any, collection_name: str, demo_documents: list[dict[str, Any]], tmp_path: Path
) -> None:
    backend = QdrantBackend(qdrant_client, collection_name)
    batch, given = _mixed_batch(demo_documents, tmp_path)
    Indexer(demo_embedder, backend).index_batch(batch)
    points = {p.payload["doc_id"]: p for p in qdrant_client.scroll(collection_name, with_vectors=True)[0]}  # type: ignore[index]
    stored = points["given"].vector
    assert set(stored) == {"image", "text", "bm25"}
    assert np.allclose(stored["image"], _unit(given["vectors"]["image"]), atol=1e-6)
    assert np.allclose(stored["text"], _unit(given["vectors"]["text"]), atol=1e-6)
    # not the model's embedding of the title
    assert float(np.dot(stored["text"], demo_embedder.embed_texts([given["title"]])[0])) < 0.9
    assert set(points["vector-only"].vector) == {"image"}
    # the ordinary documents were embedded by the model as before
    assert set(points[demo_documents[0]["id"]].vector) == {"image", "text", "bm25"}


@pytest.mark.parametrize("component", [1e308, -5e-324, 1e-30])
def test_extreme_but_finite_components_still_make_a_unit_vector(
    component: float, demo_embedder: Any, qdrant_client: Any, collection_name: str
) -> None:
    backend = QdrantBackend(qdrant_client, collection_name)
    values = [component] * DIM
    report = Indexer(demo_embedder, backend).index_batch([{"id": "x", "vectors": {"image": values}}])
    assert report.rejected == [] and report.indexed == 1
    stored = np.array(qdrant_client.scroll(collection_name, with_vectors=True)[0][0].vector["image"])
    assert np.allclose(stored, np.sign(component) / np.sqrt(DIM), atol=1e-6)


def test_an_unvalidated_zero_vector_is_still_rejected(
    demo_embedder: Any, qdrant_client: Any, collection_name: str
) -> None:
    """Document.model_construct skips the schema; the core refuses a vector with no direction anyway."""
    backend = QdrantBackend(qdrant_client, collection_name)
    zero = Document.model_construct(id="zero", vectors=DocumentVectors.model_construct(image=[0.0] * DIM, text=None))
    report = Indexer(demo_embedder, backend).index_batch([zero, {"id": "ok", "title": "red scarf"}])
    assert report.indexed == 1 and backend.count() == 1
    assert [(r.id, r.code, r.stage) for r in report.rejected] == [("zero", "vector_zero", "validate")]


def test_pipelined_batches_mix_loaded_images_and_given_vectors(
    demo_embedder: Any, store: Backend, demo_documents: list[dict[str, Any]]
) -> None:
    """index() overlaps batches; documents with a given image vector never go to the loader's pool."""
    docs: list[dict[str, Any]] = []
    for i, doc in enumerate(demo_documents[:12]):
        docs.append(doc)
        docs.append({**doc, "id": f"{doc['id']}-v", "vectors": {"image": _vector(100 + i)}})
    docs.append({"id": "short", "title": "x", "vectors": {"image": [1.0] * 3}})
    indexer = Indexer(demo_embedder, store, batch_size=5, load_workers=2)
    report = indexer.index(docs)
    assert report.indexed == 24 and store.count() == 24
    assert [(r.id, r.code) for r in report.rejected] == [("short", "vector_dimension")]
    assert set(report.stage_seconds) == {"validate", "load", "embed_images", "embed_texts", "bm25", "upsert"}


# -- the queue: the producer refuses bad shapes, the worker dead-letters a wrong dimension ----------


class FakeApp:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    @contextmanager
    def producer_or_acquire(self) -> Iterator[object]:
        yield object()

    def send_task(self, name: str, kwargs: dict[str, Any], queue: str, producer: Any = None) -> None:
        assert name == INGEST_TASK
        self.sent.append(kwargs)


def test_the_producer_refuses_wrong_shapes_and_bounds_vector_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(producer_module, "_count", lambda settings, **counts: None)
    settings = Settings()
    settings = settings.model_copy(
        update={"broker": settings.broker.model_copy(update={"max_message_bytes": 64 * 1024})}
    )
    big = {"image": _vector(7, L.MAX_VECTOR_DIM)}  # ~88 KB of JSON: over a 64 KiB message
    docs = [
        {"id": "ok", "title": "t", "vectors": {"image": _vector(6)}},
        {"id": "nan", "title": "t", "vectors": {"text": [float("nan")]}},
        {"id": "big", "title": "t", "vectors": big},
        {"id": "wrong-dim", "title": "t", "vectors": {"image": _vector(8, 512)}},  # only a worker can tell
    ]
    app = FakeApp()
    report = enqueue(docs, settings=settings, app=app)  # type: ignore[arg-type]
    assert [(r.id, r.code) for r in report.refused] == [("nan", "validation"), ("big", "message_too_large")]
    assert "finite" in report.refused[0].reason
    assert "precomputed vectors" in report.refused[1].reason and "MAX_MESSAGE_BYTES" in report.refused[1].reason
    sent = [d for m in app.sent for d in m["documents"]]
    assert [d["id"] for d in sent] == ["ok", "wrong-dim"]
    assert sent[0]["vectors"]["image"] == docs[0]["vectors"]["image"]


def test_the_worker_dead_letters_a_wrong_dimension(
    demo_embedder: Any, qdrant_client: Any, collection_name: str
) -> None:
    backend = QdrantBackend(qdrant_client, collection_name)
    indexer = Indexer(demo_embedder, backend)
    recorded: list[tuple[list[Rejection], list[str]]] = []

    def record(rejections: Sequence[Rejection], *, indexed_ids: Sequence[str], counts: Mapping[str, int]) -> None:
        recorded.append((list(rejections), list(indexed_ids)))

    processor = BatchProcessor(
        index_batch=indexer.index_batch,
        delete=indexer.delete,
        record=record,
        republish=lambda messages: None,
        should_stop=lambda: False,
        worker=WorkerSettings(),
        batch_size=8,
    )
    message = {
        "op": "upsert",
        "documents": [
            {"id": "ok", "title": "red scarf", "vectors": {"image": _vector(9)}},
            {"id": "wrong-dim", "title": "blue scarf", "vectors": {"image": _vector(10, 512)}},
        ],
        "attempt": 0,
    }
    processor.process([message])
    assert backend.count() == 1
    (rejections, indexed_ids), *_ = recorded
    assert indexed_ids == ["ok"]
    assert [(r.id, r.code, r.stage) for r in rejections] == [("wrong-dim", "vector_dimension", "validate")]
    assert "512 dimensions" in rejections[0].reason
    assert rejections[0].document == message["documents"][1]  # replayable once fixed

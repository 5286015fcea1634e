"""The ingest core with the real demo model, real files and the embedded Qdrant store."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from clipfuse.errors import BackendUnavailable, InvalidDocument
from clipfuse.images import ImageLoader
from clipfuse.ingest.pipeline import Indexer, document_key, last_versions
from clipfuse.plugin.qdrant import QdrantBackend
from clipfuse.schemas import parse_document


@pytest.fixture
def backend(qdrant_client: Any, collection_name: str) -> QdrantBackend:
    return QdrantBackend(qdrant_client, collection_name)


@pytest.fixture
def indexer(demo_embedder: Any, backend: QdrantBackend) -> Indexer:
    return Indexer(demo_embedder, backend, batch_size=16)


def _jpeg_b64(color: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, "JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_catalog_lands_with_report(
    indexer: Indexer, demo_documents: list[dict[str, Any]], backend: QdrantBackend
) -> None:
    report = indexer.index(demo_documents)
    assert report.indexed == len(demo_documents)
    assert report.rejected == []
    assert backend.count() == len(demo_documents)
    assert set(report.stage_seconds) == {"validate", "load", "embed_images", "embed_texts", "bm25", "upsert"}
    info = backend.index_info()
    assert info is not None and info.model == "clipfuse-demo"
    assert {"category", "color", "pattern", "price", "in_stock"} <= set(info.fields)
    assert info.fields["price"] == "number" and info.fields["in_stock"] == "bool"


def test_reindexing_is_idempotent(
    indexer: Indexer, demo_documents: list[dict[str, Any]], backend: QdrantBackend
) -> None:
    indexer.index(demo_documents[:20])
    indexer.index(demo_documents[:20])
    assert backend.count() == 20


def test_bad_documents_are_rejected_alone(
    indexer: Indexer, demo_documents: list[dict[str, Any]], backend: QdrantBackend, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    truncated = tmp_path / "truncated.jpg"
    good_bytes = Path(demo_documents[0]["images"][0]["path"]).read_bytes()
    truncated.write_bytes(good_bytes[: len(good_bytes) // 2])
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    bomb = tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(bomb)  # 81 M pixels, small file
    good = demo_documents[:6]
    bad = [
        {"id": "corrupt", "images": [{"path": str(corrupt)}], "title": "x"},
        {"id": "truncated", "images": [{"path": str(truncated)}], "title": "x"},
        {"id": "not-an-image", "images": [{"path": str(text_file)}]},
        {"id": "bomb", "images": [{"path": str(bomb)}]},
        {"id": "missing", "images": [{"path": str(tmp_path / "nope.jpg")}]},
        {"id": "unreachable", "images": [{"url": "http://nonexistent.invalid/p.jpg"}], "title": "x"},
        {"id": "empty"},
        {"id": "huge-caption", "caption": "x" * 10_000_000},
        {"id": "bad-attr", "title": "x", "attributes": {"price": "cheap"}},
        "not even an object",
    ]
    batch = [
        good[0],
        bad[0],
        good[1],
        bad[1],
        bad[2],
        good[2],
        bad[3],
        bad[4],
        bad[5],
        good[3],
        bad[6],
        bad[7],
        good[4],
        bad[8],
        bad[9],
        good[5],
    ]
    report = indexer.index_batch(batch)
    assert report.indexed == 6
    assert backend.count() == 6
    codes = {r.id: r.code for r in report.rejected}
    assert codes == {
        "corrupt": "image_unreadable",
        "truncated": "image_unreadable",
        "not-an-image": "image_unreadable",
        "bomb": "image_too_large",
        "missing": "image_not_found",
        "unreachable": "image_unreachable",
        "empty": "validation",
        "huge-caption": "validation",
        "bad-attr": "attribute_type",
        None: "validation",
    }
    reasons = {r.id: r.reason for r in report.rejected}
    assert "MAX_CAPTION_CHARS" in reasons["huge-caption"] and len(reasons["huge-caption"]) < 500
    assert "81,000,000 pixels" in reasons["bomb"]
    assert "empty" in reasons["empty"]
    assert "price" in reasons["bad-attr"] and "number" in reasons["bad-attr"]
    rejected = {r.id: r for r in report.rejected}
    assert rejected["corrupt"].stage == "load" and rejected["corrupt"].document is not None
    assert rejected["huge-caption"].document is None  # too large to keep for replay
    assert [r.position for r in report.rejected] == sorted(r.position for r in report.rejected)  # type: ignore[type-var]


def test_the_duplicates_rule_keeps_the_last_version() -> None:
    """One rule for the Indexer and the workers: each position maps to the version kept."""
    assert last_versions([]) == []
    assert last_versions(["a", "b", "a", None, "b", None, "a"]) == [6, 4, 6, 3, 4, 5, 6]
    keys = ["x", "y", "x"]
    assert [i for i, winner in enumerate(last_versions(keys)) if winner == i] == [1, 2]


@given(st.one_of(st.text(max_size=40), st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False)))
def test_document_key_is_the_id_validation_gives(value: Any) -> None:
    """The workers key raw messages by document_key; the Indexer keys validated documents by id: the same."""
    raw = {"id": value, "title": "t"}
    try:
        validated = parse_document(raw).id
    except InvalidDocument:
        return
    assert document_key(raw) == validated
    assert document_key(parse_document(raw)) == validated


def test_document_key_without_a_usable_id() -> None:
    assert document_key({"id": True}) is None and document_key({"title": "no id"}) is None
    assert document_key(["not", "a", "document"]) is None and document_key({"id": 7}) == "7"


def test_duplicate_ids_in_a_batch_keep_the_last(indexer: Indexer, backend: QdrantBackend) -> None:
    report = indexer.index_batch(
        [
            {"id": "dup", "title": "first version", "images": [{"data": _jpeg_b64((255, 0, 0))}]},
            {"id": "other", "title": "another product"},
            {"id": "dup", "title": "second version", "images": [{"data": _jpeg_b64((0, 0, 255))}]},
        ]
    )
    assert report.indexed == 2 and backend.count() == 2
    assert [(r.id, r.code, r.position) for r in report.rejected] == [("dup", "duplicate_id", 0)]
    points, _ = backend.client.scroll(backend.collection, with_payload=True)
    titles = {p.payload["doc_id"]: p.payload["title"] for p in points}  # type: ignore[index]
    assert titles["dup"] == "second version"


def test_text_only_and_image_only_documents(indexer: Indexer, backend: QdrantBackend) -> None:
    report = indexer.index_batch(
        [
            {"id": "text-only", "title": "red wool scarf"},
            {"id": "image-only", "images": [{"data": _jpeg_b64((0, 255, 0))}]},
        ]
    )
    assert report.indexed == 2
    points = {p.payload["doc_id"]: p for p in backend.client.scroll(backend.collection, with_vectors=True)[0]}  # type: ignore[index]
    assert set(points["text-only"].vector) == {"text", "bm25"}  # type: ignore[arg-type]
    assert set(points["image-only"].vector) == {"image"}  # type: ignore[arg-type]


def test_multiple_images_are_averaged_and_normalised(
    indexer: Indexer, demo_embedder: Any, backend: QdrantBackend
) -> None:
    red, blue = _jpeg_b64((255, 0, 0)), _jpeg_b64((0, 0, 255))
    indexer.index_batch([{"id": "two", "images": [{"data": red}, {"data": blue}]}])
    stored = np.array(backend.client.scroll(backend.collection, with_vectors=True)[0][0].vector["image"])  # type: ignore[index]
    loader = ImageLoader()
    from clipfuse.schemas import ImageSource

    vecs = demo_embedder.embed_images([loader.load(ImageSource(data=red)), loader.load(ImageSource(data=blue))])
    expected = vecs.mean(axis=0)
    expected /= np.linalg.norm(expected)
    assert np.allclose(stored, expected, atol=1e-5)
    assert np.linalg.norm(stored) == pytest.approx(1.0, abs=1e-5)


def test_delete(indexer: Indexer, demo_documents: list[dict[str, Any]], backend: QdrantBackend) -> None:
    indexer.index(demo_documents[:5])
    report = indexer.delete([demo_documents[0]["id"], demo_documents[1]["id"]])
    assert report.deleted == 2 and backend.count() == 3


def test_engine_outage_raises_instead_of_rejecting(
    demo_embedder: Any, demo_documents: list[dict[str, Any]], tmp_path: Path
) -> None:
    """An unreachable engine is retryable: nothing is turned into a rejection."""
    from qdrant_client import QdrantClient

    backend = QdrantBackend(QdrantClient(url="http://127.0.0.1:9", timeout=2, check_compatibility=False), "products")
    with pytest.raises(BackendUnavailable):
        Indexer(demo_embedder, backend).index_batch(demo_documents[:3])

"""HybridSearcher through the user's own QdrantClient, with the real demo model and catalog."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from clipfuse.errors import ConfigurationError, InvalidQuery
from clipfuse.ingest.pipeline import Indexer
from clipfuse.plugin import HybridSearcher
from clipfuse.plugin.qdrant import QdrantBackend
from clipfuse.schemas import FilterCondition, ImageSource, SearchRequest, Weights


@pytest.fixture
def searcher(
    qdrant_client: Any, collection_name: str, demo_embedder: Any, demo_documents: list[dict[str, Any]]
) -> HybridSearcher:
    report = Indexer(demo_embedder, QdrantBackend(qdrant_client, collection_name)).index(demo_documents)
    assert report.indexed == len(demo_documents)
    return HybridSearcher(qdrant_client, collection=collection_name, embedder=demo_embedder)


def _attrs(hit: Any) -> tuple[str, str, str]:
    return hit.payload["category"], hit.payload["color"], hit.payload["pattern"]


def test_text_query_finds_matching_products(searcher: HybridSearcher, demo_documents: list[dict[str, Any]]) -> None:
    target = demo_documents[3]["attributes"]
    text = f"{target['color']} {target['pattern']} {target['category']}"
    response = searcher.search(SearchRequest(text=text, k=3))
    top = response.hits[0]
    assert _attrs(top) == (target["category"], target["color"], target["pattern"])
    assert top.signals.image is not None and top.signals.text is not None and top.signals.bm25 is not None
    # BM25 gives equal scores to equal captions; Qdrant returns such ties in storage order, clipfuse in id
    # order, and then fuses itself (the engine's fused ranks would differ): the same answer every time
    again = searcher.search(SearchRequest(text=text, k=3))
    assert [(h.id, h.score) for h in again.hits] == [(h.id, h.score) for h in response.hits]


def test_image_only_signal_understands_text(searcher: HybridSearcher, demo_documents: list[dict[str, Any]]) -> None:
    """Cross-modal: text against image vectors only (no BM25, no text vectors)."""
    hits_ok = 0
    sample = demo_documents[:20]
    for doc in sample:
        a = doc["attributes"]
        hits = searcher.search(
            SearchRequest(text=f"{a['color']} {a['category']}", weights=Weights(image=1, text=0, bm25=0), k=5)
        ).hits
        hits_ok += any((h.payload["category"], h.payload["color"]) == (a["category"], a["color"]) for h in hits)
    assert hits_ok / len(sample) >= 0.8


def test_image_query_finds_the_same_product_first(
    searcher: HybridSearcher, demo_documents: list[dict[str, Any]]
) -> None:
    for doc in demo_documents[:5]:
        response = searcher.search(SearchRequest(image=ImageSource(path=doc["images"][0]["path"]), k=5))
        assert response.hits[0].id == doc["id"]
        assert response.hits[0].signals.image == pytest.approx(1.0, abs=1e-3)
        assert response.hits[0].signals.bm25 is None


def test_composed_query_moves_to_the_modifier(searcher: HybridSearcher, demo_documents: list[dict[str, Any]]) -> None:
    """A photo plus 'but in <colour>' finds the same kind of product in the other colour."""
    moved = 0
    tried = 0
    colors = {d["attributes"]["color"] for d in demo_documents}
    for doc in demo_documents[:12]:
        a = doc["attributes"]
        others = sorted(
            c
            for c in colors
            if c != a["color"]
            and any(
                d["attributes"]["color"] == c and d["attributes"]["category"] == a["category"] for d in demo_documents
            )
        )
        if not others:
            continue
        tried += 1
        new_color = others[0]
        hits = searcher.search(
            SearchRequest(
                image=ImageSource(path=doc["images"][0]["path"]),
                text=f"{new_color} {a['category']}",
                k=3,
            )
        ).hits
        moved += (hits[0].payload["color"], hits[0].payload["category"]) == (new_color, a["category"])
    assert tried >= 5
    assert moved / tried >= 0.8


def test_filters_apply_to_every_signal(searcher: HybridSearcher) -> None:
    response = searcher.search(
        SearchRequest(
            text="boots",
            filters=[FilterCondition(field="price", op="lte", value=80), FilterCondition(field="in_stock", value=True)],
            k=50,
        )
    )
    assert response.hits
    assert all(h.payload["price"] <= 80 and h.payload["in_stock"] is True for h in response.hits)


def test_precomputed_vectors_need_no_embedder(
    searcher: HybridSearcher, qdrant_client: Any, collection_name: str, demo_embedder: Any
) -> None:
    dense = demo_embedder.embed_texts(["red t-shirt"])[0]
    light = HybridSearcher(qdrant_client, collection=collection_name)
    assert [h.id for h in light.search(SearchRequest(text="red t-shirt"), dense=dense).hits] == [
        h.id for h in searcher.search(SearchRequest(text="red t-shirt")).hits
    ]
    with pytest.raises(ConfigurationError, match="no embedder"):
        light.search(SearchRequest(text="red t-shirt"))


def test_keyword_arguments_and_bad_requests(searcher: HybridSearcher) -> None:
    assert searcher.search(text="scarf", k=2).hits
    with pytest.raises(InvalidQuery, match="neither"):
        searcher.search(k=2)
    with pytest.raises(InvalidQuery, match="query image"):
        searcher.search(image={"path": "/does/not/exist.jpg"})


def test_missing_index_is_a_clear_error(qdrant_client: Any, demo_embedder: Any) -> None:
    with pytest.raises(InvalidQuery, match="does not exist yet"):
        HybridSearcher(qdrant_client, collection="never-made", embedder=demo_embedder).search(text="x")


def test_unknown_client_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="unsupported client"):
        HybridSearcher(object(), collection="x")


def test_importing_the_plugin_stays_light() -> None:
    code = "import sys, clipfuse, clipfuse.plugin, clipfuse.schemas; print(sorted(m for m in ('torch', 'celery', 'open_clip') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_composed_query_vector_is_the_normalised_mix(
    searcher: HybridSearcher, demo_embedder: Any, demo_documents: list[dict[str, Any]]
) -> None:
    path = demo_documents[0]["images"][0]["path"]
    request = SearchRequest(image=ImageSource(path=path), text="black", compose_alpha=0.25)
    vec = searcher.encode_query(request)
    # the searcher decodes query images as the indexer does (reduced-size JPEG decoding)
    img = demo_embedder.embed_images(
        [searcher.image_loader.load(ImageSource(path=path), draft_size=demo_embedder.draft_size)]
    )[0]
    txt = demo_embedder.embed_texts(["black"])[0]
    expected = 0.25 * img + 0.75 * txt
    assert np.allclose(vec, expected / np.linalg.norm(expected), atol=1e-5)

"""The query side's text encoders (issue 16): the LRU cache of query embeddings and the text
tower on ONNX Runtime give the same hits as the torch path, on the demo catalog in Qdrant Edge."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipfuse.embedding import Embedder, PreparingEmbedder
from clipfuse.embedding.cache import CachedQueryEmbedder, normalise_query_text
from clipfuse.errors import ConfigurationError
from clipfuse.ingest.pipeline import Indexer
from clipfuse.plugin import HybridSearcher
from clipfuse.plugin.edge import EdgeBackend
from clipfuse.schemas import SearchRequest
from clipfuse.settings import ModelSettings


@pytest.fixture(scope="module")
def store(
    tmp_path_factory: pytest.TempPathFactory, demo_embedder: Any, demo_documents: list[dict[str, Any]]
) -> Iterator[EdgeBackend]:
    backend = EdgeBackend(tmp_path_factory.mktemp("edge"), "products", exact=True)
    report = Indexer(demo_embedder, backend).index(demo_documents)
    assert report.indexed == len(demo_documents)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def queries(demo_documents: list[dict[str, Any]]) -> list[str]:
    """Shopper-like texts from the catalog's own attributes, short to long."""
    out = []
    for doc in demo_documents[:30]:
        a = doc["attributes"]
        out += [a["category"], f"{a['color']} {a['category']}", f"{a['color']} {a['pattern']} {a['category']}"]
    out.append(demo_documents[0]["title"] + " " + demo_documents[0]["caption"])
    return list(dict.fromkeys(out))


def _ranking(searcher: HybridSearcher, text: str) -> list[tuple[float, frozenset[str]]]:
    """The top 10 as (score, ids with that score), best first: Edge's fusion orders documents with
    exactly equal RRF scores differently from one call to the next, so ties compare as sets
    (the group at the cut keeps only the ids strictly above it comparable: its score)."""
    hits = searcher.search(SearchRequest(text=text, k=10)).hits
    groups: dict[float, set[str]] = {}
    for h in hits:
        groups.setdefault(round(h.score, 5), set()).add(h.id)
    last = min(groups)
    return [
        (score, frozenset(ids) if score != last else frozenset({str(len(ids))}))
        for score, ids in sorted(groups.items(), reverse=True)
    ]


def _ids(ranking: list[tuple[float, frozenset[str]]]) -> set[str]:
    return {i for _, ids in ranking[:-1] for i in ids}


@pytest.fixture(scope="module")
def onnx_fp32(demo_embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("onnxruntime", reason="the ONNX text tower needs the onnx extra: pip install 'clipfuse[onnx]'")
    from clipfuse.embedding.onnx_text import OnnxTextEmbedder

    embedder = OnnxTextEmbedder(demo_embedder, quantization="fp32", cache_dir=tmp_path_factory.mktemp("onnx"))
    embedder.load()
    return embedder


def test_normalisation_is_the_tokenizers(demo_embedder: Any) -> None:
    for text in ["  Red   Striped\tT-Shirt ", "BLACK dress", "linen\n scarf"]:
        assert np.array_equal(
            demo_embedder.tokenize([text]).numpy(), demo_embedder.tokenize([normalise_query_text(text)]).numpy()
        )


def test_cache_gives_the_same_hits_as_uncached(store: EdgeBackend, demo_embedder: Any, queries: list[str]) -> None:
    plain = HybridSearcher(store, embedder=demo_embedder)
    cached_embedder = CachedQueryEmbedder(demo_embedder, size=1024)
    cached = HybridSearcher(store, embedder=cached_embedder)
    expected = {q: _ranking(plain, q) for q in queries}
    assert all(expected.values())
    for _ in range(2):  # first pass fills the cache, the second answers from it
        for q in queries:
            assert _ranking(cached, q) == expected[q], q
    stats = cached_embedder.stats()
    assert (stats.misses, stats.hits, stats.size) == (len(queries), len(queries), len(queries))
    # case and spacing variants hit the same entry and rank the same
    variant = "  " + queries[1].upper().replace(" ", "   ") + " "
    assert _ranking(cached, variant) == expected[queries[1]]
    assert cached_embedder.stats().hits == len(queries) + 1


def test_cache_vectors_equal_the_models_and_stay_bounded(demo_embedder: Any) -> None:
    cache = CachedQueryEmbedder(demo_embedder, size=3)
    texts = ["red dress", "blue scarf", "green hat", "black boots", "white sneakers"]
    first = cache.embed_texts(texts)  # one batch with more texts than the cache holds
    np.testing.assert_array_equal(first, demo_embedder.embed_texts(texts))
    assert cache.stats().size == 3
    mixed = cache.embed_texts(["white sneakers", "red dress", "black boots"])  # 2 hits, 1 evicted miss
    # equal up to float rounding: the model's own result depends on the batch it is computed in (~3e-8)
    np.testing.assert_allclose(
        mixed, demo_embedder.embed_texts(["white sneakers", "red dress", "black boots"]), atol=1e-6
    )
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.size) == (2, 6, 3)
    returned = cache.embed_texts(["red dress"])
    returned[0, :] = 0.0  # a caller changing its result does not change the cache
    np.testing.assert_allclose(cache.embed_texts(["red dress"]), demo_embedder.embed_texts(["red dress"]), atol=1e-6)


def test_cache_is_thread_safe(demo_embedder: Any) -> None:
    cache = CachedQueryEmbedder(demo_embedder, size=8)
    texts = [f"{c} dress" for c in ["red", "blue", "green", "black", "white", "pink", "grey", "navy", "olive", "beige"]]
    expected = {t: demo_embedder.embed_texts([t])[0] for t in texts}
    errors: list[str] = []

    def work(offset: int) -> None:
        for i in range(60):
            t = texts[(i + offset) % len(texts)]
            if not np.array_equal(cache.embed_texts([t])[0], expected[t]):
                errors.append(t)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stats = cache.stats()
    assert stats.size == 8 and stats.hits + stats.misses == 240


def test_cache_keeps_the_embedder_interfaces(demo_embedder: Any) -> None:
    cache = CachedQueryEmbedder(demo_embedder, size=2)
    assert isinstance(cache, Embedder) and isinstance(cache, PreparingEmbedder)
    assert (cache.dim, cache.model_id, cache.draft_size) == (demo_embedder.dim, demo_embedder.model_id, 64)
    assert cache.fingerprint == demo_embedder.fingerprint and len(cache.fingerprint) == 16
    assert CachedQueryEmbedder(demo_embedder, size=0).embed_texts(["x"]).shape == (1, demo_embedder.dim)
    with pytest.raises(ConfigurationError):
        CachedQueryEmbedder(demo_embedder, size=-1)


def test_onnx_fp32_equals_torch(onnx_fp32: Any, demo_embedder: Any, queries: list[str]) -> None:
    texts = [*queries, "", "a " * 40]  # empty, and longer than the context (truncated as torch does)
    ours, theirs = onnx_fp32.embed_texts(texts), demo_embedder.embed_texts(texts)
    cosine = (ours * theirs).sum(-1)
    assert cosine.min() >= 0.99999, cosine.min()
    assert np.abs(ours - theirs).max() < 1e-4
    assert isinstance(onnx_fp32, PreparingEmbedder) and onnx_fp32.model_id == demo_embedder.model_id


def test_onnx_fp32_same_hits_as_torch(
    store: EdgeBackend, onnx_fp32: Any, demo_embedder: Any, queries: list[str]
) -> None:
    plain = HybridSearcher(store, embedder=demo_embedder)
    onnx = HybridSearcher(store, embedder=CachedQueryEmbedder(onnx_fp32, size=64))
    for q in queries:
        assert _ranking(plain, q) == _ranking(onnx, q), q


def test_onnx_int8_stays_close(store: EdgeBackend, demo_embedder: Any, queries: list[str], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from clipfuse.embedding.onnx_text import OnnxTextEmbedder

    int8 = OnnxTextEmbedder(demo_embedder, quantization="int8", cache_dir=tmp_path)
    cosine = (int8.embed_texts(queries) * demo_embedder.embed_texts(queries)).sum(-1)
    assert cosine.min() >= 0.99, cosine.min()
    plain = HybridSearcher(store, embedder=demo_embedder)
    quant = HybridSearcher(store, embedder=int8)
    overlap = [
        len(_ids(_ranking(plain, q)) & _ids(_ranking(quant, q))) / max(1, len(_ids(_ranking(plain, q))))
        for q in queries
    ]
    # the top-10 documents stay (0.997 measured); their fused scores move with small rank swaps
    assert np.mean(overlap) >= 0.95, np.mean(overlap)
    assert int8.fingerprint.endswith("-onnx-int8")
    assert list(tmp_path.glob("text-*-int8.onnx")), "the export is cached by fingerprint"


def test_factory_builds_the_query_side(tmp_path: Path) -> None:
    from clipfuse.embedding.openclip import OpenClipEmbedder
    from clipfuse.factory import build_query_embedder, resolve_text_encoder

    base = ModelSettings(name="clipfuse-demo", device="cpu", cache_dir=str(tmp_path))
    torch_side = build_query_embedder(base.model_copy(update={"text_encoder": "torch", "query_cache_size": 16}))
    assert isinstance(torch_side, CachedQueryEmbedder) and isinstance(torch_side.inner, OpenClipEmbedder)
    assert isinstance(
        build_query_embedder(base.model_copy(update={"text_encoder": "torch", "query_cache_size": 0})), OpenClipEmbedder
    )
    assert resolve_text_encoder(base.model_copy(update={"device": "cuda"})) == "torch"
    pytest.importorskip("onnxruntime")
    from clipfuse.embedding.onnx_text import OnnxTextEmbedder

    assert resolve_text_encoder(base) == "onnx"
    auto = build_query_embedder(base)
    assert isinstance(auto, CachedQueryEmbedder) and isinstance(auto.inner, OnnxTextEmbedder)
    auto.embed_texts(["red dress"])
    assert list((tmp_path / "onnx").glob("text-*-fp32.onnx"))

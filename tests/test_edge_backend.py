"""The backend contract on Qdrant Edge, plus what only an embedded engine must do:
persistence across close/reopen, one process at a time, index building, parity with qdrant-client."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from backend_contract import CATALOG, DIM, FIELDS, BackendContract, indexed, unit

from clipfuse.errors import ConfigurationError
from clipfuse.plugin import HybridSearcher, IndexedDocument
from clipfuse.plugin.bm25 import Bm25Encoder
from clipfuse.plugin.edge import EdgeBackend, build_edge_filter, build_edge_requests, edge_native_fusion
from clipfuse.plugin.protocol import HybridQuery, Retriever
from clipfuse.schemas import FilterCondition, SearchRequest, Weights


class TestEdgeContract(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[EdgeBackend]:
        backend = EdgeBackend(tmp_path / "edge", "contract")
        yield backend
        backend.close()


class TestEdgeContractEngineFused(BackendContract):
    """The same contract with Edge's own fusion asked for (off by default: clipfuse fuses once)."""

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[EdgeBackend]:
        backend = EdgeBackend(tmp_path / "edge", "contract", engine_fusion=True)
        yield backend
        backend.close()


class TestEdgeContractExact(BackendContract):
    """The same contract with exact search forced (the mode the parity checks use)."""

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[EdgeBackend]:
        backend = EdgeBackend(tmp_path / "edge", "contract", exact=True, ef=64)
        yield backend
        backend.close()


# -- helpers ---------------------------------------------------------------------------
def _load(backend: EdgeBackend) -> EdgeBackend:
    backend.ensure_schema(dim=DIM, model="contract-model")
    backend.register_fields(FIELDS)  # type: ignore[arg-type]
    assert backend.upsert([indexed(e, backend) for e in CATALOG]) == {}
    return backend


def _ids(backend: EdgeBackend, request: SearchRequest, dense: np.ndarray) -> list[str]:
    return [h.id for h in HybridSearcher(backend).search(request, dense=dense).hits]


_WORDS = ("red", "blue", "black", "leather", "cotton", "wool", "boots", "sneakers", "bag", "scarf", "dress", "cap")


def _corpus(n: int, dim: int, seed: int = 7) -> list[IndexedDocument]:
    """Clustered unit vectors (like real embeddings, unlike i.i.d. Gaussians) and texts of distinct lengths.

    Every text has its own length, so BM25 scores do not tie and rankings are comparable across engines.
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(4, n // 50), dim))
    bm25 = Bm25Encoder()
    docs = []
    for i in range(n):
        image = centers[rng.integers(len(centers))] + 0.35 * rng.normal(size=dim)
        text = centers[rng.integers(len(centers))] + 0.35 * rng.normal(size=dim)
        words = [str(w) for w in rng.choice(_WORDS, size=3 + i % 5)] + [f"filler{j}" for j in range(i)]
        title = " ".join(words)
        docs.append(
            IndexedDocument(
                id=f"doc-{i:05d}",
                payload={"title": title, "category": f"c{i % 4}", "price": float(i % 50), "in_stock": i % 3 != 0},
                image_vector=(image / np.linalg.norm(image)).astype(np.float32),
                text_vector=(text / np.linalg.norm(text)).astype(np.float32),
                sparse=bm25.encode_documents([title])[0],
                text=title,
            )
        )
    return docs


_CORPUS_FIELDS = {"category": "keyword", "price": "number", "in_stock": "bool"}


def _close(x: float, y: float, tol: float = 1e-5) -> bool:
    return abs(x - y) <= tol * max(1.0, abs(x), abs(y))


def _assert_same_ranking(a: list[tuple[str, float]], b: list[tuple[str, float]], k: int = 10) -> None:
    """Same top-k: equal scores position by position, equal ids (as sets within groups of tied scores)."""
    assert len(a[:k]) == len(b[:k])
    assert all(_close(sa, sb) for (_, sa), (_, sb) in zip(a[:k], b[:k], strict=True)), (a[:k], b[:k])
    cut = a[k][1] if len(a) > k else None
    start = 0
    while start < min(k, len(a)):
        end = start + 1
        while end < min(k, len(a)) and _close(a[end][1], a[start][1]):
            end += 1
        if cut is None or not _close(a[start][1], cut):  # tied with the first hit below the cut: either may stay
            ids_a, ids_b = {i for i, _ in a[start:end]}, {i for i, _ in b[start:end]}
            assert ids_a == ids_b, f"different documents at score {a[start][1]}: {sorted(ids_a)} vs {sorted(ids_b)}"
        start = end


# -- persistence and locking -------------------------------------------------------------
def test_close_and_reopen_keeps_everything(tmp_path: Path) -> None:
    backend = _load(EdgeBackend(tmp_path, "products"))
    request = SearchRequest(text="red leather", k=6)
    before = _ids(backend, request, unit(1, 0.5))
    backend.delete(["scarf-blue"])
    backend.close()
    backend.close()  # idempotent

    reopened = EdgeBackend(tmp_path, "products")
    try:
        info = reopened.index_info()
        assert info is not None and info.dim == DIM and info.model == "contract-model" and dict(info.fields) == FIELDS
        assert reopened.count() == len(CATALOG) - 1
        assert _ids(reopened, request, unit(1, 0.5)) == [i for i in before if i != "scarf-blue"][:6]
        reopened.ensure_schema(dim=DIM, model="contract-model")  # still a no-op
        hits = (
            HybridSearcher(reopened)
            .search(
                SearchRequest(text="x", filters=[FilterCondition(field="in_stock", value=False)], k=20), dense=unit(1)
            )
            .hits
        )
        assert {h.id for h in hits} == {"sneaker-red"}
    finally:
        reopened.close()


def test_a_closed_backend_says_so(tmp_path: Path) -> None:
    from clipfuse.errors import BackendError

    backend = _load(EdgeBackend(tmp_path, "products"))
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.count()


_OPEN_IN_CHILD = textwrap.dedent(
    """
    import sys
    from clipfuse.errors import ConfigurationError
    from clipfuse.plugin.edge import EdgeBackend
    try:
        backend = EdgeBackend(sys.argv[1], "products")
        print("OPENED", backend.count())
        backend.close()
    except ConfigurationError as e:
        print("REFUSED", e)
    """
)


def _open_in_child(path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _OPEN_IN_CHILD, str(path)], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.strip()


def test_a_second_process_gets_a_clear_error_naming_the_lock(tmp_path: Path) -> None:
    backend = _load(EdgeBackend(tmp_path, "products"))
    try:
        out = _open_in_child(tmp_path)
        assert out.startswith("REFUSED"), out
        assert "another process" in out and "lock" in out and str(tmp_path / "products.lock") in out
    finally:
        backend.close()
    assert not (tmp_path / "products.lock").exists(), "a clean close leaves no lock file behind"
    assert _open_in_child(tmp_path) == f"OPENED {len(CATALOG)}"
    assert not (tmp_path / "products.lock").exists()


def test_a_second_open_in_the_same_process_is_refused_too(tmp_path: Path) -> None:
    backend = _load(EdgeBackend(tmp_path, "products"))
    try:
        with pytest.raises(ConfigurationError, match="lock"):
            EdgeBackend(tmp_path, "products")
    finally:
        backend.close()


def test_metadata_sidecar_is_written_atomically(tmp_path: Path) -> None:
    import json

    backend = _load(EdgeBackend(tmp_path, "products"))
    try:
        record = json.loads((tmp_path / "products.clipfuse.json").read_text())
        assert record == {"version": 1, "model": "contract-model", "dim": DIM, "fields": FIELDS}
        backend.register_fields({"brand": "keyword"})
        assert json.loads((tmp_path / "products.clipfuse.json").read_text())["fields"]["brand"] == "keyword"
        assert not list(tmp_path.glob("*.tmp"))  # no temporary file left behind
    finally:
        backend.close()


def test_a_store_clipfuse_did_not_make_is_refused(tmp_path: Path) -> None:
    import qdrant_edge as qe

    shard = qe.EdgeShard.create(
        str(tmp_path / "foreign"), qe.EdgeConfig(vectors={"v": qe.EdgeVectorParams(size=4, distance=qe.Distance.Dot)})
    )
    shard.close()
    backend = EdgeBackend(tmp_path, "foreign")
    try:
        with pytest.raises(ConfigurationError, match="not made by clipfuse"):
            backend.index_info()
    finally:
        backend.close()


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", ""])
def test_collection_names_stay_inside_the_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigurationError, match="collection name"):
        EdgeBackend(tmp_path, name)


def test_missing_store_reads_as_empty(tmp_path: Path) -> None:
    backend = EdgeBackend(tmp_path / "nothing", "products")
    assert backend.index_info() is None and backend.count() == 0 and backend.optimize() is False
    backend.delete(["x"])
    assert not (tmp_path / "nothing" / "products").exists()
    backend.close()


# -- index building ----------------------------------------------------------------------
def _top(backend: EdgeBackend, query: HybridQuery) -> list[list[tuple[str, float]]]:
    return [[(r.id, r.score) for r in ranked] for ranked in backend.search(query).lists]


def _queries(docs: list[IndexedDocument], n: int, dim: int, candidates: int = 11) -> list[HybridQuery]:
    rng = np.random.default_rng(99)
    bm25 = Bm25Encoder()
    out = []
    for i in range(n):
        base = docs[int(rng.integers(len(docs)))].image_vector
        assert base is not None
        dense = base + 0.2 * rng.normal(size=dim)
        dense = (dense / np.linalg.norm(dense)).astype(np.float32)
        text = " ".join(str(w) for w in rng.choice(_WORDS, size=2))
        filters = (FilterCondition(field="category", value=f"c{i % 4}"),) if i % 2 else ()
        out.append(
            HybridQuery(
                retrievers=(
                    Retriever("image", 1.0, dense=dense),
                    Retriever("text", 1.0, dense=dense),
                    Retriever("bm25", 1.0, sparse=bm25.encode_query(text), text=text),
                ),
                filters=filters,
                fusion="rrf",
                rrf_k=60,
                limit=11,  # one past the top-10, to tell a tie at the cut from a difference
                candidates=candidates,
            )
        )
    return out


def test_search_before_and_after_optimize_agree_when_exact(tmp_path: Path) -> None:
    dim = 32
    docs = _corpus(1500, dim)
    # small thresholds, so that optimize() really builds HNSW graphs for this small store
    backend = EdgeBackend(tmp_path, "products", exact=True, indexing_threshold_kb=20, full_scan_threshold_kb=1)
    try:
        backend.ensure_schema(dim=dim, model="m")
        backend.register_fields(_CORPUS_FIELDS)  # type: ignore[arg-type]
        assert backend.upsert(docs) == {}
        # plain segments: dense searches are brute force (only the sparse inverted index counts as indexed)
        assert backend.stats()["indexed_vectors"] <= len(docs)
        queries = _queries(docs, 12, dim)
        before = [_top(backend, q) for q in queries]
        assert backend.optimize() is True
        assert backend.stats()["indexed_vectors"] >= 3 * len(docs)  # + both dense vectors' HNSW graphs
        after = [_top(backend, q) for q in queries]
        for lists_before, lists_after in zip(before, after, strict=True):
            for a, b in zip(lists_before, lists_after, strict=True):
                _assert_same_ranking(a, b)
        # approximate search over the graphs finds (nearly) the same dense neighbours
        backend.exact = False
        overlap = []
        for q, exact_lists in zip(queries, after, strict=True):
            approx_lists = _top(backend, q)
            for a, e in zip(approx_lists[:2], exact_lists[:2], strict=True):
                overlap.append(len({i for i, _ in a[:10]} & {i for i, _ in e[:10]}) / 10)
        assert sum(overlap) / len(overlap) >= 0.9
        assert backend.count() == len(docs)
    finally:
        backend.close()


# -- parity with qdrant-client's local mode ------------------------------------------------
def test_same_top10_as_qdrant_client_local_mode(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient

    from clipfuse.plugin.qdrant import QdrantBackend

    dim = 16
    docs = _corpus(200, dim, seed=3)
    # engine_fusion: Edge's own fusion (off by default: clipfuse fuses once) must equal Qdrant's too
    edge = EdgeBackend(tmp_path / "edge", "products", exact=True, engine_fusion=True)
    local = QdrantBackend(QdrantClient(path=str(tmp_path / "local")), "products")
    try:
        for backend in (edge, local):
            backend.ensure_schema(dim=dim, model="m")
            backend.register_fields(_CORPUS_FIELDS)  # type: ignore[arg-type]
            assert backend.upsert(docs) == {}
        edge.optimize()
        for query in _queries(docs, 16, dim, candidates=30):
            edge_result, local_result = edge.search(query), local.search(query)
            for a, b in zip(edge_result.lists, local_result.lists, strict=True):
                _assert_same_ranking([(r.id, r.score) for r in a], [(r.id, r.score) for r in b])
            assert edge_result.fused is not None and local_result.fused is not None
            _assert_same_ranking(
                [(r.id, r.score) for r in edge_result.fused], [(r.id, r.score) for r in local_result.fused]
            )
            top = edge_result.fused[0].id
            assert edge_result.payloads[top] == local_result.payloads[top]
        # and through the searcher, with client-side fusion (linear) and a filter on a bool and a range
        request = SearchRequest(
            text="red leather boots",
            fusion="linear",
            weights=Weights(image=1, text=0.5, bm25=2),
            filters=[FilterCondition(field="in_stock", value=True), FilterCondition(field="price", op="lt", value=30)],
        )
        dense = docs[5].image_vector
        on_edge = HybridSearcher(edge).search(request, dense=dense)
        on_local = HybridSearcher(local).search(request, dense=dense)
        assert on_edge.fused_by == on_local.fused_by == "client"
        assert [(h.id, round(h.score, 4), h.payload) for h in on_edge.hits] == [
            (h.id, round(h.score, 4), h.payload) for h in on_local.hits
        ]
    finally:
        edge.close()
        local.close()


# -- translation ---------------------------------------------------------------------------
def test_filter_translation_is_structural() -> None:
    flt: Any = build_edge_filter(
        [
            FilterCondition(field="category", op="eq", value="shoes"),
            FilterCondition(field="price", op="lte", value=120.0),
            FilterCondition(field="price", op="eq", value=35),
            FilterCondition(field="in_stock", op="eq", value=False),
            FilterCondition(field="color", op="nin", value=["red", "blue"]),
            FilterCondition(field="size", op="in", value=[38, 39.5]),
        ]
    )
    assert flt is not None and flt.must is not None and flt.must_not is not None
    category, price, exact_price, in_stock, sizes = flt.must
    assert category.key == "category" and category.match.value == "shoes"
    assert price.key == "price" and price.range.lte == 120.0 and price.range.gte is None
    assert exact_price.range.gte == exact_price.range.lte == 35.0  # numbers compare as float ranges
    assert in_stock.match.value is False  # a real bool, not the integer 0
    assert [c.range.gte for c in sizes.should] == [38.0, 39.5]
    (colors,) = flt.must_not
    assert colors.key == "color" and list(colors.match.value) == ["red", "blue"]
    assert build_edge_filter([]) is None


def test_hostile_filter_values_stay_values() -> None:
    value = 'shoes" OR 1=1 --'
    flt: Any = build_edge_filter([FilterCondition(field="category", value=value)])
    assert flt is not None and flt.must is not None and flt.must[0].match.value == value


def test_native_fusion_choice() -> None:
    dense = np.ones(4, dtype=np.float32)

    def query(fusion: str, weights: tuple[float, float], rrf_k: float = 60.0) -> HybridQuery:
        return HybridQuery(
            retrievers=(Retriever("image", weights[0], dense=dense), Retriever("text", weights[1], dense=dense)),
            filters=(),
            fusion=fusion,  # type: ignore[arg-type]
            rrf_k=rrf_k,
            limit=10,
            candidates=100,
        )

    fused = edge_native_fusion(query("rrf", (1, 1)))
    assert fused is not None and fused.k == 61 and fused.weights is None
    fused = edge_native_fusion(query("rrf", (2, 1)))
    assert fused is not None and fused.weights == [2.0, 1.0]
    assert edge_native_fusion(query("rrf", (1, 1), rrf_k=2.5)) is None
    assert edge_native_fusion(query("dbsf", (1, 1))) is not None
    assert edge_native_fusion(query("dbsf", (2, 1))) is None
    assert edge_native_fusion(query("linear", (1, 1))) is None
    requests, native = build_edge_requests(query("rrf", (1, 1)))
    assert native and len(requests) == 3 and len(requests[-1].prefetches) == 2
    single = HybridQuery(
        retrievers=(Retriever("image", 1.0, dense=dense),), filters=(), fusion="rrf", rrf_k=60, limit=10, candidates=10
    )
    requests, native = build_edge_requests(single)
    assert not native and len(requests) == 1


def test_a_fresh_process_maps_hits_back_to_documents(tmp_path: Path) -> None:
    """Per-signal lists carry no payload: a reopened store learns document ids lazily, or all at once."""
    backend = _load(EdgeBackend(tmp_path, "products"))
    backend.close()
    reopened = EdgeBackend(tmp_path, "products")
    try:
        searcher = HybridSearcher(reopened)
        for fusion in ("rrf", "linear"):  # engine-fused, then client-fused (payloads read for the hits only)
            hits = searcher.search(SearchRequest(text="red leather", fusion=fusion, k=6), dense=unit(1, 0.5)).hits
            assert {h.id for h in hits} <= {e["id"] for e in CATALOG} and len(hits) == 6
            assert all(h.payload["title"] and "doc_id" not in h.payload for h in hits)
        fresh = EdgeBackend(tmp_path / "other", "products")
        assert fresh.warm_ids() == 0
        fresh.close()
    finally:
        reopened.close()
    again = EdgeBackend(tmp_path, "products")
    try:
        assert again.warm_ids() == len(CATALOG)
        hits = HybridSearcher(again).search(SearchRequest(text="handbag", k=3), dense=unit(0.1, 1)).hits
        assert hits[0].id == "bag-red" and hits[0].payload["color"] == "red"
    finally:
        again.close()


def test_searches_work_without_the_id_map(tmp_path: Path) -> None:
    """Past its size cap the id map stops growing; document ids are then read per query."""
    backend = _load(EdgeBackend(tmp_path, "products"))
    try:
        expected = _ids(backend, SearchRequest(text="red leather", k=6), unit(1, 0.5))
        backend._doc_ids.clear()
        backend.max_cached_ids = 0
        assert _ids(backend, SearchRequest(text="red leather", k=6), unit(1, 0.5)) == expected
        assert backend._doc_ids == {}
    finally:
        backend.close()


def test_declared_capabilities(tmp_path: Path) -> None:
    """Callers test capabilities with isinstance; Edge is embedded (no broker) yet serves threads."""
    from clipfuse.plugin.protocol import Aliased, Embedded, Facetable, Fetchable, Scrollable, Warmable, is_embedded

    backend = EdgeBackend(tmp_path, "products")
    try:
        for capability in (Aliased, Embedded, Facetable, Fetchable, Scrollable, Warmable):
            assert isinstance(backend, capability), capability
        assert is_embedded(backend) and backend.thread_safe
    finally:
        backend.close()

"""The query phase of ``clipfuse bench`` (issue 16): where a text hybrid query's time goes.

On one Qdrant Edge store of ``documents`` products (random unit dense vectors, real BM25
vectors of generated product texts, HNSW built), side by side in one process:

- **engine**: ``HybridSearcher.search(request, dense=...)`` with the query vector computed
  up front (BM25 query encoding, the engine's three retrievers, fusion, hits with payloads),
  and ``backend.search`` alone;
- **whole search** per text encoder (torch at the process's threads, torch at 1 thread, ONNX
  Runtime fp32, ONNX Runtime int8): ``HybridSearcher.search(SearchRequest(text=...))``, no
  cache, every query text distinct; the encoders take turns query by query, so a burst of
  another process's work hits them alike; the cosine of each encoder's vectors to torch's;
- the same **with the other core loaded** by a spinning process (the p95 a service sees
  while a worker or a second request runs);
- **cache hit**: the whole search when the query embedding is in the LRU cache;
- **breakdown** for the service's default encoder: tokenizer, text tower, BM25, the rest of
  building the query, the engine (Edge fuses and returns the page's payloads in the same call),
  the whole search given the vector, JSON serialisation of the response.

Every figure carries the load average read when it was taken (the machine is shared).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ENCODERS", "query_latency"]

#: the text paths the bench can time; "torch-1t" is torch with one intra-op thread
ENCODERS = ("torch", "torch-1t", "onnx", "onnx-int8")

Progress = Callable[[str, int, int], None]


def _pct(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 3)


def _summary(values: Sequence[float]) -> dict[str, Any]:
    return {"p50_ms": _pct(values, 50), "p95_ms": _pct(values, 95), "mean_ms": round(float(np.mean(values)), 3)}


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


class _OneThread:
    """torch's text tower with one intra-op thread (the setting a multi-worker service would use)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self.inner.embed_texts(texts)  # type: ignore[no-any-return]
        finally:
            torch.set_num_threads(before)


def _encoders(embedder: Any, names: Sequence[str], cache_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        if name == "torch":
            out[name] = embedder
        elif name == "torch-1t":
            out[name] = _OneThread(embedder)
        elif name in ("onnx", "onnx-int8"):
            try:
                from clipfuse.embedding.onnx_text import OnnxTextEmbedder

                onnx = OnnxTextEmbedder(
                    embedder, quantization="int8" if name == "onnx-int8" else "fp32", cache_dir=cache_dir
                )
                onnx.load()
            except Exception as e:  # not installed, or a model it cannot export: say so, time the rest
                out[name] = f"skipped: {e}"
                continue
            out[name] = onnx
        else:
            raise ValueError(f"unknown query encoder {name!r}; known: {', '.join(ENCODERS)}")
    return out


class _BusyCore:
    """A process spinning on one core for at most ``limit_s`` (stopped on exit)."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> _BusyCore:
        code = f"import time\nend = time.monotonic() + {self.limit_s}\nwhile time.monotonic() < end: pass\n"
        self.proc = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(0.5)  # let it take its core
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def build_store(backend: Any, dim: int, n: int, texts: list[dict[str, str]], seed: int, progress: Progress) -> float:
    from clipfuse.embedding import l2_normalize
    from clipfuse.plugin.bm25 import Bm25Encoder
    from clipfuse.plugin.protocol import IndexedDocument

    rng = np.random.default_rng(seed)
    bm25 = Bm25Encoder()
    started = time.perf_counter()
    backend.ensure_schema(dim=dim, model="bench")
    backend.register_fields({"price": "number"})
    for start in range(0, n, 1000):
        count = min(1000, n - start)
        image = l2_normalize(rng.standard_normal((count, dim), dtype=np.float32))
        text = l2_normalize(rng.standard_normal((count, dim), dtype=np.float32))
        chunk = [texts[(start + i) % len(texts)] for i in range(count)]
        joined = [f"{t['title']}\n{t['caption']}\n{t['description']}" for t in chunk]
        sparse = bm25.encode_documents(joined)
        backend.upsert(
            [
                IndexedDocument(
                    id=f"q{start + i}",
                    payload={"title": chunk[i]["title"], "price": float(start + i)},
                    image_vector=image[i],
                    text_vector=text[i],
                    sparse=sparse[i],
                    text=joined[i],
                )
                for i in range(count)
            ]
        )
        progress("query store", start + count, n)
    progress("optimize", 0, 1)
    backend.optimize()
    progress("optimize", 1, 1)
    return time.perf_counter() - started


def shopper_queries(n: int, seed: int, words: dict[str, list[str]]) -> list[str]:
    """``n`` distinct shopper-like texts, 1-4 words (``"red striped t-shirt"``, ``"wool hat"``)."""
    rng = np.random.default_rng(seed + 1)
    out: dict[str, None] = {}
    shapes = [("category",), ("color", "category"), ("color", "pattern", "category"), ("material", "category"),
              ("color", "pattern", "material", "category")]  # fmt: skip
    attempts = 0
    while len(out) < n and attempts < 100 * n:
        attempts += 1
        shape = shapes[int(rng.integers(len(shapes)))]
        out[" ".join(str(rng.choice(words[k])) for k in shape)] = None
    return list(out)


def query_latency(
    embedder: Any,
    backend: Any,
    texts: list[dict[str, str]],
    words: dict[str, list[str]],
    *,
    queries: int,
    seed: int,
    encoders: Sequence[str],
    busy_core: bool,
    cache_dir: Path,
    progress: Progress,
) -> dict[str, Any]:
    """Time the query path on ``backend`` (already filled; see the module doc)."""
    from clipfuse.embedding.cache import CachedQueryEmbedder
    from clipfuse.factory import resolve_text_encoder
    from clipfuse.plugin.bm25 import Bm25Encoder
    from clipfuse.plugin.searcher import HybridSearcher
    from clipfuse.schemas import SearchRequest
    from clipfuse.settings import ModelSettings

    bm25 = Bm25Encoder()
    paths = _encoders(embedder, encoders, cache_dir)
    usable = {name: enc for name, enc in paths.items() if not isinstance(enc, str)}
    searchers = {name: HybridSearcher(backend, embedder=enc, bm25=bm25) for name, enc in usable.items()}
    texts_q = shopper_queries(queries + 10, seed, words)
    warm, timed = texts_q[:10], texts_q[10:]
    for searcher in searchers.values():
        for q in warm:
            searcher.search(SearchRequest(text=q, k=10))
    # the service's default: what CLIPFUSE_MODEL__TEXT_ENCODER=auto resolves to on this machine
    default = resolve_text_encoder(ModelSettings(device="cpu"))
    default = default if default in usable else next(iter(usable))

    # cosine of each encoder's query vectors to torch's
    reference = embedder.embed_texts(timed)
    cosine = {name: round(float((enc.embed_texts(timed) * reference).sum(-1).min()), 6) for name, enc in usable.items()}

    # engine alone: dense vectors computed up front
    dense = {q: v for q, v in zip(timed, reference, strict=True)}
    plain = next(iter(searchers.values()))
    engine, search_dense, json_ms, build_dense = [], [], [], []
    load_engine = _load()
    for i, q in enumerate(timed):
        request = SearchRequest(text=q, k=10)
        t0 = time.perf_counter()
        built = plain.build_query(request, dense[q])
        t1 = time.perf_counter()
        plain.backend.search(built)
        t2 = time.perf_counter()
        response = plain.search(request, dense=dense[q])
        t3 = time.perf_counter()
        response.model_dump_json()
        t4 = time.perf_counter()
        if not response.hits:
            raise RuntimeError(f"query {q!r} found nothing")
        engine.append((t2 - t1) * 1000)
        build_dense.append((t1 - t0) * 1000)
        search_dense.append((t3 - t2) * 1000)
        json_ms.append((t4 - t3) * 1000)
        progress("engine", i + 1, len(timed))

    def whole(phase: str) -> dict[str, Any]:
        totals: dict[str, list[float]] = {name: [] for name in searchers}
        encode: dict[str, list[float]] = {name: [] for name in searchers}
        names = list(searchers)
        for i, q in enumerate(timed):
            for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate who goes first
                enc = usable[name]
                t0 = time.perf_counter()
                enc.embed_texts([q])
                t1 = time.perf_counter()
                searchers[name].search(SearchRequest(text=q, k=10))
                t2 = time.perf_counter()
                encode[name].append((t1 - t0) * 1000)
                totals[name].append((t2 - t1) * 1000)
            progress(phase, i + 1, len(timed))
        return {
            name: {
                **_summary(totals[name]),
                "encode_p50_ms": _pct(encode[name], 50),
                "encode_p95_ms": _pct(encode[name], 95),
            }
            for name in names
        }

    load_whole = _load()
    per_encoder = whole("queries")
    busy: dict[str, Any] | None = None
    load_busy = None
    if busy_core:
        with _BusyCore(limit_s=600):
            load_busy = _load()
            busy = whole("queries, busy core")

    # cache hits (the default encoder behind the LRU cache)
    cached = CachedQueryEmbedder(usable[default], size=len(timed))
    cached_searcher = HybridSearcher(backend, embedder=cached, bm25=bm25)
    for q in timed:
        cached_searcher.search(SearchRequest(text=q, k=10))
    hit_search, hit_encode = [], []
    for q in timed:
        t0 = time.perf_counter()
        cached.embed_texts([q])
        t1 = time.perf_counter()
        cached_searcher.search(SearchRequest(text=q, k=10))
        t2 = time.perf_counter()
        hit_encode.append((t1 - t0) * 1000)
        hit_search.append((t2 - t1) * 1000)
    stats = cached.stats()

    # breakdown of the default encoder's whole search
    enc = usable[default]
    tokenize, tower, bm25_ms, build = [], [], [], []
    searcher = searchers[default]
    for q in timed:
        request = SearchRequest(text=q, k=10)
        inner = getattr(enc, "inner", enc)
        t0 = time.perf_counter()
        tokens = inner.tokenize([q])
        t1 = time.perf_counter()
        enc.embed_tokens(tokens.numpy() if hasattr(enc, "quantization") else tokens)
        t2 = time.perf_counter()
        bm25.encode_query(q)
        t3 = time.perf_counter()
        searcher.build_query(request)
        t4 = time.perf_counter()
        tokenize.append((t1 - t0) * 1000)
        tower.append((t2 - t1) * 1000)
        bm25_ms.append((t3 - t2) * 1000)
        build.append((t4 - t3) * 1000)
    return {
        "documents": None,  # filled by the caller
        "queries": len(timed),
        "default_encoder": default,
        "skipped_encoders": {name: enc for name, enc in paths.items() if isinstance(enc, str)},
        "load_average": {"engine": load_engine, "whole": load_whole, "busy_core": load_busy},
        # the service's default path, under the keys earlier bench versions used
        "p50_ms": per_encoder[default]["p50_ms"],
        "p95_ms": per_encoder[default]["p95_ms"],
        "encode_p50_ms": per_encoder[default]["encode_p50_ms"],
        "encode_p95_ms": per_encoder[default]["encode_p95_ms"],
        "engine": {
            "search_with_vector": _summary(search_dense),
            "backend_search": _summary(engine),
        },
        "encoders": per_encoder,
        "busy_core": busy,
        "cosine_to_torch_min": cosine,
        "cache_hit": {
            **_summary(hit_search),
            "encode_p50_ms": _pct(hit_encode, 50),
            "encode_p95_ms": _pct(hit_encode, 95),
            "hits": stats.hits,
            "entries": stats.size,
        },
        "breakdown_ms_p50": {
            "tokenize": _pct(tokenize, 50),
            "text_tower": _pct(tower, 50),
            "bm25_query": _pct(bm25_ms, 50),
            "build_query_with_encode": _pct(build, 50),
            "build_query_given_vector": _pct(build_dense, 50),
            "backend_search": _pct(engine, 50),
            "search_with_vector": _pct(search_dense, 50),
            "json_response": _pct(json_ms, 50),
        },
    }

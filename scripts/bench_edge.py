"""Embedded engines side by side: Qdrant Edge vs qdrant-client local mode (prints figures; not a test).

Usage (the figures in docs/benchmarks.md, "Embedded engines", come from this command)::

    .venv/bin/python scripts/bench_edge.py --sizes 10000 100000

What it does, per size N (the first N of one 100k synthetic catalog):

1. Vectors from the shipped demo CLIP (``clipfuse-demo``, CPU) of products from
   :func:`clipfuse.demo.catalog.generate_products` (seed 2024, a seed the model never saw):

   * text vectors: the real embedding of every product's text (title + caption + description,
     as the indexer embeds it). The demo model reads 32 tokens, so products whose first 32
     tokens agree share one embedding: only the distinct token sequences are run through the
     model, then mapped back (exact, not an approximation);
   * image vectors: rendering and embedding 100k images takes ~25 min on the 2 shared cores,
     so ``--images-per-look`` products of each of the 320 looks (category x colour x pattern)
     get the real embedding of their own rendered image (64 px, the model's input size), and
     every other product gets ``normalize(a * e1 + (1 - a) * e2)`` of two real embeddings of
     its own look, ``a ~ U(0, 1)``: a point between two real photos of the same kind of item;
   * BM25 sparse vectors of every product's own text (``Bm25Encoder``).

2. Qdrant Edge (:class:`clipfuse.plugin.edge.EdgeBackend`): upsert throughput, hybrid latency
   before ``optimize()``, ``optimize()`` time and peak RSS (``VmHWM`` reset just before); then on
   the reopened store: the first queries (empty point-id map), ``warm_ids()``, hybrid text query
   p50 / p95 (dense query encoding excluded: query vectors are computed up front) without and with
   a filter, with Edge fusing and with clipfuse fusing, exact search, and Recall@10 / Recall@100
   of approximate vs exact search at several ``ef``.
3. qdrant-client local mode (``QdrantBackend(QdrantClient(path=...))``; in memory above
   ``--local-path-max``, see ``run_local``) on the same documents and queries: upsert throughput,
   p50 / p95 on ``--local-queries`` queries (it is slow), and whether its top-10s equal Edge's
   exact ones.

Numbers depend on the machine's load: the script prints the load average next to them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SEED = 2024
FIELDS = {
    "category": "keyword",
    "color": "keyword",
    "pattern": "keyword",
    "material": "keyword",
    "brand": "keyword",
    "price": "number",
    "in_stock": "bool",
}


# --------------------------------------------------------------------------- helpers
def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def proc_status(key: str) -> int:
    """A ``/proc/self/status`` memory figure in MiB (``VmRSS``, ``VmHWM``); 0 where unavailable."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024
    return 0


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0), so the next peak is the next phase's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def dir_mib(path: Path) -> float:
    """Disk space the folder really uses (allocated blocks: Edge preallocates sparse files)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file()) / 2**20


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def wait_for_model(timeout_s: float) -> None:
    """The demo model is trained by another job: wait until its weights exist and stop changing."""
    from clipfuse.demo import demo_model_dir

    folder = demo_model_dir()
    deadline = time.monotonic() + timeout_s
    last: tuple[int, float] | None = None
    while True:
        weights = list(folder.glob("*.safetensors"))
        if weights and (folder / "open_clip_config.json").is_file():
            stat = weights[0].stat()
            now = (stat.st_size, stat.st_mtime)
            if now == last:
                return
            last = now
        elif time.monotonic() > deadline:
            raise SystemExit(
                f"the demo model is not in {folder} after {timeout_s:.0f}s: run python -m clipfuse.demo.train"
            )
        log(f"waiting for the demo model in {folder} ...")
        time.sleep(10 if weights else 30)


def model_fingerprint() -> str:
    from clipfuse.demo import demo_model_dir

    h = hashlib.sha256()
    for f in [*sorted(demo_model_dir().glob("*.safetensors")), demo_model_dir() / "open_clip_config.json"]:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- data
def product_text(p: Any) -> str:
    # what the indexer embeds and BM25-encodes: Document.text = title, caption, description
    return "\n".join((p.title, p.caption, p.description))


def build_vectors(products: list[Any], images_per_look: int, cache: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(image vectors, text vectors, facts) for the products; cached by model and parameters."""
    import open_clip
    import torch

    from clipfuse.demo.catalog import render_image
    from clipfuse.embedding.openclip import OpenClipEmbedder, resolve_model_name

    key = f"{model_fingerprint()}-{len(products)}-{images_per_look}-{SEED}"
    path = cache / f"vectors-{key}.npz"
    if path.is_file():
        data = np.load(path, allow_pickle=False)
        log(f"vectors from cache {path}")
        return data["image"], data["text"], json.loads(str(data["facts"]))

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    embedder = OpenClipEmbedder("clipfuse-demo", device="cpu", batch_size=256)
    embedder.load()
    tokenizer = open_clip.get_tokenizer(resolve_model_name("clipfuse-demo"))
    facts: dict[str, Any] = {"model": embedder.model_id, "weights_sha256": model_fingerprint(), "dim": embedder.dim}

    # texts: one forward pass per distinct token sequence (the model reads 32 tokens)
    t = time.perf_counter()
    texts = [product_text(p) for p in products]
    first_of: dict[bytes, int] = {}
    slot = np.empty(len(texts), dtype=np.int64)
    for start in range(0, len(texts), 4096):
        tokens = tokenizer(texts[start : start + 4096]).numpy()
        for i, row in enumerate(tokens, start=start):
            slot[i] = first_of.setdefault(row.tobytes(), len(first_of))
    unique_index = [0] * len(first_of)
    for i in range(len(texts) - 1, -1, -1):
        unique_index[slot[i]] = i
    log(f"embedding {len(unique_index)} distinct texts (of {len(texts)}) ...")
    unique_vectors = embedder.embed_texts([texts[i] for i in unique_index])
    text_vectors = unique_vectors[slot].astype(np.float32)
    facts["distinct_texts"] = len(unique_index)
    facts["text_embed_s"] = time.perf_counter() - t

    # images: real embeddings of `images_per_look` renders per look, the rest mixes of two of them
    t = time.perf_counter()
    by_look: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for i, p in enumerate(products):
        by_look[(p.category, p.color, p.pattern)].append(i)
    rendered = sorted(i for members in by_look.values() for i in members[:images_per_look])
    log(f"rendering and embedding {len(rendered)} images ({len(by_look)} looks) ...")
    size = embedder.image_size
    real = np.zeros((len(products), embedder.dim), dtype=np.float32)
    for start in range(0, len(rendered), 1024):
        chunk = rendered[start : start + 1024]
        real[chunk] = embedder.embed_images([render_image(products[i], size) for i in chunk])
    image_vectors = real.copy()
    rng = np.random.default_rng(SEED)
    for members in by_look.values():
        sources = members[:images_per_look]
        for i in members[images_per_look:]:
            if len(sources) == 1:
                image_vectors[i] = real[sources[0]]
                continue
            a, b = rng.choice(len(sources), size=2, replace=False)
            alpha = rng.uniform()
            v = alpha * real[sources[a]] + (1 - alpha) * real[sources[b]]
            image_vectors[i] = v / np.linalg.norm(v)
    facts["real_images"] = len(rendered)
    facts["looks"] = len(by_look)
    facts["image_embed_s"] = time.perf_counter() - t
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, image=image_vectors, text=text_vectors, facts=json.dumps(facts))
    return image_vectors, text_vectors, facts


def build_documents(products: list[Any], image_vectors: np.ndarray, text_vectors: np.ndarray) -> list[Any]:
    from clipfuse.plugin import Bm25Encoder, IndexedDocument

    bm25 = Bm25Encoder()
    texts = [product_text(p) for p in products]
    sparse = bm25.encode_documents(texts)
    docs = []
    for i, p in enumerate(products):
        attributes = {
            "category": p.category,
            "color": p.color,
            "pattern": p.pattern,
            "material": p.material,
            "brand": p.brand,
            "price": p.price,
            "in_stock": p.in_stock,
        }
        payload = {
            "title": p.title,
            "caption": p.caption,
            "description": p.description,
            "images": [f"images/{p.id}.jpg"],
            **attributes,
        }
        docs.append(
            IndexedDocument(
                id=p.id,
                payload=payload,
                image_vector=image_vectors[i],
                text_vector=text_vectors[i],
                sparse=sparse[i],
                text=texts[i],
            )
        )
    return docs


def make_queries(
    n: int, embedder_vectors: Callable[[list[str]], np.ndarray], products: Sequence[Any]
) -> list[dict[str, Any]]:
    """Shopper-like text queries ("red striped t-shirt", "leather ankle boots"), encoded up front.

    The filtered variant is ``category = <the query's> AND price <= <cap> AND in_stock = true``, the
    cap drawn between the category's lowest and highest price, so it keeps 0-100% of the category.
    """
    from clipfuse.demo.catalog import CATEGORIES, COLORS, MATERIALS, PATTERNS

    prices: dict[str, list[float]] = defaultdict(list)
    for p in products:
        prices[p.category].append(p.price)
    rng = random.Random(SEED + 1)
    queries: list[dict[str, Any]] = []
    for _ in range(n):
        category = rng.choice(CATEGORIES)
        words = []
        if rng.random() < 0.8:
            words.append(rng.choice(COLORS))
        if rng.random() < 0.4:
            words.append(rng.choice(PATTERNS))
        if rng.random() < 0.4:
            words.append(rng.choice(MATERIALS))
        text = " ".join([*words, category])
        lo, hi = min(prices[category]), max(prices[category])
        cap = float(round(lo + rng.uniform(0.2, 1.0) * (hi - lo)))
        queries.append({"text": text, "category": category, "max_price": cap})
    vectors = embedder_vectors([str(q["text"]) for q in queries])
    for q, v in zip(queries, vectors, strict=True):
        q["dense"] = v.astype(np.float32)
    return queries


def request_for(q: dict[str, Any], filtered: bool) -> Any:
    from clipfuse.schemas import FilterCondition, SearchRequest

    filters = (
        [
            FilterCondition(field="category", value=q["category"]),
            FilterCondition(field="price", op="lte", value=q["max_price"]),
            FilterCondition(field="in_stock", value=True),
        ]
        if filtered
        else []
    )
    return SearchRequest(text=q["text"], filters=filters, k=10)


# --------------------------------------------------------------------------- measuring
def upsert_all(backend: Any, docs: Sequence[Any], batch: int = 1024) -> float:
    """Seconds to upsert every document (the backend's own batching below ``batch``)."""
    t = time.perf_counter()
    for start in range(0, len(docs), batch):
        failures = backend.upsert(docs[start : start + batch])
        if failures:
            raise SystemExit(f"upsert refused documents: {list(failures.items())[:3]}")
    return time.perf_counter() - t


def latencies(
    searcher: Any,
    queries: Sequence[dict[str, Any]],
    filtered: bool,
    warmup: int = 3,
    record: dict[int, Any] | None = None,
) -> list[float]:
    """Milliseconds per hybrid text query through HybridSearcher (BM25 encode + engine + fusion + hits).

    With ``record``, the engine's raw result of query ``i`` is kept under ``2 * i + filtered``.
    """
    for q in queries[:warmup]:
        searcher.search(request_for(q, filtered), dense=q["dense"])
    backend = searcher.backend
    engine_search = backend.search
    last: list[Any] = []
    if record is not None:

        def recording(query: Any) -> Any:
            result = engine_search(query)
            last.append(result)
            return result

        backend.search = recording
    out = []
    try:
        for i, q in enumerate(queries):
            request = request_for(q, filtered)
            t = time.perf_counter()
            searcher.search(request, dense=q["dense"])
            out.append((time.perf_counter() - t) * 1000)
            if record is not None:
                record[2 * i + filtered] = last.pop()
    finally:
        if record is not None:
            del backend.search
    return out


def tie_aware_recall(approx: Sequence[Any], exact: Sequence[Any], k: int = 10, eps: float = 1e-5) -> float:
    """Share of the approximate top-k that belongs to the exact top-k, counting ties at the cut as right.

    Approximate results carry their true cosine (no quantization), so a hit scoring at least the exact
    k-th score is a correct top-k member even when an exact tie was broken the other way.
    """
    if len(exact) < k:  # the filter keeps fewer than k documents: all of them are wanted
        if not exact:
            return 1.0 if not approx else 0.0
        wanted = {r.id for r in exact}
        return len({r.id for r in approx[:k]} & wanted) / len(exact)
    cut = exact[k - 1].score - eps
    return sum(1 for r in approx[:k] if r.score >= cut) / k


def close(x: float, y: float, tol: float = 1e-5) -> bool:
    return abs(x - y) <= tol * max(1.0, abs(x), abs(y))


def same_ranking(a: Sequence[Any], b: Sequence[Any], k: int = 10) -> bool:
    """Same top-k up to the order of tied scores (and which of the documents tied at the cut made it)."""
    if len(a[:k]) != len(b[:k]) or not all(close(x.score, y.score) for x, y in zip(a[:k], b[:k], strict=True)):
        return False
    cut = a[k].score if len(a) > k else None
    start = 0
    top = list(a[:k])
    while start < len(top):  # groups of consecutive tied scores
        end = start + 1
        while end < len(top) and close(top[end].score, top[start].score):
            end += 1
        tied_at_cut = cut is not None and close(top[start].score, cut)
        if not tied_at_cut and {r.id for r in a[start:end]} != {r.id for r in b[start:end]}:
            return False
        start = end
    return True


def same_scores(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Equal score sequences over the whole candidate list (the documents may differ only among ties)."""
    return len(a) == len(b) and all(close(x.score, y.score) for x, y in zip(a, b, strict=True))


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95), "n": len(values)}


# --------------------------------------------------------------------------- runs
def canonical_rrf(lists: Sequence[Sequence[Any]], weights: Sequence[float], k: float, limit: int = 10) -> list[str]:
    """clipfuse's RRF of the lists after putting exactly tied candidates in one order (by id).

    The demo catalog has products whose texts agree on the 32 tokens the model reads: they share
    one text vector, so their scores tie exactly and each engine / search mode orders them its own
    way, which RRF turns into different ranks. Ordering ties by id removes that freedom.
    """
    from clipfuse.plugin import fusion

    ordered = []
    for ranked in lists:
        groups: list[list[Any]] = []
        for r in ranked:
            if groups and close(groups[-1][0].score, r.score):
                groups[-1].append(r)
            else:
                groups.append([r])
        ordered.append([r for g in groups for r in sorted(g, key=lambda r: r.id)])
    return [f.id for f in fusion.rrf(ordered, k=k, weights=weights, limit=limit)]


def run_edge(n: int, docs: Sequence[Any], queries: list[dict[str, Any]], args: argparse.Namespace, work: Path) -> dict:
    from clipfuse.plugin import HybridSearcher
    from clipfuse.plugin.edge import EdgeBackend

    path = work / f"edge-{n}"
    shutil.rmtree(path, ignore_errors=True)
    out: dict[str, Any] = {}
    backend = EdgeBackend(
        path,
        "products",
        hnsw_m=args.m,
        ef_construct=args.ef_construct,
        ef=args.ef,
        full_scan_threshold_kb=args.full_scan_threshold_kb,
    )
    backend.ensure_schema(dim=len(docs[0].image_vector), model="clipfuse-demo")
    backend.register_fields(FIELDS)  # type: ignore[arg-type]
    log(f"edge {n}: upserting ...")
    seconds = upsert_all(backend, docs)
    backend.flush()
    out["upsert_s"] = seconds
    out["upsert_docs_per_s"] = n / seconds
    out["stats_before_optimize"] = backend.stats()
    backend._doc_ids.clear()  # as a fresh process would start
    searcher = HybridSearcher(backend)
    out["before_optimize_ms"] = summary(latencies(searcher, queries[: args.before_queries], False))

    log(f"edge {n}: optimize() ...")
    rss_before = proc_status("VmRSS")
    peak_reset = reset_peak_rss()
    t = time.perf_counter()
    backend.optimize()
    out["optimize_s"] = time.perf_counter() - t
    out["optimize_rss_before_mib"] = rss_before
    out["optimize_peak_rss_mib"] = proc_status("VmHWM") if peak_reset else None
    out["stats_after_optimize"] = backend.stats()
    backend.close()
    out["store_mib"] = dir_mib(path)

    # measure on a reopened store: what a service starting on this folder sees (empty id map)
    t = time.perf_counter()
    # engine-fused first, as the table's rows were measured (clipfuse-fused is Edge's default since
    # issue 12: scripts/bench_edge_fusion.py compares the two interleaved)
    backend = EdgeBackend(path, "products", ef=args.ef, engine_fusion=True)
    count = backend.count()
    out["reopen_s"] = time.perf_counter() - t
    assert count == n, (count, n)
    searcher = HybridSearcher(backend)
    log(f"edge {n}: latency ...")
    cold = queries[-args.before_queries :]  # queries the other measurements do not use first
    out["first_queries_ms"] = summary(latencies(searcher, cold, False, warmup=0))
    t = time.perf_counter()
    backend.warm_ids()
    out["warm_ids_s"] = time.perf_counter() - t
    out["query_ms"] = summary(latencies(searcher, queries[: args.edge_queries], False))
    out["query_filtered_ms"] = summary(latencies(searcher, queries[: args.edge_queries], True))
    backend.engine_fusion = False
    out["client_fused_ms"] = summary(latencies(searcher, queries[: args.edge_queries], False))
    out["client_fused_filtered_ms"] = summary(latencies(searcher, queries[: args.edge_queries], True))
    backend.engine_fusion = True

    log(f"edge {n}: recall ...")
    recall: dict[str, list[float]] = defaultdict(list)
    exact_cache: dict[int, Any] = {}
    for ef in args.recall_ef:
        for qi, q in enumerate(queries[: args.recall_queries]):
            for filtered in (False, True):
                query = searcher.build_query(request_for(q, filtered), dense=q["dense"])
                key = 2 * qi + filtered
                if key not in exact_cache:
                    backend.exact = True
                    exact_cache[key] = backend.search(query)
                    backend.exact = False
                backend.ef = ef
                approx = backend.search(query)
                exact = exact_cache[key]
                tag = "filtered" if filtered else "plain"
                for signal, a, e in zip(("image", "text"), approx.lists, exact.lists, strict=False):
                    recall[f"ef{ef}/{tag}/{signal}"].append(tie_aware_recall(a, e))
                    recall[f"ef{ef}/{tag}/{signal}@100"].append(tie_aware_recall(a, e, k=query.candidates))
                if approx.fused is not None and exact.fused is not None:
                    overlap = {r.id for r in approx.fused[:10]} & {r.id for r in exact.fused[:10]}
                    recall[f"ef{ef}/{tag}/fused_overlap"].append(len(overlap) / max(1, min(10, len(exact.fused))))
                    weights = [r.weight for r in query.retrievers]
                    a10 = canonical_rrf(approx.lists, weights, query.rrf_k)
                    e10 = canonical_rrf(exact.lists, weights, query.rrf_k)
                    recall[f"ef{ef}/{tag}/fused_overlap_ties_by_id"].append(len(set(a10) & set(e10)) / max(1, len(e10)))
    backend.ef = args.ef
    out["recall"] = {k: sum(v) / len(v) for k, v in sorted(recall.items())}
    out["exact_results"] = exact_cache  # for the parity check with local mode (dropped before printing)

    backend.exact = True
    out["query_exact_ms"] = summary(latencies(searcher, queries[: args.edge_queries], False))
    out["query_exact_filtered_ms"] = summary(latencies(searcher, queries[: args.edge_queries], True))
    backend.exact = False
    backend.close()
    return out


def run_local(n: int, docs: Sequence[Any], queries: list[dict[str, Any]], args: argparse.Namespace, work: Path) -> dict:
    from qdrant_client import QdrantClient

    from clipfuse.plugin import HybridSearcher
    from clipfuse.plugin.qdrant import QdrantBackend

    path = work / f"local-{n}"
    shutil.rmtree(path, ignore_errors=True)
    out: dict[str, Any] = {}
    # local mode commits one SQLite transaction per point when it persists (~40-100 docs/s here), so
    # above --local-path-max it runs in memory: the same search code (persistence only touches writes)
    out["mode"] = "path" if n <= args.local_path_max else "memory"
    client = QdrantClient(path=str(path)) if out["mode"] == "path" else QdrantClient(location=":memory:")
    backend = QdrantBackend(client, "products")
    backend.ensure_schema(dim=len(docs[0].image_vector), model="clipfuse-demo")
    backend.register_fields(FIELDS)  # type: ignore[arg-type]
    log(f"local {n}: upserting ({out['mode']}) ...")
    seconds = upsert_all(backend, docs)
    out["upsert_s"] = seconds
    out["upsert_docs_per_s"] = n / seconds
    searcher = HybridSearcher(backend)
    log(f"local {n}: latency on {args.local_queries} queries ...")
    results: dict[int, Any] = {}
    subset = queries[: min(args.local_queries, args.recall_queries)]
    out["query_ms"] = summary(latencies(searcher, subset, False, warmup=1, record=results))
    out["query_filtered_ms"] = summary(latencies(searcher, subset, True, warmup=1, record=results))
    out["results"] = results
    backend.close()
    return out


def parity(edge_exact: dict[int, Any], local: dict[int, Any]) -> dict[str, Any]:
    """Edge (exact) vs local mode on the same queries.

    Per-signal top-10 compared up to tie order. A fused top-10 that differs is "explained by ties" when
    every signal's whole candidate list has the same scores on both engines: then the engines agree on
    every score and differ only in which of several exactly tied documents (products with the same text,
    hence the same text vector and BM25 score) they keep and in what order, which RRF turns into ranks.
    """
    out = {
        "signal_lists": 0,
        "signal_same": 0,
        "fused": 0,
        "fused_same": 0,
        "fused_differs_only_by_ties": 0,
        "fused_same_ties_by_id": 0,
    }
    for key, lres in local.items():
        eres = edge_exact[key]
        for a, b in zip(eres.lists, lres.lists, strict=True):
            out["signal_lists"] += 1
            out["signal_same"] += same_ranking(a, b)
        if eres.fused is not None and lres.fused is not None:
            out["fused"] += 1
            if same_ranking(eres.fused, lres.fused):
                out["fused_same"] += 1
            elif all(same_scores(a, b) for a, b in zip(eres.lists, lres.lists, strict=True)):
                out["fused_differs_only_by_ties"] += 1
            weights = [1.0] * len(eres.lists)  # the default request: weights 1, k = 60
            out["fused_same_ties_by_id"] += canonical_rrf(eres.lists, weights, 60) == canonical_rrf(
                lres.lists, weights, 60
            )
    return out


# --------------------------------------------------------------------------- report
def fmt(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def get(r: dict[str, Any], *keys: Any) -> Any:
    for key in keys:
        if not isinstance(r, dict) or key not in r:
            return None
        r = r[key]
    return r


def pair(r: dict[str, Any], *keys: Any, digits: int = 1, bold: bool = False) -> str:
    cell = get(r, *keys)
    if cell is None:
        return "n/a"
    p50 = fmt(cell["p50"], digits)
    return f"{'**' + p50 + '**' if bold else p50} / {fmt(cell['p95'], digits)}"


def table(results: dict[int, dict[str, Any]], args: argparse.Namespace) -> str:
    rows = ["| | " + " | ".join(f"{n:,} docs" for n in results) + " |", "|---|" + "---|" * len(results)]

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> None:
        rows.append(f"| {label} | " + " | ".join(cell(r) for r in results.values()) + " |")

    row("Edge upsert (docs/s)", lambda r: fmt(get(r, "edge", "upsert_docs_per_s"), 0))
    row(
        "local mode upsert (docs/s)",
        lambda r: (
            fmt(get(r, "local", "upsert_docs_per_s"), 0)
            + (" (in memory: not persisted)" if get(r, "local", "mode") == "memory" else " (on disk)")
        ),
    )
    row("Edge hybrid p50 / p95 before `optimize()` (ms)", lambda r: pair(r, "edge", "before_optimize_ms", digits=2))
    row("Edge `optimize()` time (s)", lambda r: fmt(get(r, "edge", "optimize_s"), 1))
    row(
        "Edge `optimize()` peak RSS, MiB (RSS before)",
        lambda r: (
            f"{fmt(get(r, 'edge', 'optimize_peak_rss_mib'), 0)} ({fmt(get(r, 'edge', 'optimize_rss_before_mib'), 0)})"
        ),
    )
    row(
        "Edge segments / indexed vectors after `optimize()`",
        lambda r: (
            f"{r['edge']['stats_after_optimize']['segments']} / {r['edge']['stats_after_optimize']['indexed_vectors']:,}"
        ),
    )
    row("Edge store on disk (MiB)", lambda r: fmt(get(r, "edge", "store_mib"), 0))

    def latency(engine: str, key: str, digits: int, bold: bool = False) -> Callable[[dict[str, Any]], str]:
        return lambda r: pair(r, engine, key, digits=digits, bold=bold)

    def recall(ef: int, tag: str) -> Callable[[dict[str, Any]], str]:
        def cell(r: dict[str, Any]) -> str:
            at10 = " / ".join(fmt(get(r, "edge", "recall", f"ef{ef}/{tag}/{s}"), 3) for s in ("image", "text"))
            at100 = " / ".join(fmt(get(r, "edge", "recall", f"ef{ef}/{tag}/{s}@100"), 3) for s in ("image", "text"))
            return f"{at10} ({at100})"

        return cell

    def overlap(ef: int, tag: str) -> Callable[[dict[str, Any]], str]:
        def cell(r: dict[str, Any]) -> str:
            raw = fmt(get(r, "edge", "recall", f"ef{ef}/{tag}/fused_overlap"), 3)
            return f"{raw} ({fmt(get(r, 'edge', 'recall', f'ef{ef}/{tag}/fused_overlap_ties_by_id'), 3)})"

        return cell

    for key, label in (("query_ms", "hybrid text query"), ("query_filtered_ms", "hybrid text query + filter")):
        row(f"**Edge** {label} p50 / p95 (ms)", latency("edge", key, 2, bold=True))
        row(f"local mode {label} p50 / p95 (ms)", latency("local", key, 0))
    row(
        "Edge, clipfuse fuses (`engine_fusion=False`) p50 / p95 (ms)",
        lambda r: pair(r, "edge", "client_fused_ms", digits=2),
    )
    row(
        "Edge, clipfuse fuses, + filter p50 / p95 (ms)",
        lambda r: pair(r, "edge", "client_fused_filtered_ms", digits=2),
    )
    row("Edge exact search p50 / p95 (ms)", lambda r: pair(r, "edge", "query_exact_ms", digits=2))
    row("Edge exact search + filter p50 / p95 (ms)", lambda r: pair(r, "edge", "query_exact_filtered_ms", digits=2))
    row(
        "Edge first queries after reopening, empty id map (ms)",
        lambda r: pair(r, "edge", "first_queries_ms", digits=2),
    )
    row("Edge `warm_ids()` (s)", lambda r: fmt(get(r, "edge", "warm_ids_s"), 2))
    for ef in args.recall_ef:
        for tag in ("plain", "filtered"):
            row(f"Edge Recall@10 image / text (Recall@100 image / text), ef={ef}, {tag}", recall(ef, tag))
            row(f"Edge fused top-10 overlap with exact (exact ties ordered by id), ef={ef}, {tag}", overlap(ef, tag))
    row(
        "same top-10 as local mode (Edge exact): per-signal lists",
        lambda r: (
            "n/a" if get(r, "parity") is None else f"{r['parity']['signal_same']} / {r['parity']['signal_lists']}"
        ),
    )
    row(
        "same fused (RRF) top-10 as local mode, Edge exact",
        lambda r: (
            "n/a"
            if get(r, "parity") is None
            else f"{r['parity']['fused_same']} / {r['parity']['fused']} as returned; "
            f"{r['parity']['fused_same_ties_by_id']} / {r['parity']['fused']} with exact ties ordered by id; "
            f"{r['parity']['fused_same'] + r['parity']['fused_differs_only_by_ties']} / {r['parity']['fused']} "
            "equal or with equal candidate scores"
        ),
    )
    row("Edge reopen + first count (s)", lambda r: fmt(get(r, "edge", "reopen_s"), 2))
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--catalog-size", type=int, default=100_000, help="sizes are the first N of this catalog")
    parser.add_argument("--images-per-look", type=int, default=16, help="real rendered images per look (x 320 looks)")
    parser.add_argument("--m", type=int, default=16, help="HNSW m")
    parser.add_argument("--ef-construct", type=int, default=100, help="HNSW ef_construct")
    parser.add_argument("--ef", type=int, default=64, help="query-time hnsw_ef for the latency runs")
    parser.add_argument("--full-scan-threshold-kb", type=int, default=1000, help="HNSW full_scan_threshold (KB)")
    parser.add_argument("--recall-ef", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--edge-queries", type=int, default=200)
    parser.add_argument("--before-queries", type=int, default=30, help="Edge queries before optimize()")
    parser.add_argument("--local-queries", type=int, default=20, help="local mode is slow: bound its queries")
    parser.add_argument("--recall-queries", type=int, default=100)
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument(
        "--local-path-max", type=int, default=10_000, help="largest size run on a local-mode folder (else in memory)"
    )
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "clipfuse-bench-edge")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "clipfuse-bench-cache")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--wait-model-s", type=float, default=3 * 3600)
    parser.add_argument("--keep", action="store_true", help="keep the stores in --workdir")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore", message=".*Local mode is not recommended.*")
    from clipfuse.demo.catalog import generate_products
    from clipfuse.embedding.openclip import OpenClipEmbedder

    wait_for_model(args.wait_model_s)
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    started = time.perf_counter()
    n_max = max(args.catalog_size, *args.sizes)
    products = generate_products(n_max, seed=SEED)
    image_vectors, text_vectors, facts = build_vectors(products, args.images_per_look, args.cache)
    log(f"vectors ready: {facts}")
    docs = build_documents(products, image_vectors, text_vectors)
    embedder = OpenClipEmbedder("clipfuse-demo", device="cpu")
    n_queries = max(args.edge_queries, args.local_queries, args.recall_queries, args.before_queries)
    queries = make_queries(n_queries, embedder.embed_texts, products)
    del embedder
    # the engines get the cores from here on (torch's threads are idle, but keep them from spinning)
    torch.set_num_threads(1)

    args.workdir.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict[str, Any]] = {}
    try:
        for n in sorted(args.sizes):
            subset = docs[:n]
            r: dict[str, Any] = {"load_before": os.getloadavg()}
            r["edge"] = run_edge(n, subset, queries, args, args.workdir)
            log(f"edge {n}: {json.dumps({k: v for k, v in r['edge'].items() if k != 'exact_results'}, default=str)}")
            if not args.skip_local:
                r["local"] = run_local(n, subset, queries, args, args.workdir)
                r["parity"] = parity(r["edge"]["exact_results"], r["local"].pop("results"))
            r["edge"].pop("exact_results")
            r["load_after"] = os.getloadavg()
            results[n] = r
            log(f"{n}: {json.dumps(r, default=str)}")
    finally:
        if not args.keep:
            for n in args.sizes:
                shutil.rmtree(args.workdir / f"edge-{n}", ignore_errors=True)
                shutil.rmtree(args.workdir / f"local-{n}", ignore_errors=True)

    print()
    print(f"vectors: {json.dumps(facts)}")
    print(
        f"Edge HNSW m={args.m} ef_construct={args.ef_construct}, query ef={args.ef} (latency runs), "
        f"full_scan_threshold={args.full_scan_threshold_kb} KB, Edge's default optimizer thresholds; "
        f"{args.edge_queries} Edge / {args.local_queries} local-mode queries per cell, {args.recall_queries} for recall"
    )
    print(
        "load average (1/5/15 min) before / after each size: "
        + "; ".join(
            f"{n}: {'/'.join(f'{x:.1f}' for x in r['load_before'])} -> {'/'.join(f'{x:.1f}' for x in r['load_after'])}"
            for n, r in results.items()
        )
    )
    print(f"total wall time: {time.perf_counter() - started:.0f}s")
    print()
    print(table(results, args))
    if args.json:
        args.json.write_text(
            json.dumps({"facts": facts, "args": vars(args), "results": results}, default=str, indent=2)
        )


if __name__ == "__main__":
    main()

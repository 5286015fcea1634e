"""Where ``HybridSearcher.search`` spends its time after the engine, and this tree against another
revision side by side in one process (issue 16).

On one Qdrant Edge store (random unit dense vectors, real BM25 vectors of generated product
texts, HNSW built: what ``clipfuse bench`` builds; made once with ``--docs`` and reused):

- **same answers**: for every query, this tree's response and the base revision's are equal
  (first page and three cursor pages, ``took_ms`` and the cursor tokens aside);
- **A/B**: the whole search, this tree and the base taking turns query by query (the order
  swapped every other query), per round p50 / p95 with the load average, and the median of the
  rounds; with ``--encoder onnx`` the query text is encoded by ViT-B-32's text tower (random
  weights, ONNX Runtime fp32, no cache: the service's default), else the vector is given;
  the engine call alone (``backend.search``) is timed beside them; ``cpu_p50``: the process's
  CPU time per search (all threads), which moves less than wall time when other jobs load the cores;
- **stages**: the share of each step of the search (wrapped with ``perf_counter``) over all
  queries, for both trees.

The base revision is read with ``git archive`` into a temporary folder as the package
``clipfuse_base`` (pure Python; both trees search the same open store).

    python scripts/profile_search.py --store /tmp/speed/store100k --docs 100000 --against HEAD~2 --encoder onnx
"""

from __future__ import annotations

import argparse
import functools
import importlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def base_package(rev: str, into: Path) -> str:
    """Extract ``clipfuse`` at ``rev`` into ``into/clipfuse_base`` (imports rewritten); returns the name."""
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "clipfuse"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    (into / "clipfuse").rename(into / "clipfuse_base")
    pattern = re.compile(r"\b(from|import) clipfuse(?=[. \n])")
    for path in (into / "clipfuse_base").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        path.write_text(pattern.sub(r"\1 clipfuse_base", text), encoding="utf-8")
    sys.path.insert(0, str(into))
    return "clipfuse_base"


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 3)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="Edge store folder (built when missing)")
    parser.add_argument("--collection", default="bench")
    parser.add_argument("--docs", type=int, default=100_000, help="documents, when the store is built")
    parser.add_argument("--dim", type=int, default=512, help="dense dimension, when the store is built")
    parser.add_argument("--queries", type=int, default=100, help="distinct queries per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--against", help="a git revision to compare with (A/B and same answers)")
    parser.add_argument("--encoder", choices=["none", "onnx"], default="none")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    from clipfuse.bench.query import build_store, shopper_queries
    from clipfuse.bench.run import _WORDS, synthetic_texts
    from clipfuse.plugin.bm25 import Bm25Encoder
    from clipfuse.plugin.edge import EdgeBackend

    backend = EdgeBackend(args.store, args.collection)
    if backend.index_info() is None:
        print(f"building {args.docs} documents in {args.store} (once)", flush=True)
        seconds = build_store(backend, args.dim, args.docs, synthetic_texts(512, seed=5), 5, lambda *_: None)
        print(f"built in {seconds:.0f} s", flush=True)
    backend.warm_ids()
    info = backend.index_info()
    assert info is not None
    embedder = None
    if args.encoder == "onnx":
        from clipfuse.factory import build_query_embedder
        from clipfuse.settings import ModelSettings

        embedder = build_query_embedder(
            ModelSettings(name="ViT-B-32", pretrained=None, device="cpu", text_encoder="onnx", query_cache_size=0)
        )
    bm25 = Bm25Encoder()

    trees: dict[str, tuple[Any, Any]] = {}  # name -> (searcher module, SearchRequest)
    import clipfuse.plugin.searcher as here
    from clipfuse.schemas import SearchRequest

    trees["this tree"] = (here, SearchRequest)
    workdir = tempfile.TemporaryDirectory()
    if args.against:
        name = base_package(args.against, Path(workdir.name))
        trees[f"base {args.against}"] = (
            importlib.import_module(f"{name}.plugin.searcher"),
            importlib.import_module(f"{name}.schemas").SearchRequest,
        )
    searchers = {label: mod.HybridSearcher(backend, embedder=embedder, bm25=bm25) for label, (mod, _r) in trees.items()}
    texts = shopper_queries(args.queries * args.rounds + 20, 11, _WORDS)
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((len(texts), info.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    def run(label: str, i: int) -> Any:
        request = trees[label][1](text=texts[i], k=10)
        if embedder is not None:
            return searchers[label].search(request)
        return searchers[label].search(request, dense=vectors[i])

    for i in range(20):  # warm-up
        for label in trees:
            run(label, i)
    out: dict[str, Any] = {"documents": backend.count(), "encoder": args.encoder, "against": args.against}

    # same answers (first page and three cursor pages)
    if len(trees) == 2:
        (a, (_ma, ra)), (b, (_mb, rb)) = trees.items()
        skip = {"took_ms", "next_cursor"}
        for i in range(20, 20 + min(100, args.queries)):
            first = [run(a, i), run(b, i)]
            assert first[0].model_dump(exclude=skip) == first[1].model_dump(exclude=skip), texts[i]
            pages = first
            for _ in range(3):
                pages = [searchers[a].search(ra(cursor=pages[0].next_cursor, k=7)),
                         searchers[b].search(rb(cursor=pages[1].next_cursor, k=7))]  # fmt: skip
                assert pages[0].model_dump(exclude=skip) == pages[1].model_dump(exclude=skip), texts[i]
        out["same_answers_queries"] = min(100, args.queries)
        print(f"same answers on {min(100, args.queries)} queries (first page + 3 cursor pages)", flush=True)

    # A/B, alternating
    labels = list(trees)
    rounds = []
    for r in range(args.rounds):
        times: dict[str, list[float]] = {label: [] for label in [*labels, "engine"]}
        cpu: dict[str, list[float]] = {label: [] for label in labels}
        started_load = load()
        for j in range(args.queries):
            i = 20 + r * args.queries + j
            for label in labels if (i % 2) else labels[::-1]:
                c0, t0 = time.process_time(), time.perf_counter()
                run(label, i)
                times[label].append((time.perf_counter() - t0) * 1000)
                cpu[label].append((time.process_time() - c0) * 1000)
            first = next(iter(searchers.values()))
            dense = vectors[i] if embedder is None else embedder.embed_texts([texts[i]])[0]
            query = first.build_query(trees[labels[0]][1](text=texts[i], k=10), dense)
            t0 = time.perf_counter()
            backend.search(query)
            times["engine"].append((time.perf_counter() - t0) * 1000)
        row = {k: {"p50": pct(v, 50), "p95": pct(v, 95)} for k, v in times.items()}
        for label in labels:  # CPU time of the process per search (all threads): steadier on a shared machine
            row[label]["cpu_p50"] = pct(cpu[label], 50)
        row["load"] = [started_load, load()]  # type: ignore[assignment]
        rounds.append(row)
        print(f"round {r}: " + json.dumps(row), flush=True)
    out["rounds"] = rounds
    out["median_of_rounds"] = {
        k: {
            q: round(float(np.median([row[k][q] for row in rounds])), 3)
            for q in ("p50", "p95", "cpu_p50")
            if q in rounds[0][k]
        }
        for k in [*labels, "engine"]
    }
    print("median of the rounds: " + json.dumps(out["median_of_rounds"]), flush=True)

    # stages
    out["stages"] = {}
    for label, (mod, request_type) in trees.items():
        out["stages"][label] = stages(mod, request_type, backend, embedder, bm25, texts, vectors, args.queries)
        print(f"stages, {label}: " + json.dumps(out["stages"][label]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    backend.close()


def stages(
    mod: Any, request_type: Any, backend: Any, embedder: Any, bm25: Any, texts: list[str], vectors: Any, n: int
) -> dict[str, Any]:
    """ms per query and share of the whole search for each wrapped step (over ``n`` queries)."""
    acc: dict[str, float] = defaultdict(float)
    cls = mod.HybridSearcher
    searcher = cls(backend, embedder=embedder, bm25=bm25)
    names = [
        (cls, "encode_query", "encode the query"),
        (cls, "_prepare", "prepare (encode, BM25, filters, the engine query)"),
        (type(backend), "search", "engine: backend.search"),
        (type(backend), "fetch", "engine: backend.fetch (the page's payloads)"),
        (cls, "_hit", "Hit models for the window"),
        (cls, "_columns", "the window's columns"),
        (cls, "_respond", "respond (fetch the page's payloads, its hits, the response)"),
        (mod.ranking_steps, "tie_order", "tie_order"),
        (mod.ranking_steps, "signal_contributions", "signal_contributions"),
        (mod.ranking_steps, "apply_boosts", "apply_boosts"),
        (mod.collapse_steps, "singletons", "collapse / singletons"),
        (mod._rules, "place_pins", "place_pins"),
        (mod.fusion, "fuse", "client fusion (fuse)"),
        (mod.fusion, "fused_order", "client fusion (fused_order)"),
        (mod, "FrozenRanking", "FrozenRanking()"),
        (type(searcher.cursors), "freeze", "cursor freeze (JSON + zlib + store)"),
    ]
    saved = []
    for owner, attr, key in names:
        if not hasattr(owner, attr):
            continue
        fn = getattr(owner, attr)

        def wrapped(*a: Any, _fn: Any = fn, _key: str = key, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                acc[_key] += time.perf_counter() - t0

        functools.update_wrapper(wrapped, fn)
        setattr(owner, attr, wrapped)
        saved.append((owner, attr, fn))
    total = 0.0
    try:
        for i in range(20, 20 + n):
            request = request_type(text=texts[i], k=10)
            t0 = time.perf_counter()
            if embedder is not None:
                searcher.search(request)
            else:
                searcher.search(request, dense=vectors[i])
            total += time.perf_counter() - t0
    finally:
        for owner, attr, fn in saved:
            setattr(owner, attr, fn)
    engine = acc["engine: backend.search"] + acc.get("engine: backend.fetch (the page's payloads)", 0.0)
    before = acc["prepare (encode, BM25, filters, the engine query)"]
    return {
        "total_ms": round(total / n * 1000, 3),
        # the searcher's own work after the engine answered: total - prepare - the engine's calls
        "after_the_engine_ms": round((total - engine - before) / n * 1000, 3),
        "load": load(),
        "steps": {
            key: {"ms": round(v / n * 1000, 3), "share": round(v / total, 4)}
            for key, v in sorted(acc.items(), key=lambda kv: -kv[1])
        },
    }


if __name__ == "__main__":
    main()

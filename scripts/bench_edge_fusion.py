"""Qdrant Edge: engine-fused vs clipfuse-fused queries, interleaved on one store (prints figures; not a test).

Usage::

    .venv/bin/python scripts/bench_edge_fusion.py [DOCS]

Indexes ``DOCS`` (default 20,000) demo-catalog products with random 64-d unit vectors and BM25,
builds the HNSW graphs, then times 200 queries with ``engine_fusion`` on and off, query by query
(so that load on a shared machine hits both alike): a plain hybrid query (k=24), the shop query
(facets on 3 fields, collapse, 2 boosts), and ``backend.search`` alone without window fields.
"""

import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

from clipfuse.demo.catalog import generate_products, product_to_document
from clipfuse.plugin import Bm25Encoder, HybridSearcher, IndexedDocument
from clipfuse.plugin.edge import EdgeBackend
from clipfuse.schemas import SearchRequest

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
DIM = 64
rng = np.random.default_rng(0)


def unit() -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


products = generate_products(N, 2024)
bm = Bm25Encoder()
b = EdgeBackend(tempfile.mkdtemp(), "bench")
b.ensure_schema(dim=DIM, model="m")
b.register_fields(
    {
        "category": "keyword",
        "color": "keyword",
        "brand": "keyword",
        "price": "number",
        "in_stock": "bool",
        "group_id": "keyword",
        "popularity": "number",
        "created_at": "keyword",
    }
)
docs = []
for p in products:
    d = product_to_document(p, "x.jpg")
    v = unit()
    text = f"{p.title} {p.caption}"
    payload = {"title": p.title, **d["attributes"]}
    docs.append(IndexedDocument(p.id, payload, image_vector=v, text_vector=v, sparse=bm.encode_documents([text])[0]))
for i in range(0, N, 2000):
    b.upsert(docs[i : i + 2000])
b.optimize()
b.warm_ids()
s = HybridSearcher(b)
queries = [(f"{p.color} {p.category}", unit()) for p in products[:200]]
SHOP = {
    "facets": ["brand", "color", "price"],
    "collapse": "group_id",
    "boosts": [
        {"type": "field", "field": "popularity", "function": "log1p", "weight": 0.05},
        {"type": "filter", "filters": [{"field": "in_stock", "value": True}], "weight": 0.1},
    ],
}
out: dict[str, float] = {}


def ab(name: str, fn: Callable[[str, np.ndarray], object]) -> None:
    for text, vec in queries[:30]:  # warm-up
        for engine in (True, False):
            b.engine_fusion = engine
            fn(text, vec)
    times: dict[bool, list[float]] = {True: [], False: []}
    for text, vec in queries:
        for engine in (True, False):
            b.engine_fusion = engine
            t0 = time.perf_counter()
            fn(text, vec)
            times[engine].append((time.perf_counter() - t0) * 1000)
    out[f"{name} (engine-fused)"] = statistics.median(times[True])
    out[f"{name} (clipfuse-fused)"] = statistics.median(times[False])


def raw(text: str, vec: np.ndarray) -> None:
    query = s.build_query(SearchRequest(text=text, k=24), dense=vec)
    b.search(dataclasses.replace(query, window_fields=None))


ab("searcher plain", lambda t, v: s.search(SearchRequest(text=t, k=24), dense=v))
ab("searcher shop", lambda t, v: s.search(SearchRequest.model_validate({"text": t, "k": 24, **SHOP}), dense=v))
ab("backend.search, no window fields", raw)
print(f"N={N} dim={DIM}")
for key, value in out.items():
    print(f"  {key}: p50 {value:.2f} ms")
b.close()

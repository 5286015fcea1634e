"""Shop-page overhead on Qdrant Edge (prints figures; not a test).

Usage::

    .venv/bin/python scripts/bench_shop.py --docs 100000

Indexes ``--docs`` demo-catalog products (texts, attributes, variant groups, popularity) into
Edge with BM25 sparse vectors and *random* unit dense vectors of ``--dim`` dimensions (no
model: this measures the ranking pipeline, not retrieval quality), builds the HNSW graphs,
then times, on 200 queries in the same run: the plain hybrid query (k=24), the same query
with facets on 3 fields + collapse by group_id + 2 boosts, and the cursor's next page.
The issue-13 goals: shop query p50 <= 2x plain p50; next page p50 <= first page p50.
"""

import argparse
import statistics
import tempfile
import time

import numpy as np

from clipfuse.demo.catalog import generate_products, product_to_document
from clipfuse.plugin import Bm25Encoder, HybridSearcher, IndexedDocument
from clipfuse.plugin.edge import EdgeBackend
from clipfuse.schemas import SearchRequest

parser = argparse.ArgumentParser()
parser.add_argument("--docs", type=int, default=100_000)
parser.add_argument("--dim", type=int, default=64)
args = parser.parse_args()
N, DIM = args.docs, args.dim
rng = np.random.default_rng(0)
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
    v = rng.standard_normal(DIM).astype(np.float32)
    v /= np.linalg.norm(v)
    text = f"{p.title} {p.caption}"
    docs.append(
        IndexedDocument(
            id=p.id,
            payload={"title": p.title, **d["attributes"]},
            image_vector=v,
            text_vector=v,
            sparse=bm.encode_documents([text])[0],
        )
    )
for i in range(0, N, 2000):
    b.upsert(docs[i : i + 2000])
b.optimize()
b.warm_ids()
s = HybridSearcher(b)
queries = [
    (f"{p.color} {p.category}", (lambda v: v / np.linalg.norm(v))(rng.standard_normal(DIM).astype(np.float32)))
    for p in products[:200]
]


def run(fields, n=200):
    t = []
    out = []
    for text, vec in queries[:n]:
        t0 = time.perf_counter()
        r = s.search(SearchRequest.model_validate({"text": text, "k": 24, **fields}), dense=vec)
        t.append((time.perf_counter() - t0) * 1000)
        out.append(r)
    return statistics.median(t), out


for _ in range(2):
    run({}, 50)
plain, _ = run({})
shop, resp = run(
    {
        "facets": ["brand", "color", "price"],
        "collapse": "group_id",
        "boosts": [
            {"type": "field", "field": "popularity", "function": "log1p", "weight": 0.05},
            {"type": "filter", "filters": [{"field": "in_stock", "value": True}], "weight": 0.1},
        ],
    }
)
t = []
for r in resp:
    t0 = time.perf_counter()
    s.search(SearchRequest(cursor=r.next_cursor))
    t.append((time.perf_counter() - t0) * 1000)
print(
    f"N={N} dim={DIM}: plain hybrid p50 {plain:.2f} ms; facets(3)+collapse+2 boosts p50 {shop:.2f} ms ({shop / plain:.2f}x); cursor next page p50 {statistics.median(t):.2f} ms"
)
b.close()

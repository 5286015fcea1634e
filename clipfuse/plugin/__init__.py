"""Search-engine side of clipfuse: backends, fusion, and the hybrid query adapter.

Importing this package never imports torch or celery: a query service that
receives precomputed vectors stays light. Engine modules (``clipfuse.plugin.qdrant``)
are imported when used.
"""

from clipfuse.plugin.bm25 import Bm25Encoder, SparseVector
from clipfuse.plugin.fusion import Fused, Ranked, dbsf, fuse, linear, rrf
from clipfuse.plugin.protocol import (
    Backend,
    BackendResult,
    HybridQuery,
    IndexedDocument,
    IndexInfo,
    Retriever,
    point_id,
)
from clipfuse.plugin.searcher import HybridSearcher, backend_for

__all__ = [
    "Backend",
    "BackendResult",
    "Bm25Encoder",
    "Fused",
    "HybridQuery",
    "HybridSearcher",
    "IndexInfo",
    "IndexedDocument",
    "Ranked",
    "Retriever",
    "SparseVector",
    "backend_for",
    "dbsf",
    "fuse",
    "linear",
    "point_id",
    "rrf",
]

"""clipfuse: multimodal hybrid search (OpenCLIP + BM25) for product catalogs.

Light imports only here: ``import clipfuse`` does not import torch or celery.
"""

from clipfuse.errors import (
    BackendError,
    BackendUnavailable,
    ClipfuseError,
    ConfigurationError,
    EmbeddingError,
    InvalidDocument,
    InvalidQuery,
)
from clipfuse.schemas import (
    Document,
    FilterCondition,
    Hit,
    ImageSource,
    IngestReport,
    SearchRequest,
    SearchResponse,
    Weights,
)

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # ``clipfuse.enqueue`` / ``clipfuse.enqueue_delete``: loaded on first use so that
    # ``import clipfuse`` stays light (the producer pulls in kombu, never torch).
    if name in ("enqueue", "enqueue_delete"):
        from clipfuse.workers import producer

        return getattr(producer, name)
    raise AttributeError(f"module 'clipfuse' has no attribute {name!r}")


__all__ = [
    "BackendError",
    "BackendUnavailable",
    "ClipfuseError",
    "ConfigurationError",
    "Document",
    "EmbeddingError",
    "FilterCondition",
    "Hit",
    "ImageSource",
    "IngestReport",
    "InvalidDocument",
    "InvalidQuery",
    "SearchRequest",
    "SearchResponse",
    "Weights",
    "__version__",
    "enqueue",
    "enqueue_delete",
]

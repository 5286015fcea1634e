"""Ingestion: the pure pipeline (:mod:`clipfuse.ingest.pipeline`) and the in-process runner
behind ``clipfuse index`` (:mod:`clipfuse.ingest.run`).

Sources (a JSONL catalog, an image folder, a queue's messages) → validate → load images →
embed → encode BM25 → write → report. The CLI, the Celery workers, ``reindex``, bench and
eval all run the same :class:`~clipfuse.ingest.pipeline.Indexer`.
"""

from clipfuse.ingest.pipeline import Indexer, batched, document_key, document_payload, last_versions

__all__ = ["Indexer", "batched", "document_key", "document_payload", "last_versions"]

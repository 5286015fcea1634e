"""Changing the model without downtime: aliases, dual writes, blue/green re-embedding, gate, swap."""

from clipfuse.reindex.job import Reindexer, ReindexPlan, SwapRefused, VerifyResult, document_of, prune, rollback
from clipfuse.reindex.writer import AliasWriter, resolve_alias

__all__ = [
    "AliasWriter",
    "ReindexPlan",
    "Reindexer",
    "SwapRefused",
    "VerifyResult",
    "document_of",
    "prune",
    "resolve_alias",
    "rollback",
]

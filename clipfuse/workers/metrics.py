"""Prometheus metrics of a worker, served on ``CLIPFUSE_WORKER__METRICS_PORT`` (0: off).

One worker process per GPU, each on its own port (``clipfuse worker --metrics-port``).
Useful queries::

    rate(clipfuse_documents_indexed_total[1m])                 documents/s
    histogram_quantile(0.5, rate(clipfuse_batch_documents_bucket[5m]))
    rate(clipfuse_stage_seconds_sum[5m]) / rate(clipfuse_stage_seconds_count[5m])   mean s per stage
    increase(clipfuse_documents_rejected_total[1h])             by code and stage
    increase(clipfuse_retries_total[10m])                       engine outages
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.registry import REGISTRY

from clipfuse.schemas import IngestReport

__all__ = ["WorkerMetrics", "get_metrics", "serve_metrics"]

log = logging.getLogger(__name__)

_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class WorkerMetrics:
    """The metrics one worker process exports."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.indexed = Counter(
            "clipfuse_documents_indexed", "Documents written to the search engine", registry=registry
        )
        self.rejected = Counter(
            "clipfuse_documents_rejected",
            "Documents rejected into the dead-letter store",
            ["code", "stage"],
            registry=registry,
        )
        self.deleted = Counter("clipfuse_documents_deleted", "Documents deleted", registry=registry)
        self.superseded = Counter(
            "clipfuse_documents_superseded",
            "Documents skipped because a later version of the same id was in the same batch",
            registry=registry,
        )
        self.batch_documents = Histogram(
            "clipfuse_batch_documents", "Documents per batch flushed", buckets=_SIZE_BUCKETS, registry=registry
        )
        self.batch_messages = Histogram(
            "clipfuse_batch_messages", "Messages per batch flushed", buckets=_SIZE_BUCKETS, registry=registry
        )
        self.batch_seconds = Histogram(
            "clipfuse_batch_seconds", "Seconds per batch flushed", buckets=_SECONDS_BUCKETS, registry=registry
        )
        self.stage_seconds = Histogram(
            "clipfuse_stage_seconds",
            "Seconds per ingest stage per chunk (validate, load, embed_images, embed_texts, bm25, upsert)",
            ["stage"],
            buckets=_SECONDS_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "clipfuse_retries", "Retries of a batch step after a retryable error", ["reason"], registry=registry
        )
        self.republished = Counter(
            "clipfuse_messages_republished",
            "Messages put back on the queue after the in-process retries ran out",
            registry=registry,
        )
        self.returned = Counter(
            "clipfuse_messages_returned", "Messages returned unprocessed to the broker (shutdown)", registry=registry
        )
        self.batch_in_progress = Gauge(
            "clipfuse_batch_in_progress", "1 while a batch is being processed", registry=registry
        )

    def observe_report(self, report: IngestReport) -> None:
        self.indexed.inc(report.indexed)
        self.deleted.inc(report.deleted)
        for rejection in report.rejected:
            self.rejected.labels(code=rejection.code, stage=rejection.stage).inc()
        self.observe_stages(report.stage_seconds)

    def observe_stages(self, stage_seconds: Mapping[str, float]) -> None:
        for stage, seconds in stage_seconds.items():
            self.stage_seconds.labels(stage=stage).observe(seconds)


_lock = threading.Lock()
_metrics: WorkerMetrics | None = None
_served_port: int | None = None


def get_metrics() -> WorkerMetrics:
    """The process's metrics (registered once in the default registry)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = WorkerMetrics()
        return _metrics


def serve_metrics(port: int, addr: str = "0.0.0.0") -> int | None:
    """Start the HTTP endpoint once per process; returns the port, or None when off (0) or failing."""
    global _served_port
    if port <= 0:
        return None
    with _lock:
        if _served_port is not None:
            return _served_port
        try:
            start_http_server(port, addr=addr)
        except OSError as e:
            log.error("cannot serve Prometheus metrics on port %d: %s (CLIPFUSE_WORKER__METRICS_PORT)", port, e)
            return None
        _served_port = port
    log.info("Prometheus metrics on http://%s:%d/metrics", addr, port)
    return port

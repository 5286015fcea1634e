"""Prometheus metrics of the HTTP service, on a registry of its own (one per app).

Endpoints are labelled by their route template (``/documents/{doc_id}``), never by
the raw path, so a client cannot blow up the number of series; requests that match
no route share the label ``unmatched``.
"""

from __future__ import annotations

import re
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "MetricsMiddleware"]

#: ``{doc_id:path}`` -> ``{doc_id}`` (the template as OpenAPI shows it)
_CONVERTER = re.compile(r"\{(\w+):\w+\}")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The service's counters and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.requests = Counter(
            "clipfuse_http_requests",
            "HTTP requests by endpoint (route template), method and status code",
            ("method", "endpoint", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "clipfuse_http_request_duration_seconds",
            "HTTP request latency by endpoint (route template) and method",
            ("method", "endpoint"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.search_latency = Histogram(
            "clipfuse_search_duration_seconds",
            "Hybrid search latency (query encoding + engine + fusion) by query mode",
            ("mode",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.searches = Counter(
            "clipfuse_searches",
            "Searches by query mode (text, image, image+text) and outcome (ok, invalid, error)",
            ("mode", "outcome"),
            registry=self.registry,
        )
        self.enqueued = Counter(
            "clipfuse_documents_enqueued",
            "Documents handed to the broker by operation (upsert, delete)",
            ("operation",),
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = _CONVERTER.sub(r"{\1}", getattr(route, "path", None) or "unmatched")
            method = scope.get("method", "GET")
            self.metrics.requests.labels(method, endpoint, str(status["code"])).inc()
            self.metrics.latency.labels(method, endpoint).observe(time.perf_counter() - started)

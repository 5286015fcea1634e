"""The backend contract on Qdrant: embedded local mode always, a server when QDRANT_URL is set."""

from __future__ import annotations

from typing import Any

import pytest
from backend_contract import BackendContract

from clipfuse.errors import BackendUnavailable
from clipfuse.plugin.qdrant import QdrantBackend, build_qdrant_filter, build_query_requests
from clipfuse.schemas import FilterCondition


class TestQdrantContract(BackendContract):
    @pytest.fixture
    def backend(self, qdrant_client: Any, collection_name: str) -> QdrantBackend:
        return QdrantBackend(qdrant_client, collection_name)


def test_filter_translation_is_structural() -> None:
    flt = build_qdrant_filter(
        [
            FilterCondition(field="category", op="eq", value="shoes"),
            FilterCondition(field="price", op="lte", value=120.0),
            FilterCondition(field="color", op="nin", value=["red", "blue"]),
        ]
    )
    assert flt is not None
    body = flt.model_dump(exclude_none=True)
    assert body["must"][0] == {"key": "category", "match": {"value": "shoes"}}
    assert body["must"][1] == {"key": "price", "range": {"lte": 120.0}}
    assert body["must_not"][0] == {"key": "color", "match": {"any": ["red", "blue"]}}
    assert build_qdrant_filter([]) is None


def test_hostile_filter_values_stay_values() -> None:
    """User text never becomes query syntax: it is a typed match value."""
    value = 'shoes" OR 1=1 --'
    body = build_qdrant_filter([FilterCondition(field="category", value=value)]).model_dump(exclude_none=True)  # type: ignore[union-attr]
    assert body["must"][0]["match"]["value"] == value


def test_native_fusion_choice() -> None:
    import numpy as np

    from clipfuse.plugin.protocol import HybridQuery, Retriever

    dense = np.ones(4, dtype=np.float32)

    def query(fusion: str, weights: tuple[float, float], rrf_k: float = 60.0) -> HybridQuery:
        return HybridQuery(
            retrievers=(Retriever("image", weights[0], dense=dense), Retriever("text", weights[1], dense=dense)),
            filters=(),
            fusion=fusion,  # type: ignore[arg-type]
            rrf_k=rrf_k,
            limit=10,
            candidates=100,
        )

    _, native = build_query_requests(query("rrf", (1, 1)))
    assert native
    requests, native = build_query_requests(query("rrf", (2, 1)))
    assert native and requests[-1].query.rrf.weights == [2, 1] and requests[-1].query.rrf.k == 61  # type: ignore[union-attr]
    assert not build_query_requests(query("rrf", (1, 1), rrf_k=2.5))[1]
    assert build_query_requests(query("dbsf", (1, 1)))[1]
    assert not build_query_requests(query("dbsf", (2, 1)))[1]
    assert not build_query_requests(query("linear", (1, 1)))[1]


def test_unreachable_server_is_retryable() -> None:
    from qdrant_client import QdrantClient

    backend = QdrantBackend(QdrantClient(url="http://127.0.0.1:9", timeout=2, check_compatibility=False), "nothing")
    with pytest.raises(BackendUnavailable, match="cannot reach Qdrant"):
        backend.count()


def test_declared_capabilities(qdrant_client: Any, collection_name: str) -> None:
    """Local mode is embedded and serialised; a server is neither. Qdrant needs no id map (not Warmable)."""
    import os

    from clipfuse.plugin.protocol import Aliased, Embedded, Facetable, Fetchable, Scrollable, Warmable, is_embedded

    backend = QdrantBackend(qdrant_client, collection_name)
    for capability in (Aliased, Embedded, Facetable, Fetchable, Scrollable):
        assert isinstance(backend, capability), capability
    assert not isinstance(backend, Warmable)
    local = not os.environ.get("QDRANT_URL")
    assert is_embedded(backend) is local and backend.thread_safe is not local

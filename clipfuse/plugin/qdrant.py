"""Qdrant backend over the caller's own ``QdrantClient`` (server or embedded local mode).

Layout: one collection with named dense vectors ``image`` and ``text`` (cosine),
a sparse vector ``bm25`` with ``Modifier.IDF``, payload = the document's texts and
attributes (attributes at the top level, so filters use their names), payload
indexes on the attribute fields (server mode), and clipfuse's own record (model,
dimension, field types) in the collection's ``metadata``. Point id =
``uuid5(POINT_NAMESPACE, doc_id)``: a redelivered document overwrites itself.

Hybrid search sends one ``query_batch_points`` request: one query per signal
(each signal's candidates and raw scores, for explaining a ranking) plus, when
Qdrant can fuse the request itself (RRF with an integer constant, or unweighted
DBSF), the fused query with the signals as prefetches.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from clipfuse.errors import BackendError, BackendUnavailable, ConfigurationError
from clipfuse.plugin.filters import unsupported_tree
from clipfuse.plugin.fusion import Ranked, qdrant_rrf_k
from clipfuse.plugin.protocol import BackendResult, HybridQuery, IndexedDocument, IndexInfo, Retriever, point_id
from clipfuse.schemas import FieldType, FilterCondition

__all__ = ["QdrantBackend", "build_qdrant_filter", "build_query_requests"]

log = logging.getLogger(__name__)

IMAGE, TEXT, BM25 = "image", "text", "bm25"
_META_KEY = "clipfuse"
_SCHEMA_VERSION = 1
_PAYLOAD_INDEX = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "number": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
}
_USING = {"image": IMAGE, "text": TEXT, "bm25": BM25}


@contextmanager
def _errors(action: str) -> Iterator[None]:
    """Map qdrant-client's errors to clipfuse's: unreachable / overloaded -> retryable."""
    try:
        yield
    except UnexpectedResponse as e:
        if e.status_code in (429, 502, 503, 504):
            raise BackendUnavailable(f"Qdrant is unavailable ({e.status_code}) while {action}; retry later") from e
        raise BackendError(f"Qdrant refused {action}: HTTP {e.status_code}: {e.content[:500]!r}") from e
    except (ResponseHandlingException, ConnectionError, TimeoutError) as e:
        raise BackendUnavailable(f"cannot reach Qdrant while {action}: {e}") from e
    except Exception as e:  # grpc errors, httpx errors raised directly
        name = type(e).__name__
        if "RpcError" in name or "Connect" in name or "Timeout" in name or "Unavailable" in name:
            raise BackendUnavailable(f"cannot reach Qdrant while {action}: {e}") from e
        raise


def _condition(c: FilterCondition) -> tuple[list[models.Condition], list[models.Condition]]:
    """(must, must_not) conditions for one filter."""
    key = c.field
    if c.op in ("lt", "lte", "gt", "gte"):
        return [models.FieldCondition(key=key, range=models.Range(**{c.op: float(c.value)}))], []  # type: ignore[arg-type]
    if c.op in ("in", "nin"):
        values = list(c.value) if isinstance(c.value, list) else [c.value]
        if all(isinstance(v, float) and not isinstance(v, bool) for v in values):
            any_of: list[models.Condition] = [
                models.FieldCondition(key=key, range=models.Range(gte=v, lte=v))
                for v in values  # type: ignore[arg-type]
            ]
            cond: models.Condition = models.Filter(should=any_of)
        else:
            cond = models.FieldCondition(key=key, match=models.MatchAny(any=values))  # type: ignore[arg-type]
        return ([cond], []) if c.op == "in" else ([], [cond])
    value = c.value
    if isinstance(value, float) and not value.is_integer():
        single: models.Condition = models.FieldCondition(key=key, range=models.Range(gte=value, lte=value))
    else:
        if isinstance(value, float):
            value = int(value)
        single = models.FieldCondition(key=key, match=models.MatchValue(value=value))  # type: ignore[arg-type]
    return ([single], []) if c.op == "eq" else ([], [single])


def build_qdrant_filter(filters: Sequence[FilterCondition]) -> models.Filter | None:
    """Translate checked filters (see :func:`clipfuse.plugin.filters.resolve_filters`) to a Qdrant filter."""
    if not filters:
        return None
    must: list[models.Condition] = []
    must_not: list[models.Condition] = []
    for condition in filters:
        m, n = _condition(condition)
        must.extend(m)
        must_not.extend(n)
    return models.Filter(must=must or None, must_not=must_not or None)


def _query_vector(r: Retriever) -> Any:
    if r.signal == "bm25":
        assert r.sparse is not None, "the bm25 retriever needs a sparse vector for Qdrant"
        return models.SparseVector(indices=list(r.sparse.indices), values=list(r.sparse.values))
    assert r.dense is not None
    return [float(x) for x in r.dense]


def native_fusion(query: HybridQuery) -> models.RrfQuery | models.FusionQuery | None:
    """The fusion query Qdrant can run itself for this request, or None (then clipfuse fuses)."""
    if len(query.retrievers) < 2:
        return None
    weights = [r.weight for r in query.retrievers]
    if query.fusion == "rrf" and float(query.rrf_k).is_integer():
        uniform = all(w == weights[0] for w in weights)
        return models.RrfQuery(
            rrf=models.Rrf(k=qdrant_rrf_k(query.rrf_k), weights=None if uniform and weights[0] == 1.0 else weights)
        )
    if query.fusion == "dbsf" and all(w == 1.0 for w in weights):
        return models.FusionQuery(fusion=models.Fusion.DBSF)
    return None


def build_query_requests(query: HybridQuery) -> tuple[list[models.QueryRequest], bool]:
    """The batch of requests for one hybrid query; second item: whether the last one is Qdrant-fused."""
    if query.where is not None:
        raise unsupported_tree("Qdrant")
    flt = build_qdrant_filter(query.filters)
    requests = [
        models.QueryRequest(
            query=_query_vector(r), using=_USING[r.signal], filter=flt, limit=query.candidates, with_payload=True
        )
        for r in query.retrievers
    ]
    fusion = native_fusion(query)
    if fusion is not None:
        prefetch = [
            models.Prefetch(query=_query_vector(r), using=_USING[r.signal], filter=flt, limit=query.candidates)
            for r in query.retrievers
        ]
        requests.append(models.QueryRequest(prefetch=prefetch, query=fusion, limit=query.limit, with_payload=True))
    return requests, fusion is not None


class QdrantBackend:
    """The Qdrant implementation of :class:`~clipfuse.plugin.protocol.Backend`."""

    name = "qdrant"
    lexical: Literal["sparse", "native"] = "sparse"

    def __init__(self, client: QdrantClient, collection: str, *, upsert_batch: int = 256) -> None:
        self.client = client
        self.collection = collection
        self.upsert_batch = upsert_batch
        self._info: IndexInfo | None = None

    @property
    def is_local(self) -> bool:
        """True for qdrant-client's embedded local mode (payload indexes have no effect there)."""
        return type(getattr(self.client, "_client", None)).__name__ == "QdrantLocal"

    # -- schema --------------------------------------------------------------------
    def index_info(self) -> IndexInfo | None:
        with _errors(f"reading collection {self.collection!r}"):
            if not self.client.collection_exists(self.collection):
                return None
            info = self.client.get_collection(self.collection)
        meta = (info.config.metadata or {}).get(_META_KEY)
        vectors = info.config.params.vectors
        if not isinstance(vectors, Mapping) or IMAGE not in vectors or TEXT not in vectors:
            raise ConfigurationError(
                f"collection {self.collection!r} exists but was not made by clipfuse (no named vectors "
                f"'{IMAGE}' and '{TEXT}'); choose another name with CLIPFUSE_INDEX"
            )
        dim = int(vectors[IMAGE].size)
        if not isinstance(meta, Mapping):
            return IndexInfo(dim=dim, model=None, fields={})
        return IndexInfo(dim=dim, model=meta.get("model"), fields=dict(meta.get("fields") or {}))

    def ensure_schema(self, *, dim: int, model: str | None) -> None:
        info = self.index_info()
        if info is not None:
            info.check_compatible(dim=dim, model=model, name=self.collection)
            self._info = info
            return
        with _errors(f"creating collection {self.collection!r}"):
            self.client.create_collection(
                self.collection,
                vectors_config={
                    IMAGE: models.VectorParams(size=dim, distance=models.Distance.COSINE),
                    TEXT: models.VectorParams(size=dim, distance=models.Distance.COSINE),
                },
                sparse_vectors_config={BM25: models.SparseVectorParams(modifier=models.Modifier.IDF)},
                metadata={_META_KEY: {"version": _SCHEMA_VERSION, "model": model, "dim": dim, "fields": {}}},
            )
            if not self.is_local:
                self.client.create_payload_index(self.collection, "doc_id", models.PayloadSchemaType.KEYWORD)
        self._info = IndexInfo(dim=dim, model=model, fields={})

    def register_fields(self, fields: Mapping[str, FieldType]) -> None:
        info = self._info or self.index_info()
        if info is None:
            raise ConfigurationError(f"collection {self.collection!r} does not exist; index documents first")
        new = {k: v for k, v in fields.items() if k not in info.fields}
        if not new:
            return
        merged = {**info.fields, **new}
        with _errors(f"registering fields of {self.collection!r}"):
            if not self.is_local:
                for name, kind in new.items():
                    self.client.create_payload_index(self.collection, name, _PAYLOAD_INDEX[kind])
            self.client.update_collection(
                self.collection,
                metadata={
                    _META_KEY: {"version": _SCHEMA_VERSION, "model": info.model, "dim": info.dim, "fields": merged}
                },
            )
        self._info = IndexInfo(dim=info.dim, model=info.model, fields=merged)

    # -- writes --------------------------------------------------------------------
    def _point(self, doc: IndexedDocument) -> models.PointStruct:
        vector: dict[str, Any] = {}
        if doc.image_vector is not None:
            vector[IMAGE] = doc.image_vector.astype("float32").tolist()
        if doc.text_vector is not None:
            vector[TEXT] = doc.text_vector.astype("float32").tolist()
        if doc.sparse is not None and len(doc.sparse):
            vector[BM25] = models.SparseVector(indices=list(doc.sparse.indices), values=list(doc.sparse.values))
        return models.PointStruct(id=point_id(doc.id), vector=vector, payload={**doc.payload, "doc_id": doc.id})

    def upsert(self, documents: Sequence[IndexedDocument]) -> dict[str, str]:
        failures: dict[str, str] = {}
        dim = (self._info or self.index_info() or IndexInfo(0, None, {})).dim
        points = []
        for doc in documents:
            for name, vec in ((IMAGE, doc.image_vector), (TEXT, doc.text_vector)):
                if vec is not None and vec.shape != (dim,):
                    failures[doc.id] = f"{name} vector has shape {tuple(vec.shape)}, the collection expects ({dim},)"
            if doc.id not in failures:
                points.append(self._point(doc))
        for start in range(0, len(points), self.upsert_batch):
            chunk = points[start : start + self.upsert_batch]
            with _errors(f"upserting {len(chunk)} points into {self.collection!r}"):
                self.client.upsert(self.collection, points=chunk, wait=True)
        return failures

    def delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with _errors(f"deleting from {self.collection!r}"):
            self.client.delete(
                self.collection, points_selector=models.PointIdsList(points=[point_id(i) for i in ids]), wait=True
            )

    def count(self) -> int:
        with _errors(f"counting {self.collection!r}"):
            if not self.client.collection_exists(self.collection):
                return 0
            return int(self.client.count(self.collection, exact=True).count)

    # -- reads ---------------------------------------------------------------------
    def search(self, query: HybridQuery) -> BackendResult:
        requests, fused_by_engine = build_query_requests(query)
        with _errors(f"searching {self.collection!r}"):
            responses = self.client.query_batch_points(self.collection, requests=requests)
        payloads: dict[str, dict[str, Any]] = {}
        lists: list[list[Ranked]] = []
        for response in responses:
            ranked = []
            for p in response.points:
                payload = dict(p.payload or {})
                doc_id = str(payload.pop("doc_id", p.id))
                payloads.setdefault(doc_id, payload)
                ranked.append(Ranked(doc_id, float(p.score)))
            lists.append(ranked)
        fused = lists.pop() if fused_by_engine else None
        return BackendResult(lists=lists, fused=fused, payloads=payloads)

    def fetch(self, ids: Sequence[str], fields: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        selector: Any = [*fields, "doc_id"] if fields is not None else True
        with _errors(f"reading documents from {self.collection!r}"):
            points = self.client.retrieve(
                self.collection, ids=[point_id(i) for i in ids], with_payload=selector, with_vectors=False
            )
        out: dict[str, dict[str, Any]] = {}
        for p in points:
            payload = dict(p.payload or {})
            out[str(payload.pop("doc_id", p.id))] = payload
        return out

    def close(self) -> None:
        self.client.close()

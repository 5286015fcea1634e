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

Aliases (capability :class:`~clipfuse.plugin.protocol.Aliased`): Qdrant's collection
aliases, on a server and in qdrant-client's local mode alike (local mode keeps them in
its ``meta.json``, replaced atomically); the alias moves with one
``update_collection_aliases`` request (delete + create, atomic on the server). The rest
of clipfuse's alias record (the index being built, the previous one) sits in the target
collection's metadata under ``clipfuse_alias``.
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
from clipfuse.plugin.protocol import (
    AliasRecord,
    BackendResult,
    HybridQuery,
    IndexedDocument,
    IndexInfo,
    Retriever,
    point_id,
)
from clipfuse.schemas import FieldType, FilterCondition

__all__ = ["QdrantBackend", "build_qdrant_filter", "build_query_requests"]

log = logging.getLogger(__name__)

IMAGE, TEXT, BM25 = "image", "text", "bm25"
_META_KEY = "clipfuse"
_ALIAS_KEY = "clipfuse_alias"
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

    def __init__(
        self, client: QdrantClient, collection: str, *, upsert_batch: int = 256, owns_client: bool = True
    ) -> None:
        self.client = client
        #: False for a backend made by :meth:`open_index`: closing it leaves the shared client open
        self.owns_client = owns_client
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
            name = self.collection
            if not self.client.collection_exists(name):
                record = self.read_alias(name)
                if record is None or not self.client.collection_exists(record.target):
                    return None
                name = record.target
            info = self.client.get_collection(name)
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

    # -- aliases (capability Aliased) -------------------------------------------------------
    def _alias_targets(self) -> dict[str, str]:
        with _errors("reading collection aliases"):
            return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def read_alias(self, alias: str) -> AliasRecord | None:
        target = self._alias_targets().get(alias)
        if target is None:
            return None
        with _errors(f"reading collection {target!r}"):
            meta = self.client.get_collection(target).config.metadata or {}
        stored = meta.get(_ALIAS_KEY)
        if isinstance(stored, Mapping) and stored.get("alias") == alias and stored.get("target") == target:
            return AliasRecord.from_json(stored)
        return AliasRecord(alias=alias, target=target)

    def write_alias(self, record: AliasRecord) -> None:
        with _errors(f"moving alias {record.alias!r} to {record.target!r}"):
            # the record first, on the collection the alias will point at: a reader that sees the
            # alias moved also sees the record that goes with it
            self.client.update_collection(record.target, metadata={_ALIAS_KEY: record.to_json()})
            current = self._alias_targets().get(record.alias)
            if current == record.target:
                return
            operations: list[models.AliasOperations] = []
            if current is not None:
                operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=record.alias)))
            operations.append(
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name=record.target, alias_name=record.alias)
                )
            )
            self.client.update_collection_aliases(change_aliases_operations=operations)

    def index_exists(self, name: str) -> bool:
        with _errors("listing collections"):
            return name in {c.name for c in self.client.get_collections().collections}

    def open_index(self, name: str) -> QdrantBackend:
        return QdrantBackend(self.client, name, upsert_batch=self.upsert_batch, owns_client=False)

    def drop_index(self, name: str) -> None:
        with _errors(f"deleting collection {name!r}"):
            self.client.delete_collection(name)

    def adopt(self, name: str, physical: str) -> None:
        """Copy the plain collection ``name`` (vectors, payloads) into ``physical``, then alias ``name`` to it.

        Qdrant cannot rename a collection and refuses an alias named like one, so the old
        collection is deleted and the alias created right after (a moment in which ``name``
        does not resolve: adopt before traffic, or expect one retried request).
        """
        if self.read_alias(name) is not None:
            return
        source = QdrantBackend(self.client, name)
        info = source.index_info()
        if info is None:
            raise ConfigurationError(f"there is no collection {name!r} to adopt")
        target = QdrantBackend(self.client, physical, upsert_batch=self.upsert_batch)
        target.ensure_schema(dim=info.dim, model=info.model)
        if info.fields:
            target.register_fields(info.fields)
        offset: Any = None
        while True:
            with _errors(f"copying {name!r} into {physical!r}"):
                points, offset = self.client.scroll(
                    name, limit=256, offset=offset, with_payload=True, with_vectors=True
                )
                if points:
                    self.client.upsert(
                        physical,
                        points=[models.PointStruct(id=p.id, vector=p.vector or {}, payload=p.payload) for p in points],
                        wait=True,
                    )
            if offset is None:
                break
        with _errors(f"replacing {name!r} by an alias"):
            self.client.delete_collection(name)
        self.write_alias(AliasRecord(alias=name, target=physical))

    # -- reading documents back (capability Scrollable) -------------------------------------
    def scroll_payloads(self, offset: Any, limit: int) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
        with _errors(f"reading documents from {self.collection!r}"):
            points, next_offset = self.client.scroll(
                self.collection, limit=limit, offset=offset, with_payload=True, with_vectors=False
            )
        out = []
        for p in points:
            payload = dict(p.payload or {})
            out.append((str(payload.pop("doc_id", p.id)), payload))
        return out, next_offset

    def get_payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return self.fetch(ids)

    def close(self) -> None:
        if self.owns_client:
            self.client.close()

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
from clipfuse.plugin.bm25 import SparseVector
from clipfuse.plugin.facets import FacetField, FacetValue, FieldValues, count_payloads, field_values_from_payloads
from clipfuse.plugin.protocol import (
    AliasRecord,
    BackendResult,
    FacetCounts,
    FacetQuery,
    HybridQuery,
    IndexedDocument,
    IndexInfo,
    point_id,
)
from clipfuse.plugin.qdrant_dialect import (
    BM25,
    IMAGE,
    TEXT,
    Condition,
    FusionPlan,
    MatchAny,
    Node,
    Range,
    SignalSearch,
    document_of,
    documents_of,
    filter_node,
    new_fields,
    payload_index_type,
    plan_matches,
    plan_search,
    point_payload,
    point_vectors,
    ranked_of,
    shape_failures,
)
from clipfuse.schemas import FieldType, FilterCondition, FilterGroup

__all__ = ["QdrantBackend", "build_qdrant_filter", "build_query_requests"]

log = logging.getLogger(__name__)

_META_KEY = "clipfuse"
_ALIAS_KEY = "clipfuse_alias"
_SCHEMA_VERSION = 1
_PAYLOAD_INDEX = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
}


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


# --------------------------------------------------------------------------- emitter
# The neutral dialect (clipfuse.plugin.qdrant_dialect) in qdrant_client.models types.
def _emit(c: Condition) -> models.Condition:
    if isinstance(c, Node):
        return emit_filter(c)
    if isinstance(c, Range):
        return models.FieldCondition(key=c.key, range=models.Range(lt=c.lt, lte=c.lte, gt=c.gt, gte=c.gte))
    if isinstance(c, MatchAny):
        return models.FieldCondition(key=c.key, match=models.MatchAny(any=list(c.values)))
    return models.FieldCondition(key=c.key, match=models.MatchValue(value=c.value))


def emit_filter(node: Node) -> models.Filter:
    """A neutral filter node as a ``models.Filter``."""
    return models.Filter(
        must=[_emit(c) for c in node.must] or None,
        should=[_emit(c) for c in node.should] or None,
        must_not=[_emit(c) for c in node.must_not] or None,
    )


def build_qdrant_filter(filters: Sequence[FilterCondition], where: FilterGroup | None = None) -> models.Filter | None:
    """Checked filters (see :func:`clipfuse.plugin.filters.resolve_filters`) and a filter tree as a Qdrant
    filter (semantics: :mod:`clipfuse.plugin.qdrant_dialect`). None: no filter."""
    node = filter_node(filters, where)
    return emit_filter(node) if node is not None else None


def _query_vector(search: SignalSearch) -> Any:
    if search.sparse is not None:
        return models.SparseVector(indices=list(search.sparse.indices), values=list(search.sparse.values))
    return list(search.dense or ())


def _fusion(plan: FusionPlan) -> models.RrfQuery | models.FusionQuery:
    if plan.method == "rrf":
        weights = list(plan.weights) if plan.weights is not None else None
        return models.RrfQuery(rrf=models.Rrf(k=plan.k, weights=weights))
    return models.FusionQuery(fusion=models.Fusion.DBSF)


def build_query_requests(query: HybridQuery) -> tuple[list[models.QueryRequest], bool]:
    """The batch of requests for one hybrid query; second item: whether the last one is Qdrant-fused."""
    plan = plan_search(query)
    flt = emit_filter(plan.filter) if plan.filter is not None else None
    requests = [
        models.QueryRequest(query=_query_vector(s), using=s.using, filter=flt, limit=plan.candidates, with_payload=True)
        for s in plan.signals
    ]
    if plan.fusion is not None:
        prefetch = [
            models.Prefetch(query=_query_vector(s), using=s.using, filter=flt, limit=plan.candidates)
            for s in plan.signals
        ]
        requests.append(
            models.QueryRequest(prefetch=prefetch, query=_fusion(plan.fusion), limit=plan.limit, with_payload=True)
        )
    return requests, plan.fusion is not None


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
    def embedded(self) -> bool:
        """True for qdrant-client's local mode (capability :class:`~clipfuse.plugin.protocol.Embedded`):
        the engine runs in this process, and payload indexes have no effect there."""
        from qdrant_client.local.qdrant_local import QdrantLocal

        return isinstance(getattr(self.client, "_client", None), QdrantLocal)

    @property
    def thread_safe(self) -> bool:
        """Local mode is plain Python, not made for concurrent threads: callers serialise its calls."""
        return not self.embedded

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
            if not self.embedded:
                self.client.create_payload_index(self.collection, "doc_id", models.PayloadSchemaType.KEYWORD)
        self._info = IndexInfo(dim=dim, model=model, fields={})

    def register_fields(self, fields: Mapping[str, FieldType]) -> None:
        info = self._info or self.index_info()
        if info is None:
            raise ConfigurationError(f"collection {self.collection!r} does not exist; index documents first")
        new, merged = new_fields(info, fields)
        if not new:
            return
        with _errors(f"registering fields of {self.collection!r}"):
            if not self.embedded:
                for name, kind in new.items():
                    self.client.create_payload_index(self.collection, name, _PAYLOAD_INDEX[payload_index_type(kind)])
            record = {"version": _SCHEMA_VERSION, "model": info.model, "dim": info.dim, "fields": dict(merged.fields)}
            self.client.update_collection(self.collection, metadata={_META_KEY: record})
        self._info = merged

    # -- writes --------------------------------------------------------------------
    def _point(self, doc: IndexedDocument) -> models.PointStruct:
        vector: dict[str, Any] = {
            name: models.SparseVector(indices=list(v.indices), values=list(v.values))
            if isinstance(v, SparseVector)
            else v
            for name, v in point_vectors(doc).items()
        }
        return models.PointStruct(id=point_id(doc.id), vector=vector, payload=point_payload(doc))

    def upsert(self, documents: Sequence[IndexedDocument]) -> dict[str, str]:
        dim = (self._info or self.index_info() or IndexInfo(0, None, {})).dim
        failures = shape_failures(documents, dim)
        points = [self._point(doc) for doc in documents if doc.id not in failures]
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
        lists = [ranked_of(response.points, payloads) for response in responses]
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
        return documents_of(points)

    # -- facets (capability Facetable) ---------------------------------------------------
    def field_values(self, fields: Mapping[str, FieldType], *, sample: int, max_values: int) -> FieldValues:
        """Facet counts and ordered scrolls on a server (the payload indexes make both cheap); a sample
        of ``sample`` documents in local mode, or when the server cannot answer (an old server)."""
        if not self.embedded:
            try:
                return FieldValues(self._server_field_values(fields, max_values=max_values), "engine")
            except BackendUnavailable:
                raise
            except BackendError as e:
                log.info("Qdrant facets failed (%s); sampling documents instead", e)
        payloads: list[Mapping[str, Any]] = []
        offset: Any = None
        while len(payloads) < sample:
            with _errors(f"reading payloads from {self.collection!r}"):
                points, offset = self.client.scroll(
                    self.collection,
                    limit=min(256, sample - len(payloads)),
                    offset=offset,
                    with_payload=list(fields),
                    with_vectors=False,
                )
            payloads.extend(p.payload or {} for p in points)
            if offset is None or not points:
                break
        return field_values_from_payloads(payloads, fields, max_values)

    def count_facets(self, query: FacetQuery) -> FacetCounts:
        """Exact counts over the matches: their payloads read with one filtered scroll, or one sparse
        BM25 query as long as the filtered count, then counted by :func:`count_payloads`."""
        scan = plan_matches(query)
        payloads: list[Mapping[str, Any]] = []
        if not scan.empty:
            flt = emit_filter(scan.filter) if scan.filter is not None else None
            selector = list(scan.fields) or False
            if scan.sparse is not None:
                with _errors(f"counting the matches in {self.collection!r}"):
                    passing = int(self.client.count(self.collection, count_filter=flt, exact=True).count)
                    if passing:
                        vector = models.SparseVector(indices=list(scan.sparse.indices), values=list(scan.sparse.values))
                        response = self.client.query_points(
                            self.collection,
                            query=vector,
                            using=scan.using,
                            query_filter=flt,
                            limit=passing,
                            with_payload=selector,
                            with_vectors=False,
                        )
                        payloads = [p.payload or {} for p in response.points if p.score > 0]
            else:
                offset: Any = None
                while True:
                    with _errors(f"reading the matches in {self.collection!r}"):
                        points, offset = self.client.scroll(
                            self.collection,
                            scroll_filter=flt,
                            limit=1024,
                            offset=offset,
                            with_payload=selector,
                            with_vectors=False,
                        )
                    payloads.extend(p.payload or {} for p in points)
                    if offset is None or not points:
                        break
        facets, stats, total = count_payloads(
            payloads, query.fields, max_values=query.max_values, group_by=query.group_by
        )
        return FacetCounts(facets=facets, stats=stats, total=total)

    def _server_field_values(self, fields: Mapping[str, FieldType], *, max_values: int) -> list[FacetField]:
        out = []
        for name, kind in sorted(fields.items()):
            if kind == "number":
                ends: list[float | None] = []
                for direction in (models.Direction.ASC, models.Direction.DESC):
                    with _errors(f"reading the range of {name!r} in {self.collection!r}"):
                        points, _ = self.client.scroll(
                            self.collection,
                            limit=1,
                            order_by=models.OrderBy(key=name, direction=direction),
                            with_payload=[name],
                            with_vectors=False,
                        )
                    value = (points[0].payload or {}).get(name) if points else None
                    if isinstance(value, list):
                        value = (min if direction == models.Direction.ASC else max)(value) if value else None
                    ends.append(float(value) if isinstance(value, (int, float)) else None)
                out.append(FacetField(name=name, type=kind, min=ends[0], max=ends[1]))
            else:
                with _errors(f"counting the values of {name!r} in {self.collection!r}"):
                    response = self.client.facet(self.collection, key=name, limit=max_values, exact=False)
                values = [FacetValue(value=hit.value, count=int(hit.count)) for hit in response.hits]
                out.append(FacetField(name=name, type=kind, values=values))
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
        return [document_of(p) for p in points], next_offset

    def get_payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return self.fetch(ids)

    def close(self) -> None:
        if self.owns_client:
            self.client.close()

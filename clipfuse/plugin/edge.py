"""Qdrant Edge backend: Qdrant's own Rust engine in-process (``qdrant-edge-py``), no server.

Layout (the same as :mod:`clipfuse.plugin.qdrant`, so a collection means the same
thing on both): one Edge shard per collection at ``<path>/<collection>/``, with
named dense vectors ``image`` and ``text`` (cosine), a sparse vector ``bm25`` with
``Modifier.Idf``, payload = the document's texts and attributes plus ``doc_id``,
payload indexes on ``doc_id`` and on every registered attribute field. Point id =
``uuid5(POINT_NAMESPACE, doc_id)``.

Edge has no collection metadata, so clipfuse's record (model, dimension, field
types) lives in a JSON sidecar next to the shard, ``<path>/<collection>.clipfuse.json``,
replaced atomically (write a temporary file, fsync, ``os.replace``).

Aliases (Edge has none): a pointer file ``<path>/<alias>.alias.json`` holding the
:class:`~clipfuse.plugin.protocol.AliasRecord` (target, index being built, previous
index), replaced atomically the same way, so moving an alias is one ``rename(2)``.
``EdgeBackend(path, "products")`` opens the alias's target when ``products`` is an
alias, the shard ``products`` when it is a plain store (made before aliases).

One process at a time: opening a store takes an exclusive lock on
``<path>/<collection>.lock`` (and Edge locks its write-ahead log); a second
process gets a :class:`~clipfuse.errors.ConfigurationError` naming the lock.

Index building: upserts land in plain (brute-force, exact) segments. The HNSW
graphs are built by :meth:`EdgeBackend.optimize`, which blocks and is heavy: call
it after a bulk index (``clipfuse index``) or explicitly (``clipfuse optimize``),
never while serving. Searches before it are correct, only slower on big stores.

Hybrid search runs one ``query_batch``: one request per signal (each signal's
candidates and raw scores), translated by the neutral dialect
(:mod:`clipfuse.plugin.qdrant_dialect`) that Qdrant uses too. Fusion happens once, in
:class:`~clipfuse.plugin.HybridSearcher`: the backend never fuses, and by default it does
not ask Edge to fuse either (``engine_fusion=True`` adds Edge's own fused request, which
re-runs each signal as a prefetch: measured slower, see :class:`EdgeBackend`). Reading
payloads is most of a query's cost, so the per-signal requests return only the fields the
searcher ranks the window with (``HybridQuery.window_fields``), or none: the backend keeps
a map point id -> document id (uuid5 cannot be inverted; an entry never goes stale),
filled by upserts, by the hits it reads and, for a long-lived service, by
:meth:`EdgeBackend.warm_ids`. The searcher reads the page's payloads afterwards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import qdrant_edge as qe

from clipfuse.errors import BackendError, ConfigurationError, StoreLocked
from clipfuse.plugin.bm25 import SparseVector
from clipfuse.plugin.facets import FieldValues, count_payloads, field_values_from_payloads
from clipfuse.plugin.fusion import Ranked
from clipfuse.plugin.protocol import (
    POINT_NAMESPACE,
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
    native_fusion,
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

try:  # POSIX advisory locks; elsewhere Edge's own WAL lock still refuses a second opener
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["EdgeBackend", "build_edge_filter", "build_edge_requests", "edge_native_fusion"]

log = logging.getLogger(__name__)

_SCHEMA_VERSION = 1
_PAYLOAD_INDEX = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "float": qe.PayloadSchemaType.Float,
    "bool": qe.PayloadSchemaType.Bool,
}
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_DOC_ID_ONLY = qe.PayloadSelector.Include(["doc_id"])


# --------------------------------------------------------------------------- errors
def _is_lock_error(e: BaseException) -> bool:
    text = str(e)
    return "WouldBlock" in text or "Resource temporarily unavailable" in text or "already locked" in text


@contextmanager
def _errors(action: str) -> Iterator[None]:
    """Map Edge's errors (plain ``Exception`` with a message) to clipfuse's."""
    try:
        yield
    except (ConfigurationError, BackendError):
        raise
    except Exception as e:
        raise BackendError(f"Qdrant Edge failed while {action}: {e}") from e


# --------------------------------------------------------------------------- emitter
# The neutral dialect (clipfuse.plugin.qdrant_dialect) in qdrant_edge types.
def _emit(c: Condition) -> Any:
    if isinstance(c, Node):
        return emit_filter(c)
    if isinstance(c, Range):
        return qe.FieldCondition(key=c.key, range=qe.RangeFloat(lt=c.lt, lte=c.lte, gt=c.gt, gte=c.gte))
    if isinstance(c, MatchAny):
        return qe.FieldCondition(key=c.key, match=qe.MatchAny(list(c.values)))
    if isinstance(c.value, bool):
        # qdrant-edge-py 0.9 reads a Python bool as an int (bool subclasses int), so MatchValue(False)
        # would look for the integer 0 and match nothing; a numpy bool is read as a bool.
        return qe.FieldCondition(key=c.key, match=qe.MatchValue(np.bool_(c.value)))  # type: ignore[arg-type]
    return qe.FieldCondition(key=c.key, match=qe.MatchValue(c.value))


def emit_filter(node: Node) -> qe.Filter:
    """A neutral filter node as a ``qdrant_edge.Filter``."""
    return qe.Filter(
        must=[_emit(c) for c in node.must] or None,
        should=[_emit(c) for c in node.should] or None,
        must_not=[_emit(c) for c in node.must_not] or None,
    )


def build_edge_filter(filters: Sequence[FilterCondition], where: FilterGroup | None = None) -> qe.Filter | None:
    """Checked filters (see :func:`clipfuse.plugin.filters.resolve_filters`) and a filter tree as an Edge
    filter (semantics: :mod:`clipfuse.plugin.qdrant_dialect`). None: no filter."""
    node = filter_node(filters, where)
    return emit_filter(node) if node is not None else None


def _query_vector(search: SignalSearch) -> Any:
    if search.sparse is not None:
        vector: Any = qe.SparseVector(list(search.sparse.indices), list(search.sparse.values))
    else:
        vector = list(search.dense or ())
    return qe.Query.Nearest(vector, using=search.using)


def _fusion(plan: FusionPlan) -> Any:
    if plan.method == "rrf":
        assert plan.k is not None, "an RRF plan carries its constant"
        return qe.Fusion.Rrf(k=plan.k, weights=list(plan.weights) if plan.weights is not None else None)
    return qe.Fusion.Dbsf()


def edge_native_fusion(query: HybridQuery) -> Any | None:
    """The fusion Edge runs itself for this request (see :func:`clipfuse.plugin.qdrant_dialect.native_fusion`),
    or None (then clipfuse fuses client-side)."""
    plan = native_fusion(query)
    return _fusion(plan) if plan is not None else None


def _signal_payload(query: HybridQuery, engine_fused: bool) -> tuple[str, ...] | None:
    """The payload fields each signal's request returns: the window's fields when clipfuse fuses and
    needs them (one batch, no second read), else none (document ids come from the id map)."""
    if engine_fused or not query.window_fields:
        return None
    return query.window_fields


def build_edge_requests(
    query: HybridQuery, params: qe.SearchParams | None = None, *, engine_fusion: bool = True
) -> tuple[list[Any], bool]:
    """The batch for one hybrid query; second item: whether the last request is Edge-fused.

    Per-signal requests carry no payload (reading payloads is most of a query's cost: the
    backend maps point ids back to document ids itself), except the window's fields when
    clipfuse fuses; the fused request carries the payloads of the hits (with
    ``window_fields``: only those fields and ``doc_id``, for the whole window; the searcher
    reads the page's full payloads afterwards).
    """
    plan = plan_search(query, engine_fusion=engine_fusion)
    flt = emit_filter(plan.filter) if plan.filter is not None else None
    fields = _signal_payload(query, plan.fusion is not None)
    signal_payload: Any = False if fields is None else qe.PayloadSelector.Include(["doc_id", *fields])
    requests = [
        qe.QueryRequest(
            limit=plan.candidates, query=_query_vector(s), filter=flt, params=params, with_payload=signal_payload
        )
        for s in plan.signals
    ]
    if plan.fusion is not None:
        prefetches = [
            qe.Prefetch(limit=plan.candidates, query=_query_vector(s), filter=flt, params=params) for s in plan.signals
        ]
        payload: Any = True
        if plan.window_fields is not None:
            payload = qe.PayloadSelector.Include(["doc_id", *plan.window_fields])
        requests.append(
            qe.QueryRequest(limit=plan.limit, query=_fusion(plan.fusion), prefetches=prefetches, with_payload=payload)
        )
    return requests, plan.fusion is not None


# --------------------------------------------------------------------------- backend
class EdgeBackend:
    """The Qdrant Edge implementation of :class:`~clipfuse.plugin.protocol.Backend`.

    ``path`` is a folder holding one shard per collection. Fixed when a shard is
    created (a reopened shard keeps its own): ``hnsw_m`` / ``ef_construct`` (the HNSW
    graphs :meth:`optimize` builds), ``indexing_threshold_kb`` (segments smaller than
    this keep brute-force search; default Edge's, 10 MB of vectors per segment, ~20k
    128-d vectors) and ``full_scan_threshold_kb`` (a filtered search whose matching
    points hold fewer vector bytes than this is brute-forced over them, else it walks
    the HNSW graph with the filter). The default 1,000 KB is 10x below Qdrant's: on
    the 2-core benchmark machine a 12k-point filter took 2 ms as a scan and 0.4 ms
    through the graph, at the same Recall@10 (docs/benchmarks.md). Per search:
    ``ef`` (HNSW beam width; 64 gave Recall@10 >= 0.999 on the demo embeddings) and
    ``exact`` (brute force even where a graph exists). ``engine_fusion=True`` also asks Edge
    to fuse (RRF with a whole-number k, unweighted DBSF), which re-runs every signal's search
    as a prefetch of the fused request; clipfuse's own fusion of the per-signal lists gives the
    same ranking (the contract suite checks it) and was faster on 20k documents, interleaved on
    one store: p50 13.3 vs 18.5 ms for a plain hybrid query, 28.7 vs 36.2 ms with facets,
    collapse and boosts (2 shared cores, ``scripts/bench_edge_fusion.py``). Default off.
    """

    name = "qdrant-edge"
    lexical: Literal["sparse", "native"] = "sparse"
    #: the engine runs in this process (capability :class:`~clipfuse.plugin.protocol.Embedded`)
    embedded = True
    #: Edge's Rust shard serves concurrent searches (opening / closing is guarded by ``_mutex``)
    thread_safe = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        collection: str = "products",
        *,
        hnsw_m: int = 16,
        ef_construct: int = 100,
        ef: int | None = 64,
        exact: bool = False,
        full_scan_threshold_kb: int = 1_000,
        indexing_threshold_kb: int | None = None,
        upsert_batch: int = 512,
        engine_fusion: bool = False,
    ) -> None:
        if not _NAME_RE.match(collection) or len(collection) > 200:
            raise ConfigurationError(
                f"collection name {collection[:80]!r} cannot name a Qdrant Edge shard folder: use letters, digits, "
                "'_', '-' and '.' (not starting with '.' or '-')"
            )
        self.path = Path(path)
        #: the name asked for (an alias or a plain store); ``collection`` is the physical shard
        self.alias = collection
        record = self.read_alias(collection)
        self.collection = record.target if record is not None else collection
        self.hnsw_m = hnsw_m
        self.ef_construct = ef_construct
        self.ef = ef
        self.exact = exact
        self.full_scan_threshold_kb = full_scan_threshold_kb
        self.indexing_threshold_kb = indexing_threshold_kb
        self.upsert_batch = upsert_batch
        self.engine_fusion = engine_fusion
        self._options: dict[str, Any] = {
            "hnsw_m": hnsw_m,
            "ef_construct": ef_construct,
            "ef": ef,
            "exact": exact,
            "full_scan_threshold_kb": full_scan_threshold_kb,
            "indexing_threshold_kb": indexing_threshold_kb,
            "upsert_batch": upsert_batch,
            "engine_fusion": engine_fusion,
        }
        self._shard: qe.EdgeShard | None = None
        #: the root this backend was opened from (:meth:`open_index`), and a root's opened siblings: one
        #: open shard per index and process (a second open of a shard in the same process is refused)
        self._root: EdgeBackend | None = None
        self._siblings: dict[str, EdgeBackend] = {}
        self._lock_file: Any = None
        self._info: IndexInfo | None = None
        self._mutex = threading.RLock()
        self._closed = False
        #: point id -> document id. Point ids are uuid5(doc id), so an entry never goes stale; it spares
        #: reading every candidate's payload just to learn its document id.
        self._doc_ids: dict[uuid.UUID, str] = {}
        self.max_cached_ids = 2_000_000
        if self._exists():
            self._open()

    # -- files -----------------------------------------------------------------------
    @property
    def shard_path(self) -> Path:
        return self.path / self.collection

    @property
    def meta_path(self) -> Path:
        return self.path / f"{self.collection}.clipfuse.json"

    @property
    def lock_path(self) -> Path:
        return self.path / f"{self.collection}.lock"

    def _exists(self) -> bool:
        return (self.shard_path / "edge_config.json").is_file()

    def _acquire_lock(self) -> None:
        """Take ``<collection>.lock`` (flock), or raise :class:`StoreLocked`. The file is removed on a clean
        close, so a taker checks after ``flock`` that the path still names the file it locked (a closer may
        have unlinked it meanwhile) and tries again if not."""
        if self._lock_file is not None or fcntl is None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            handle = open(self.lock_path, "a+")  # noqa: SIM115 - held for the backend's lifetime
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                handle.close()
                raise self._locked_error() from e
            try:
                current = os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(handle.fileno()).st_ino:
                break
            handle.close()  # unlinked by the process that held it: lock the new file
        else:  # pragma: no cover - a hundred closers in a row
            raise self._locked_error()
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def _release_lock(self) -> None:
        """Remove the lock file while still holding it (no .lock is left behind a clean close), then unlock."""
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def _locked_error(self) -> StoreLocked:
        return StoreLocked(
            f"the Qdrant Edge store {self.shard_path} is open in another process (lock {self.lock_path} / "
            f"{self.shard_path / 'wal'} is held: a worker, a service or another clipfuse command). An embedded "
            "store allows one process at a time: stop that process, or run a Qdrant server for concurrent access."
        )

    def _config(self, dim: int) -> qe.EdgeConfig:
        hnsw = qe.HnswIndexConfig(
            m=self.hnsw_m, ef_construct=self.ef_construct, full_scan_threshold=self.full_scan_threshold_kb
        )
        optimizers = (
            qe.EdgeOptimizersConfig(indexing_threshold=self.indexing_threshold_kb)
            if self.indexing_threshold_kb is not None
            else None
        )
        return qe.EdgeConfig(
            vectors={
                IMAGE: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
                TEXT: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
            },
            sparse_vectors={BM25: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            hnsw_config=hnsw,
            optimizers=optimizers,
            # kept in the page cache: reading payloads (document ids for the candidates, the hits'
            # payloads) is most of a query's cost on the default cold storage (3x slower measured)
            payload_memory=qe.Memory.Cached,
        )

    def _open(self, *, create_dim: int | None = None) -> qe.EdgeShard:
        """Open (or, with ``create_dim``, create) the shard, taking the process lock first."""
        with self._mutex:
            if self._shard is not None:
                return self._shard
            self._acquire_lock()
            try:
                if create_dim is not None and not self._exists():
                    self.shard_path.mkdir(parents=True, exist_ok=True)
                    shard = qe.EdgeShard.create(str(self.shard_path), self._config(create_dim))
                else:
                    shard = qe.EdgeShard.load(str(self.shard_path))
            except Exception as e:
                self._release_lock()
                if _is_lock_error(e):
                    raise self._locked_error() from e
                raise BackendError(f"cannot open the Qdrant Edge store {self.shard_path}: {e}") from e
            self._shard = shard
            self._closed = False
            return shard

    def _require(self) -> qe.EdgeShard | None:
        """The open shard, or None when the store does not exist (yet)."""
        if self._shard is not None:
            return self._shard
        if self._closed:
            raise BackendError(f"the Qdrant Edge store {self.shard_path} is closed")
        return self._open() if self._exists() else None

    def _read_meta(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ConfigurationError(
                f"cannot read clipfuse's record of {self.collection!r} at {self.meta_path}: {e}"
            ) from e
        return data if isinstance(data, dict) else None

    def _write_meta(self, info: IndexInfo) -> None:
        """Replace the sidecar atomically: a reader sees the old record or the new one, never half."""
        body = {"version": _SCHEMA_VERSION, "model": info.model, "dim": info.dim, "fields": dict(info.fields)}
        self._write_json(self.meta_path, body)

    def _write_json(self, target: Path, body: Any) -> None:
        """Write ``body`` to ``target`` atomically (temporary file, fsync, rename, fsync of the folder)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=self.path)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(body, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
                dir_fd = os.open(self.path, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _shard_dim(self) -> int:
        """The dimension Edge recorded for the shard (and a check that clipfuse made it)."""
        try:
            config = json.loads((self.shard_path / "edge_config.json").read_text(encoding="utf-8"))
            vectors = config.get("vectors") or {}
        except (OSError, ValueError, AttributeError) as e:
            raise ConfigurationError(f"cannot read {self.shard_path / 'edge_config.json'}: {e}") from e
        if not isinstance(vectors, Mapping) or IMAGE not in vectors or TEXT not in vectors:
            raise ConfigurationError(
                f"the Qdrant Edge store {self.shard_path} exists but was not made by clipfuse (no named vectors "
                f"'{IMAGE}' and '{TEXT}'); choose another name with CLIPFUSE_INDEX"
            )
        return int(vectors[IMAGE]["size"])

    # -- schema ----------------------------------------------------------------------
    def index_info(self) -> IndexInfo | None:
        if not self._exists():
            return None
        dim = self._shard_dim()
        meta = self._read_meta()
        if meta is None:
            return IndexInfo(dim=dim, model=None, fields={})
        return IndexInfo(dim=dim, model=meta.get("model"), fields=dict(meta.get("fields") or {}))

    def ensure_schema(self, *, dim: int, model: str | None) -> None:
        info = self.index_info()
        if info is not None:
            info.check_compatible(dim=dim, model=model, name=self.collection)
            self._require()
            self._info = info
            return
        shard = self._open(create_dim=dim)
        with _errors(f"creating the payload index of {self.collection!r}"):
            shard.update(qe.UpdateOperation.create_field_index("doc_id", qe.PayloadSchemaType.Keyword))
        info = IndexInfo(dim=dim, model=model, fields={})
        self._write_meta(info)
        self._info = info

    def register_fields(self, fields: Mapping[str, FieldType]) -> None:
        info = self._info or self.index_info()
        if info is None:
            raise ConfigurationError(f"collection {self.collection!r} does not exist; index documents first")
        new, merged = new_fields(info, fields)
        if not new:
            return
        shard = self._require()
        assert shard is not None
        with _errors(f"registering fields of {self.collection!r}"):
            for name, kind in new.items():
                shard.update(qe.UpdateOperation.create_field_index(name, _PAYLOAD_INDEX[payload_index_type(kind)]))
        self._write_meta(merged)
        self._info = merged

    # -- writes ----------------------------------------------------------------------
    def _point(self, doc: IndexedDocument) -> qe.Point:
        pid = uuid.uuid5(POINT_NAMESPACE, doc.id)  # == point_id(doc.id)
        self._remember(pid, doc.id)
        vector: dict[str, Any] = {
            name: qe.SparseVector(list(v.indices), list(v.values)) if isinstance(v, SparseVector) else v
            for name, v in point_vectors(doc).items()
        }
        return qe.Point(str(pid), vector, point_payload(doc))

    def upsert(self, documents: Sequence[IndexedDocument]) -> dict[str, str]:
        info = self._info or self.index_info()
        if info is None:
            raise ConfigurationError(f"collection {self.collection!r} does not exist; call ensure_schema first")
        shard = self._require()
        assert shard is not None
        failures = shape_failures(documents, info.dim)
        points = [self._point(doc) for doc in documents if doc.id not in failures]
        for start in range(0, len(points), self.upsert_batch):
            chunk = points[start : start + self.upsert_batch]
            with _errors(f"upserting {len(chunk)} points into {self.collection!r}"):
                shard.update(qe.UpdateOperation.upsert_points(chunk))
        return failures

    def delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        shard = self._require()
        if shard is None:
            return
        with _errors(f"deleting from {self.collection!r}"):
            shard.update(qe.UpdateOperation.delete_points([point_id(i) for i in ids]))

    def count(self) -> int:
        shard = self._require()
        if shard is None:
            return 0
        with _errors(f"counting {self.collection!r}"):
            return int(shard.count(qe.CountRequest(exact=True)))

    # -- index building (capabilities Optimizable, Stats) -------------------------------
    def optimize(self) -> bool:
        """Build the HNSW graphs and merge segments (blocking, CPU-heavy). True if anything changed.

        Call after a bulk index, or from ``clipfuse optimize``; never from a query path.
        """
        shard = self._require()
        if shard is None:
            return False
        with _errors(f"optimizing {self.collection!r}"):
            changed = bool(shard.optimize())
            shard.flush()
        return changed

    def stats(self) -> dict[str, int]:
        """Segments, points and indexed vectors as Edge reports them (for ``clipfuse`` status output)."""
        shard = self._require()
        if shard is None:
            return {"segments": 0, "points": 0, "indexed_vectors": 0}
        with _errors(f"reading the state of {self.collection!r}"):
            info = shard.info()
        return {
            "segments": int(info.segments_count),
            "points": int(info.points_count),
            "indexed_vectors": int(info.indexed_vectors_count),
        }

    # -- reads -----------------------------------------------------------------------
    def _params(self) -> qe.SearchParams | None:
        if self.ef is None and not self.exact:
            return None
        return qe.SearchParams(hnsw_ef=self.ef, exact=self.exact)

    def _remember(self, pid: Any, doc_id: str) -> None:
        if len(self._doc_ids) < self.max_cached_ids:  # past the cap, unknown ids are read per query
            self._doc_ids[pid if isinstance(pid, uuid.UUID) else uuid.UUID(str(pid))] = doc_id

    def _learn_doc_ids(self, shard: qe.EdgeShard, pids: set[Any]) -> dict[Any, str]:
        """Read the document ids of points not seen yet (their ``doc_id`` payload field only)."""
        with _errors(f"reading document ids from {self.collection!r}"):
            records = shard.retrieve(list(pids), with_payload=_DOC_ID_ONLY, with_vector=False)
        learned = {}
        for record in records:
            doc_id = (record.payload or {}).get("doc_id")
            pid = record.id
            learned[pid] = str(doc_id) if doc_id is not None else str(pid)
            self._remember(pid, learned[pid])
        return learned

    def warm_ids(self) -> int:
        """Learn every point's document id up front (one scroll; for long-lived services). Returns the count."""
        shard = self._require()
        if shard is None:
            return 0
        offset: Any = None
        seen = 0
        while True:
            with _errors(f"reading document ids from {self.collection!r}"):
                records, offset = shard.scroll(
                    qe.ScrollRequest(offset=offset, limit=4096, with_payload=_DOC_ID_ONLY, with_vector=False)
                )
            for record in records:
                doc_id = (record.payload or {}).get("doc_id")
                self._remember(record.id, str(doc_id) if doc_id is not None else str(record.id))
            seen += len(records)
            if offset is None or not records:
                return seen

    def sample_payloads(self, fields: Sequence[str], limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` documents' values of ``fields`` (for facet controls; one bounded scroll)."""
        shard = self._require()
        if shard is None or limit <= 0:
            return []
        selector = qe.PayloadSelector.Include(list(fields))
        out: list[dict[str, Any]] = []
        offset: Any = None
        while len(out) < limit:
            with _errors(f"reading payloads from {self.collection!r}"):
                records, offset = shard.scroll(
                    qe.ScrollRequest(
                        offset=offset, limit=min(1024, limit - len(out)), with_payload=selector, with_vector=False
                    )
                )
            out.extend(dict(r.payload or {}) for r in records)
            if offset is None or not records:
                break
        return out

    def field_values(self, fields: Mapping[str, FieldType], *, sample: int, max_values: int) -> FieldValues:
        """A sample of ``sample`` documents' values (capability :class:`~clipfuse.plugin.protocol.Facetable`)."""
        return field_values_from_payloads(self.sample_payloads(list(fields), sample), fields, max_values)

    def count_facets(self, query: FacetQuery) -> FacetCounts:
        """Exact counts over the matches (capability :class:`~clipfuse.plugin.protocol.Facetable`): their
        payloads read with one filtered scroll, or one sparse BM25 query as long as the filtered count."""
        scan = plan_matches(query)
        shard = self._require()
        payloads: list[Mapping[str, Any]] = []
        if shard is not None and not scan.empty:
            flt = emit_filter(scan.filter) if scan.filter is not None else None
            selector: Any = qe.PayloadSelector.Include(list(scan.fields)) if scan.fields else False
            if scan.sparse is not None:
                with _errors(f"counting the matches in {self.collection!r}"):
                    passing = int(shard.count(qe.CountRequest(exact=True, filter=flt)))
                    if passing:
                        vector = qe.SparseVector(list(scan.sparse.indices), list(scan.sparse.values))
                        request = qe.QueryRequest(
                            limit=passing,
                            query=qe.Query.Nearest(vector, using=scan.using),
                            filter=flt,
                            with_payload=selector,
                        )
                        payloads = [dict(p.payload or {}) for p in shard.query(request) if p.score > 0]
            else:
                offset: Any = None
                while True:
                    with _errors(f"reading the matches in {self.collection!r}"):
                        records, offset = shard.scroll(
                            qe.ScrollRequest(
                                offset=offset, limit=4096, filter=flt, with_payload=selector, with_vector=False
                            )
                        )
                    payloads.extend(dict(r.payload or {}) for r in records)
                    if offset is None or not records:
                        break
        facets, stats, total = count_payloads(
            payloads, query.fields, max_values=query.max_values, group_by=query.group_by
        )
        return FacetCounts(facets=facets, stats=stats, total=total)

    def search(self, query: HybridQuery) -> BackendResult:
        """One ``query_batch``; the hits' document ids from the id map (or read once), and payloads only
        where the batch carries them: the window's fields (``query.window_fields``) or, engine-fused
        without them, the fused hits' whole payloads. Never fuses itself: that is the searcher's one
        fusion (or the engine's); the searcher reads the page's payloads afterwards."""
        shard = self._require()
        if shard is None:
            return BackendResult(lists=[[] for _ in query.retrievers], fused=None)
        requests, fused_by_engine = build_edge_requests(query, self._params(), engine_fusion=self.engine_fusion)
        with _errors(f"searching {self.collection!r}"):
            responses = shard.query_batch(qe.QueryBatchRequest(requests))
        payloads: dict[str, dict[str, Any]] = {}
        fused: list[Ranked] | None = None
        if fused_by_engine:
            fused = ranked_of(responses.pop(), payloads)
        known: dict[Any, str] = self._doc_ids
        if _signal_payload(query, fused_by_engine) is not None:  # the window's fields came with each signal
            lists = [ranked_of(response, payloads) for response in responses]
        else:
            # (point id, score) per signal; ScoredPoint.id builds a new uuid.UUID on every access: read it once
            hits = [[(p.id, p.score) for p in response] for response in responses]
            unknown = {pid for signal in hits for pid, _ in signal if pid not in known}
            learned = self._learn_doc_ids(shard, unknown) if unknown else {}
            lists = [
                [Ranked(name, float(score)) for pid, score in signal if (name := known.get(pid) or learned.get(pid))]
                for signal in hits
            ]
        complete = fused_by_engine and query.window_fields is None
        return BackendResult(lists=lists, fused=fused, payloads=payloads, complete_payloads=complete)

    def fetch(self, ids: Sequence[str], fields: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Payloads by document id (``fields``: only those keys); ids not in the store are left out."""
        shard = self._require()
        if shard is None or not ids:
            return {}
        selector: Any = True if fields is None else qe.PayloadSelector.Include(["doc_id", *fields])
        with _errors(f"reading payloads from {self.collection!r}"):
            records = shard.retrieve([point_id(i) for i in ids], with_payload=selector, with_vector=False)
        return documents_of(records)

    # -- aliases (capability Aliased): a pointer file per alias ------------------------------
    def alias_path(self, alias: str) -> Path:
        return self.path / f"{alias}.alias.json"

    def read_alias(self, alias: str) -> AliasRecord | None:
        try:
            data = json.loads(self.alias_path(alias).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ConfigurationError(f"cannot read the alias {alias!r} at {self.alias_path(alias)}: {e}") from e
        try:
            return AliasRecord.from_json(data)
        except (KeyError, TypeError) as e:
            raise ConfigurationError(f"the alias file {self.alias_path(alias)} is not an alias record: {e}") from e

    def write_alias(self, record: AliasRecord) -> None:
        if (self.path / record.alias / "edge_config.json").is_file():
            raise ConfigurationError(
                f"{record.alias!r} is a plain Qdrant Edge store in {self.path}: adopt it first (clipfuse alias adopt)"
            )
        self._write_json(self.alias_path(record.alias), record.to_json())

    def index_exists(self, name: str) -> bool:
        return (self.path / name / "edge_config.json").is_file()

    def open_index(self, name: str) -> EdgeBackend:
        root = self._root or self
        if name == root.collection and not root._closed:
            return root
        sibling = root._siblings.get(name)
        if sibling is None or sibling._closed:
            sibling = EdgeBackend(self.path, name, **self._options)
            sibling._root = root
            root._siblings[name] = sibling
        return sibling

    def drop_index(self, name: str) -> None:
        """Delete the shard ``name`` (it must not be open in another process: its lock is taken first)."""
        root = self._root or self
        if name == root.collection:
            root._shutdown()
        sibling = root._siblings.pop(name, None)
        if sibling is not None:
            sibling._shutdown()
        with self._holding(name):
            shutil.rmtree(self.path / name, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (self.path / f"{name}.clipfuse.json").unlink()

    @contextmanager
    def _holding(self, name: str) -> Iterator[None]:
        """Hold the process lock of the shard ``name`` (refused while another process has it open)."""
        other = EdgeBackend.__new__(EdgeBackend)  # only its lock handling is used
        other.path, other.collection, other._lock_file = self.path, name, None
        other._root = self  # never closes anything itself
        other._acquire_lock()
        try:
            yield
        finally:
            other._release_lock()
            with contextlib.suppress(FileNotFoundError):
                (self.path / f"{name}.lock").unlink()

    def adopt(self, name: str, physical: str) -> None:
        """Rename the plain shard ``name`` to ``physical`` and point the alias ``name`` at it (offline: one rename)."""
        if self.read_alias(name) is not None:
            return
        if not self.index_exists(name):
            raise ConfigurationError(f"there is no Qdrant Edge store {name!r} in {self.path} to adopt")
        if self.index_exists(physical):
            raise ConfigurationError(f"{physical!r} already exists in {self.path}: cannot adopt {name!r} under it")
        root = self._root or self
        reopen = name == root.collection
        if reopen:
            root._shutdown()
        with self._holding(name):
            os.replace(self.path / name, self.path / physical)
            meta = self.path / f"{name}.clipfuse.json"
            if meta.exists():
                os.replace(meta, self.path / f"{physical}.clipfuse.json")
            self._write_json(self.alias_path(name), AliasRecord(alias=name, target=physical).to_json())
        if reopen:  # the root now stands for the adopted index under its new name (opened on next use)
            root.collection, root._closed, root._info = physical, False, None

    # -- reading documents back (capability Scrollable) --------------------------------------
    def scroll_payloads(self, offset: Any, limit: int) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
        shard = self._require()
        if shard is None:
            return [], None
        with _errors(f"reading documents from {self.collection!r}"):
            records, next_offset = shard.scroll(
                qe.ScrollRequest(offset=offset, limit=limit, with_payload=True, with_vector=False)
            )
        return [document_of(r) for r in records], (next_offset if records else None)

    def get_payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return self.fetch(ids)

    # -- lifecycle -------------------------------------------------------------------
    def flush(self) -> None:
        if self._shard is not None:
            with _errors(f"flushing {self.collection!r}"):
                self._shard.flush()

    def close(self) -> None:
        """Flush, close the shard and release the lock (idempotent); a root closes the siblings it opened.

        A sibling (from :meth:`open_index`) is shared by everything in the process that opened the
        same index through the same root, so closing it is left to the root (or :meth:`drop_index`).
        """
        if self._root is not None:
            return
        for sibling in list(self._siblings.values()):
            sibling._shutdown()
        self._siblings.clear()
        self._shutdown()

    def _shutdown(self) -> None:
        with self._mutex:
            shard, self._shard = self._shard, None
            try:
                if shard is not None:
                    with _errors(f"closing {self.collection!r}"):
                        shard.flush()
                        shard.close()
            finally:
                self._release_lock()
                self._closed = True

    def __enter__(self) -> EdgeBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten backend still releases the lock
        if getattr(self, "_mutex", None) is None:  # a lock holder from _holding
            return
        with contextlib.suppress(Exception):
            self.close()

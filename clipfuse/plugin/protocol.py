"""The one small protocol every search engine backend satisfies.

A backend stores :class:`IndexedDocument` s (dense image / text vectors, an
optional BM25 sparse vector, a payload) under the document's own id, and answers
a :class:`HybridQuery` with one candidate list per retriever (and, where the
engine can fuse server-side, the engine's fused ranking too). Fusion, paging
and explanation of scores live in :class:`clipfuse.plugin.HybridSearcher`, the
same for every engine.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from clipfuse.plugin.bm25 import SparseVector
from clipfuse.plugin.facets import FieldValues
from clipfuse.plugin.fusion import Ranked
from clipfuse.schemas import FieldType, FilterCondition, FilterGroup, FusionMethod
from clipfuse.schemas.search import FacetStats

__all__ = [
    "POINT_NAMESPACE",
    "AliasRecord",
    "Aliased",
    "Backend",
    "BackendResult",
    "Embedded",
    "FacetCounts",
    "FacetQuery",
    "Facetable",
    "Fetchable",
    "HybridQuery",
    "IndexInfo",
    "IndexedDocument",
    "Retriever",
    "Scrollable",
    "Signal",
    "Warmable",
    "is_embedded",
    "physical_name",
    "point_id",
]

Signal = Literal["image", "text", "bm25"]

#: namespace of the uuid5 point ids derived from document ids (never change it: ids would move)
POINT_NAMESPACE = uuid.UUID("6f1d3b52-8c1e-5a8e-9f64-2b0c4e6a7d10")


def point_id(doc_id: str) -> str:
    """The engine-side id of a document: ``uuid5(POINT_NAMESPACE, doc_id)`` (stable, idempotent)."""
    return str(uuid.uuid5(POINT_NAMESPACE, doc_id))


@dataclass(frozen=True, slots=True)
class IndexedDocument:
    """A document ready for the engine: vectors plus the payload shown in hits."""

    id: str
    payload: dict[str, Any]
    image_vector: np.ndarray | None = None
    text_vector: np.ndarray | None = None
    sparse: SparseVector | None = None
    #: the text the engine analyses itself for BM25 (engines with native lexical search)
    text: str | None = None


@dataclass(frozen=True, slots=True)
class IndexInfo:
    """What the index records about itself."""

    dim: int
    model: str | None
    fields: Mapping[str, FieldType]

    def check_compatible(self, *, dim: int, model: str | None, name: str, kind: str = "collection") -> None:
        """Refuse to write vectors of another dimension or another model into this index."""
        from clipfuse.errors import ConfigurationError

        if self.dim != dim:
            raise ConfigurationError(
                f"{kind} {name!r} holds {self.dim}-dimensional vectors but the model {model or ''} makes "
                f"{dim}: use the model the {kind} was built with{f' ({self.model})' if self.model else ''}, "
                f"or another {kind} (CLIPFUSE_INDEX)"
            )
        if self.model and model and self.model != model:
            raise ConfigurationError(
                f"{kind} {name!r} was built with model {self.model!r}, not {model!r}: vectors of "
                f"different models are not comparable; re-index into a new {kind} (CLIPFUSE_INDEX)"
            )


@dataclass(frozen=True, slots=True)
class Retriever:
    """One signal of a hybrid query.

    ``image`` / ``text``: ``dense`` is matched against the documents' image / text
    vectors. ``bm25``: ``sparse`` (engines that take sparse vectors) or ``text``
    (engines that analyse text themselves).
    """

    signal: Signal
    weight: float
    dense: np.ndarray | None = None
    sparse: SparseVector | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class HybridQuery:
    retrievers: tuple[Retriever, ...]
    filters: tuple[FilterCondition, ...]
    fusion: FusionMethod
    rrf_k: float
    #: how many fused hits are wanted (the searcher asks for the whole window: candidates x retrievers)
    limit: int
    #: how many candidates each retriever returns
    candidates: int
    #: payload fields the searcher reads for *every* candidate (boosts, collapse, facets); None: none
    #: needed (a backend returns the payloads it read anyway; ``complete_payloads`` says whether they
    #: are whole, else the searcher reads the page's payloads with :meth:`Fetchable.fetch`)
    window_fields: tuple[str, ...] | None = None
    #: a checked boolean filter tree, ANDed with ``filters`` (see :class:`clipfuse.schemas.FilterGroup`)
    where: FilterGroup | None = None


@dataclass(slots=True)
class BackendResult:
    #: one best-first list per retriever, in the query's order
    lists: list[list[Ranked]]
    #: the engine's own fused ranking (best-first, at least ``limit`` long when available), or None
    fused: list[Ranked] | None
    payloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: False when ``payloads`` hold only the query's ``window_fields`` (the searcher then reads the page's
    #: full payloads with :meth:`Fetchable.fetch`)
    complete_payloads: bool = True


@runtime_checkable
class Backend(Protocol):
    """A search engine behind clipfuse. Implementations: Qdrant (and more by issue)."""

    name: str
    #: "sparse": the engine needs BM25 sparse vectors from clipfuse; "native": it analyses text itself
    lexical: Literal["sparse", "native"]

    def ensure_schema(self, *, dim: int, model: str | None) -> None:
        """Create the collection / index if missing; no-op if it matches; error if it does not."""
        ...

    def index_info(self) -> IndexInfo | None:
        """What the index records (dimension, model, filterable fields); None if it does not exist."""
        ...

    def register_fields(self, fields: Mapping[str, FieldType]) -> None:
        """Record new filterable attribute fields (and index them for filtering)."""
        ...

    def upsert(self, documents: Sequence[IndexedDocument]) -> dict[str, str]:
        """Insert or replace documents by id. Returns ``{doc_id: reason}`` for the ones the engine refused.

        Raises :class:`~clipfuse.errors.BackendUnavailable` when the engine cannot be reached (retryable).
        """
        ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def count(self) -> int: ...

    def search(self, query: HybridQuery) -> BackendResult: ...

    def close(self) -> None: ...


@runtime_checkable
class Fetchable(Protocol):
    """A backend that reads documents' payloads by id (pins outside the window, pages of a cursor)."""

    def fetch(self, ids: Sequence[str], fields: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """``{doc_id: payload}`` for the ids that exist (``fields``: only these keys); missing ids are left out."""
        ...


@runtime_checkable
class Optimizable(Protocol):
    """A backend whose search index is built on request, not by the engine itself (Qdrant Edge's
    HNSW graphs): ``clipfuse index`` builds it after a bulk index, ``clipfuse optimize`` on demand."""

    def optimize(self) -> bool:
        """Build the index now (blocking, CPU-heavy); True if anything changed."""
        ...


@runtime_checkable
class Stats(Protocol):
    """A backend that reports the state of its storage (segments, points, indexed vectors)."""

    def stats(self) -> dict[str, int]:
        """Counts by name, e.g. ``{"segments": 1, "points": 400, "indexed_vectors": 800}``."""
        ...


# -- declared capabilities (callers test them with isinstance) ------------------------------
@dataclass(frozen=True, slots=True)
class AliasRecord:
    """The name users search (``CLIPFUSE_INDEX``) and the physical indexes behind it.

    ``target`` is what searches hit. While a re-index runs, ``building`` is the index being
    filled with the new model; after a swap, ``previous`` is the index the alias left, kept
    (and still written to) until ``clipfuse alias prune``, so that a rollback loses nothing.
    Every write through the alias goes to each of :attr:`live` (each with its own model).
    """

    alias: str
    target: str
    previous: str | None = None
    building: str | None = None

    @property
    def live(self) -> tuple[str, ...]:
        """The indexes a write through the alias must reach: target first, then building, then previous."""
        out: list[str] = []
        for name in (self.target, self.building, self.previous):
            if name and name not in out:
                out.append(name)
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        return {"alias": self.alias, "target": self.target, "previous": self.previous, "building": self.building}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AliasRecord:
        return cls(
            alias=str(data["alias"]),
            target=str(data["target"]),
            previous=str(data["previous"]) if data.get("previous") else None,
            building=str(data["building"]) if data.get("building") else None,
        )


@runtime_checkable
class Aliased(Protocol):
    """A backend whose engine can put an alias in front of its physical indexes.

    Qdrant (server and qdrant-client local mode): collection aliases, the record's
    ``previous`` / ``building`` in the target collection's metadata. Elasticsearch:
    ``_aliases``, the record in the target index's ``_meta``. Qdrant Edge: a pointer file
    next to the shards, replaced atomically. Moving the alias is one engine operation.
    """

    def read_alias(self, alias: str) -> AliasRecord | None:
        """The alias's record, or None when ``alias`` is not an alias (a plain index, or nothing)."""
        ...

    def write_alias(self, record: AliasRecord) -> None:
        """Point ``record.alias`` at ``record.target`` in one step and store the rest of the record."""
        ...

    def index_exists(self, name: str) -> bool:
        """Whether a physical index ``name`` exists (an alias of that name does not count)."""
        ...

    def open_index(self, name: str) -> Backend:
        """A backend on the physical index ``name`` of the same engine (sharing the client / store)."""
        ...

    def drop_index(self, name: str) -> None:
        """Delete the physical index ``name`` (never an alias's current target: callers check)."""
        ...

    def adopt(self, name: str, physical: str) -> None:
        """Turn the plain index ``name`` into ``physical`` with an alias ``name`` pointing at it."""
        ...


@runtime_checkable
class Scrollable(Protocol):
    """A backend that can list its documents' payloads (what a re-index reads back)."""

    def scroll_payloads(self, offset: Any, limit: int) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
        """Up to ``limit`` ``(doc_id, payload)`` pairs from ``offset`` (None: the start); the next offset or None."""
        ...

    def get_payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The payloads of those of ``ids`` that exist."""
        ...


@runtime_checkable
class Warmable(Protocol):
    """A backend with a per-process cache worth filling before the first query (Qdrant Edge's id map)."""

    def warm_ids(self) -> int:
        """Fill the cache up front (for long-lived services); returns how many entries it learned."""
        ...


@runtime_checkable
class Embedded(Protocol):
    """A backend that may run its engine inside this process (Qdrant Edge; qdrant-client's local mode).

    ``embedded`` is True when it does: one process owns the store (no worker can write to it, so
    there is no broker to check). ``thread_safe`` is False when its calls must be serialised
    (qdrant-client's local mode is plain Python; Edge's Rust shard takes concurrent reads).
    Test with :func:`is_embedded`.
    """

    @property
    def embedded(self) -> bool: ...

    @property
    def thread_safe(self) -> bool: ...


def is_embedded(backend: object) -> bool:
    """Whether ``backend`` runs its engine in this process (see :class:`Embedded`)."""
    return isinstance(backend, Embedded) and bool(backend.embedded)


@dataclass(frozen=True, slots=True)
class FacetQuery:
    """Facet counts over every document that passes the filters and matches the query's keywords.

    The set ``facet_scope: "matches"`` names: documents passing ``filters`` and ``where``
    and, when the query has keywords, sharing at least one analysed term with them (what
    the BM25 signal can find: a non-zero sparse dot product on Qdrant, a ``multi_match`` on
    Elasticsearch). No keywords (an image query): every document passing the filters.
    """

    #: the fields to count (keyword / bool: value counts; number: stats), with their types
    fields: Mapping[str, FieldType]
    filters: tuple[FilterCondition, ...] = ()
    where: FilterGroup | None = None
    #: the query's keywords, for engines that analyse text themselves
    text: str | None = None
    #: the same keywords as a BM25 sparse vector, for sparse engines (empty: no term is known)
    sparse: SparseVector | None = None
    max_values: int = 10
    #: count groups (one per value of this keyword field; documents without one stand alone)
    group_by: str | None = None


@dataclass(frozen=True, slots=True)
class FacetCounts:
    """What a :class:`FacetQuery` counts: value counts, number stats, and the size of the set."""

    facets: dict[str, dict[str, int]]
    stats: dict[str, FacetStats]
    #: documents in the set (groups with ``group_by``)
    total: int


@runtime_checkable
class Facetable(Protocol):
    """A backend that counts facets itself, behind its own error mapping."""

    def field_values(self, fields: Mapping[str, FieldType], *, sample: int, max_values: int) -> FieldValues:
        """The index's values of ``fields`` (keyword / bool: most frequent; number: range) for filter controls.

        From the engine's facet counts / aggregations where it has them, else a sample of at
        most ``sample`` documents.
        """
        ...

    def count_facets(self, query: FacetQuery) -> FacetCounts:
        """Exact facet counts over the set :class:`FacetQuery` names (list items once per document)."""
        ...


_SLUG = re.compile(r"[^a-z0-9]+")


def physical_name(alias: str, model_id: str | None) -> str:
    """The physical index behind ``alias`` for a model: ``<alias>--<model slug>-<8 hex of the model id>``.

    Lower-case letters, digits and ``-`` only (valid for Qdrant, Elasticsearch and an Edge folder).
    """
    model = model_id or "unknown"
    tail = model.rstrip("/").rsplit("/", 1)[-1] if model.startswith("local-dir:") else model
    slug = _SLUG.sub("-", tail.lower()).strip("-")[:40] or "model"
    digest = hashlib.sha1(model.encode("utf-8")).hexdigest()[:8]
    return f"{alias}--{slug}-{digest}"

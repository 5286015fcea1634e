"""The one translation of clipfuse's queries into Qdrant's language, shared by Qdrant and Qdrant Edge.

Qdrant (server and qdrant-client's local mode, :mod:`clipfuse.plugin.qdrant`) and Qdrant
Edge (:mod:`clipfuse.plugin.edge`) speak the same language with two sets of Python types
(``qdrant_client.models`` and ``qdrant_edge``). Everything that decides *what* to ask is
here, once, as a neutral description made of plain dataclasses; each engine module only
emits it in its own types (a few lines each), so the two cannot drift.

Filter semantics (the contract table in ``tests/test_filter_semantics.py`` pins them on
every engine). Values arrive checked and typed by
:func:`clipfuse.plugin.filters.resolve_filters`, so a value's Python type is its field's type:

- keyword (``str``): ``eq`` -> :class:`Match`; ``in`` -> :class:`MatchAny` of the strings.
- bool: ``eq`` -> :class:`Match` of the bool; ``in`` -> an OR (:class:`Node` ``should``) of
  :class:`Match` es (Qdrant's ``MatchAny`` takes strings or integers only).
- number (``int`` / ``float``): always a :class:`Range` (``eq`` is ``gte = lte = v``; ``in`` an
  OR of such ranges). Numbers are stored and indexed as floats, and Qdrant's integer
  ``MatchValue`` does not match a stored ``110.0``: a range matches ``110`` and ``110.0`` alike.
- a mixed ``in`` (values of several types, e.g. an unchecked rule filter) is the OR of the
  groups above: each value matches as its own type would.
- ``ne`` / ``nin``: the positive condition under ``must_not``; a document without the field
  passes them. ``lt`` / ``lte`` / ``gt`` / ``gte``: a :class:`Range`.
- list attributes: a condition holds when any item matches (Qdrant's own rule; so does
  Elasticsearch's ``term`` / ``terms`` / ``range``). A missing field matches no positive
  condition.
- a filter tree (:class:`~clipfuse.schemas.FilterGroup`: ``all`` / ``any`` / ``none``) is one
  :class:`Node` (``must`` / ``should`` / ``must_not``), nested groups nested nodes.

:func:`clipfuse.plugin.ranking.payload_matches` evaluates the same semantics on a payload.

Request plans: :func:`plan_search` describes one hybrid query (one search per signal, and
the engine-fused search when :func:`native_fusion` says the engine gives clipfuse's own
ranking); :func:`point_vectors` the vectors of one point; :func:`payload_index_type` the
payload index of a field type.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from clipfuse.errors import BackendError
from clipfuse.plugin.bm25 import SparseVector
from clipfuse.plugin.fusion import Ranked, qdrant_rrf_k
from clipfuse.plugin.protocol import FacetQuery, HybridQuery, IndexedDocument, IndexInfo, Retriever
from clipfuse.schemas import FieldType, FilterCondition, FilterExpr, FilterGroup

__all__ = [
    "BM25",
    "IMAGE",
    "TEXT",
    "Condition",
    "FusionPlan",
    "Match",
    "MatchAny",
    "MatchScan",
    "Node",
    "Range",
    "SearchPlan",
    "SignalSearch",
    "document_of",
    "documents_of",
    "filter_node",
    "native_fusion",
    "new_fields",
    "payload_index_type",
    "plan_matches",
    "plan_search",
    "point_payload",
    "point_vectors",
    "ranked_of",
    "shape_failures",
    "tree_node",
]

IMAGE, TEXT, BM25 = "image", "text", "bm25"
USING: dict[str, str] = {"image": IMAGE, "text": TEXT, "bm25": BM25}
PayloadIndexType = Literal["keyword", "float", "bool"]
_PAYLOAD_INDEX: dict[FieldType, PayloadIndexType] = {"keyword": "keyword", "number": "float", "bool": "bool"}


# --------------------------------------------------------------------------- filters
@dataclass(frozen=True, slots=True)
class Match:
    """``key`` equals ``value`` (a keyword or a bool; numbers are ranges, see the module's notes)."""

    key: str
    value: str | bool


@dataclass(frozen=True, slots=True)
class MatchAny:
    """``key`` equals one of the keywords ``values``."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Range:
    key: str
    lt: float | None = None
    lte: float | None = None
    gt: float | None = None
    gte: float | None = None


@dataclass(frozen=True, slots=True)
class Node:
    """Qdrant's ``Filter``: every ``must``, at least one ``should`` (when there are any), no ``must_not``."""

    must: tuple[Condition, ...] = ()
    should: tuple[Condition, ...] = ()
    must_not: tuple[Condition, ...] = ()


Condition = Match | MatchAny | Range | Node


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _equals(key: str, value: Any) -> Condition:
    if _is_number(value):
        v = float(value)
        return Range(key, gte=v, lte=v)
    if isinstance(value, bool):
        return Match(key, value)
    return Match(key, str(value))


def _any_of(key: str, values: Sequence[Any]) -> Condition:
    keywords = tuple(dict.fromkeys(str(v) for v in values if not isinstance(v, bool) and not _is_number(v)))
    others = [_equals(key, v) for v in values if isinstance(v, bool) or _is_number(v)]
    if not others:
        return MatchAny(key, keywords)
    alternatives = (*([MatchAny(key, keywords)] if keywords else []), *others)
    return alternatives[0] if len(alternatives) == 1 else Node(should=tuple(alternatives))


def condition(c: FilterCondition) -> tuple[Condition, bool]:
    """(positive condition, negated) for one checked filter: ``ne`` / ``nin`` are their positive under NOT."""
    if c.op in ("lt", "lte", "gt", "gte"):
        return Range(c.field, **{c.op: float(c.value)}), False  # type: ignore[arg-type]
    if c.op in ("in", "nin"):
        values = list(c.value) if isinstance(c.value, list) else [c.value]
        return _any_of(c.field, values), c.op == "nin"
    return _equals(c.field, c.value), c.op == "ne"


def _expr(expr: FilterExpr) -> Condition:
    if isinstance(expr, FilterGroup):
        return tree_node(expr)
    positive, negated = condition(expr)
    return Node(must_not=(positive,)) if negated else positive


def tree_node(tree: FilterGroup) -> Node:
    """A checked filter tree as one node: ``all`` -> ``must``, ``any`` -> ``should``, ``none`` -> ``must_not``."""
    return Node(
        must=tuple(_expr(e) for e in tree.all),
        should=tuple(_expr(e) for e in tree.any),
        must_not=tuple(_expr(e) for e in tree.none),
    )


def filter_node(filters: Sequence[FilterCondition], where: FilterGroup | None = None) -> Node | None:
    """The filter of a query: the conditions ANDed (negated ones under ``must_not``), the tree one more
    ``must`` item. None: no filter."""
    must: list[Condition] = []
    must_not: list[Condition] = []
    for c in filters:
        positive, negated = condition(c)
        (must_not if negated else must).append(positive)
    if where is not None:
        must.append(tree_node(where))
    if not must and not must_not:
        return None
    return Node(must=tuple(must), must_not=tuple(must_not))


# --------------------------------------------------------------------------- searches
@dataclass(frozen=True, slots=True)
class FusionPlan:
    """A fusion the engine runs itself: RRF (Qdrant's constant ``k``, weights or None) or unweighted DBSF."""

    method: Literal["rrf", "dbsf"]
    k: int | None = None
    weights: tuple[float, ...] | None = None


@dataclass(frozen=True, slots=True)
class SignalSearch:
    """One signal's nearest-neighbour search: the named vector and the query vector (dense or sparse)."""

    signal: str
    using: str
    dense: tuple[float, ...] | None = None
    sparse: SparseVector | None = None


@dataclass(frozen=True, slots=True)
class SearchPlan:
    """One hybrid query: each signal's search (``candidates`` each, under ``filter``), and the engine-fused
    search of the same signals as prefetches (``limit`` hits) when ``fusion`` is set."""

    signals: tuple[SignalSearch, ...]
    filter: Node | None
    candidates: int
    limit: int
    fusion: FusionPlan | None
    #: payload fields the fused search returns for every hit (None: the whole payload)
    window_fields: tuple[str, ...] | None = None


def native_fusion(query: HybridQuery) -> FusionPlan | None:
    """The fusion Qdrant / Edge can run itself with clipfuse's result, or None (then clipfuse fuses).

    RRF when ``k`` is a whole number (the engine's constant is ``k + 1``, see
    :func:`~clipfuse.plugin.fusion.qdrant_rrf_k`), weighted unless every weight is 1; DBSF
    only unweighted. One signal: nothing to fuse.
    """
    if len(query.retrievers) < 2:
        return None
    weights = tuple(float(r.weight) for r in query.retrievers)
    if query.fusion == "rrf" and float(query.rrf_k).is_integer():
        uniform = all(w == 1.0 for w in weights)
        return FusionPlan("rrf", k=qdrant_rrf_k(query.rrf_k), weights=None if uniform else weights)
    if query.fusion == "dbsf" and all(w == 1.0 for w in weights):
        return FusionPlan("dbsf")
    return None


def _signal(r: Retriever) -> SignalSearch:
    if r.signal == "bm25":
        if r.sparse is None:
            raise BackendError("the bm25 retriever needs a sparse vector for Qdrant")
        return SignalSearch(r.signal, USING[r.signal], sparse=r.sparse)
    if r.dense is None:
        raise BackendError(f"the {r.signal} retriever needs a dense vector")
    return SignalSearch(r.signal, USING[r.signal], dense=tuple(float(x) for x in r.dense))


def plan_search(query: HybridQuery, *, engine_fusion: bool = True) -> SearchPlan:
    """The neutral plan of one hybrid query (``engine_fusion=False``: never ask the engine to fuse)."""
    return SearchPlan(
        signals=tuple(_signal(r) for r in query.retrievers),
        filter=filter_node(query.filters, query.where),
        candidates=query.candidates,
        limit=query.limit,
        fusion=native_fusion(query) if engine_fusion else None,
        window_fields=query.window_fields,
    )


# --------------------------------------------------------------------------- facets over the matches
@dataclass(frozen=True, slots=True)
class MatchScan:
    """How to read the set a :class:`~clipfuse.plugin.protocol.FacetQuery` names: the points under
    ``filter`` (a scroll) or, with keywords, those the ``sparse`` BM25 query scores (a sparse search
    returns exactly the points sharing a term with it); ``empty`` when no keyword is a known term.
    ``fields``: the payload fields to read (the counted ones and the group field)."""

    filter: Node | None
    sparse: SparseVector | None
    empty: bool
    fields: tuple[str, ...]
    using: str = BM25


def plan_matches(query: FacetQuery) -> MatchScan:
    """The neutral plan of one facet count over the matches (counted by
    :func:`clipfuse.plugin.facets.count_payloads` from the payloads read)."""
    fields = tuple(sorted({*query.fields, *([query.group_by] if query.group_by else [])}))
    keywords = query.text is not None and bool(query.text.strip())
    if keywords and query.sparse is None:
        raise BackendError("facets over the matches need the query's BM25 sparse vector on Qdrant")
    sparse = query.sparse if keywords else None
    empty = sparse is not None and not len(sparse)
    return MatchScan(filter=filter_node(query.filters, query.where), sparse=sparse, empty=empty, fields=fields)


# --------------------------------------------------------------------------- reading points back
# qdrant-client's ScoredPoint / Record and Edge's ScoredPoint / Record all carry .id, .payload (.score)
def document_of(point: Any) -> tuple[str, dict[str, Any]]:
    """(document id, payload without ``doc_id``) of a point read back; the point id if it has no ``doc_id``."""
    payload = dict(point.payload or {})
    return str(payload.pop("doc_id", point.id)), payload


def documents_of(points: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """``{doc_id: payload}`` of points read back."""
    return dict(document_of(p) for p in points)


def ranked_of(points: Iterable[Any], payloads: dict[str, dict[str, Any]]) -> list[Ranked]:
    """A best-first list of scored points; each document's payload goes to ``payloads`` (first seen wins)."""
    ranked = []
    for p in points:
        doc_id, payload = document_of(p)
        payloads.setdefault(doc_id, payload)
        ranked.append(Ranked(doc_id, float(p.score)))
    return ranked


# --------------------------------------------------------------------------- writes
def point_vectors(doc: IndexedDocument) -> dict[str, list[float] | SparseVector]:
    """The named vectors of one document's point (an empty sparse vector is left out)."""
    vectors: dict[str, list[float] | SparseVector] = {}
    if doc.image_vector is not None:
        vectors[IMAGE] = doc.image_vector.astype("float32").tolist()
    if doc.text_vector is not None:
        vectors[TEXT] = doc.text_vector.astype("float32").tolist()
    if doc.sparse is not None and len(doc.sparse):
        vectors[BM25] = doc.sparse
    return vectors


def point_payload(doc: IndexedDocument) -> dict[str, Any]:
    """The payload of one document's point: its attributes and texts, plus ``doc_id`` (uuid5 is one-way)."""
    return {**doc.payload, "doc_id": doc.id}


def shape_failures(documents: Sequence[IndexedDocument], dim: int) -> dict[str, str]:
    """``{doc_id: reason}`` for documents whose dense vectors are not ``(dim,)``."""
    failures: dict[str, str] = {}
    for doc in documents:
        for name, vec in ((IMAGE, doc.image_vector), (TEXT, doc.text_vector)):
            if vec is not None and vec.shape != (dim,):
                failures[doc.id] = f"{name} vector has shape {tuple(vec.shape)}, the collection expects ({dim},)"
    return failures


def payload_index_type(kind: FieldType) -> PayloadIndexType:
    """The payload index of a field type (numbers are indexed as floats)."""
    return _PAYLOAD_INDEX[kind]


def new_fields(info: IndexInfo, fields: Mapping[str, FieldType]) -> tuple[dict[str, FieldType], IndexInfo]:
    """(the fields not recorded yet, the record with them): what ``register_fields`` indexes and writes."""
    new = {k: v for k, v in fields.items() if k not in info.fields}
    return new, IndexInfo(dim=info.dim, model=info.model, fields={**info.fields, **new})

"""Elasticsearch backend over the caller's own ``Elasticsearch`` client (clusters 8.15+ and 9.x).

Layout: one index. ``image_vector`` and ``text_vector`` are ``dense_vector`` fields
(cosine, ``int8_hnsw`` by default; ``bbq_hnsw`` / ``hnsw`` / ``int8_flat`` / ``flat``
selectable); ``title`` / ``caption`` / ``description`` are ``text`` fields analysed
for product titles (see :func:`build_index_body`); ``doc_id`` is a ``keyword``;
attributes live at the top level of ``_source`` and are mapped ``keyword`` /
``double`` / ``boolean`` (explicitly by :meth:`ElasticsearchBackend.register_fields`,
and by dynamic templates for any that arrive first). clipfuse's own record
(schema version, model, dimension, filterable fields) sits in the mapping's
``_meta.clipfuse``. The document id is the ``_id``: a redelivered document
overwrites itself. Vectors are left out of the stored ``_source`` (``_source.excludes``,
which works on every 8.x / 9.x cluster; see ``docs/elasticsearch.md`` for what that costs).

Hybrid search (client-side fusion, the default): one ``msearch`` with a kNN search per
dense signal (the filters inside ``knn.filter``) and one BM25 ``multi_match`` over
``title^3 caption^2 description`` (the same filters in ``bool.filter``); clipfuse fuses
the lists with :mod:`clipfuse.plugin.fusion`. With ``server_side_fusion=True`` and a
fusion Elasticsearch computes identically (unweighted RRF with an integer constant;
min-max linear), the ``rrf`` / ``linear`` retriever is run as well and its ranking is
returned as the engine's; a cluster whose licence or version refuses the retriever
falls back to client-side fusion (logged once).

Every request body comes from a pure function here (no I/O), so the bodies can be
asserted in tests and sent by users themselves.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np

try:
    from elastic_transport import ApiError as TransportApiError
    from elastic_transport import ConnectionError as TransportConnectionError
    from elastic_transport import ConnectionTimeout, TlsError, TransportError
    from elasticsearch import Elasticsearch, helpers
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the Elasticsearch backend needs elasticsearch-py: pip install 'elasticsearch>=9,<10' for a 9.x cluster "
        "or 'elasticsearch>=8.15,<9' for an 8.x cluster"
    ) from e

from clipfuse.errors import BackendError, BackendUnavailable, ConfigurationError, InvalidQuery
from clipfuse.plugin.facets import FacetField, FacetValue, FieldValues
from clipfuse.plugin.fusion import Ranked
from clipfuse.plugin.protocol import (
    AliasRecord,
    BackendResult,
    FacetCounts,
    FacetQuery,
    HybridQuery,
    IndexedDocument,
    IndexInfo,
    Retriever,
)
from clipfuse.schemas import RESERVED_FIELDS, FieldType, FilterCondition, FilterExpr, FilterGroup
from clipfuse.schemas.search import FacetStats

__all__ = [
    "BM25_FIELDS",
    "IMAGE_FIELD",
    "TEXT_FIELD",
    "ElasticsearchBackend",
    "VectorIndexType",
    "build_adopt_actions",
    "build_alias_actions",
    "build_bulk_actions",
    "build_bulk_delete_actions",
    "build_facet_search",
    "build_filter",
    "build_filter_tree",
    "build_index_body",
    "build_mget",
    "build_msearch",
    "build_retriever_search",
    "build_shop_msearch",
    "hybrid_shop_search",
    "open_elasticsearch_client",
    "server_fusion_unsupported_reason",
    "shop_knn_filter",
]

log = logging.getLogger(__name__)

VectorIndexType = Literal["int8_hnsw", "bbq_hnsw", "hnsw", "int8_flat", "flat"]
VECTOR_INDEX_TYPES: tuple[str, ...] = ("int8_hnsw", "bbq_hnsw", "hnsw", "int8_flat", "flat")

IMAGE_FIELD, TEXT_FIELD = "image_vector", "text_vector"
VECTOR_FIELDS: tuple[str, str] = (IMAGE_FIELD, TEXT_FIELD)
TEXT_FIELDS: tuple[str, ...] = ("title", "caption", "description")
#: the BM25 ``multi_match`` fields and boosts: a title match counts most
BM25_FIELDS: tuple[str, ...] = ("title^3", "caption^2", "description")
ANALYZER = "clipfuse_product"
_VECTOR_OF = {"image": IMAGE_FIELD, "text": TEXT_FIELD}
_META_KEY = "clipfuse"
_ALIAS_KEY = "clipfuse_alias"
_SCHEMA_VERSION = 1
#: ``dense_vector`` accepts at most 4096 dimensions; BBQ needs at least 64 (``BBQ_MIN_DIMS``)
MAX_DIMS, BBQ_MIN_DIMS = 4096, 64
#: ``num_candidates`` and (by default ``index.max_result_window``) ``from + size`` cap at 10,000
MAX_WINDOW = 10_000
#: ``_id`` is limited to 512 bytes
MAX_ID_BYTES = 512
_UNAVAILABLE_STATUS = (429, 502, 503, 504)
#: ``retry_on_status`` of the bulk helpers arrived in elasticsearch-py 8.16 (elastic/elasticsearch-py#2071)
_BULK_RETRY_ON_STATUS = "retry_on_status" in inspect.signature(helpers.streaming_bulk).parameters
_ES_TYPE = {"keyword": "keyword", "number": "double", "bool": "boolean"}
_FIELD_TYPE_OF_MAPPING: dict[str, FieldType] = {
    "keyword": "keyword",
    "constant_keyword": "keyword",
    "double": "number",
    "float": "number",
    "half_float": "number",
    "scaled_float": "number",
    "long": "number",
    "integer": "number",
    "short": "number",
    "byte": "number",
    "unsigned_long": "number",
    "boolean": "bool",
}


# -- errors ------------------------------------------------------------------------------
def _describe(body: Any, limit: int = 500) -> str:
    """``type: reason (caused by type: reason)`` from an Elasticsearch error body or bulk item error."""
    error = body.get("error", body) if isinstance(body, Mapping) else body
    if isinstance(error, Mapping):
        text = f"{error.get('type', 'error')}: {error.get('reason', '')}".rstrip(": ")
        cause = error.get("caused_by")
        if isinstance(cause, Mapping):
            text += f" (caused by {cause.get('type', 'error')}: {cause.get('reason', '')})"
    else:
        text = str(error)
    return text[:limit]


def _status_of(error: TransportApiError) -> int:
    return int(error.meta.status)


@contextmanager
def _errors(action: str) -> Iterator[None]:
    """Map elasticsearch-py's errors to clipfuse's: unreachable / overloaded -> retryable."""
    try:
        yield
    except TransportApiError as e:
        status = _status_of(e)
        if status in _UNAVAILABLE_STATUS:
            raise BackendUnavailable(
                f"Elasticsearch is unavailable ({status}: {_describe(e.body, 200)}) while {action}; retry later"
            ) from e
        raise BackendError(f"Elasticsearch refused {action}: HTTP {status}: {_describe(e.body)}") from e
    except TlsError as e:
        raise BackendError(f"TLS failed while {action}: {e}; check the cluster's CA (ca_certs) and verify_certs") from e
    except (TransportConnectionError, ConnectionTimeout) as e:
        raise BackendUnavailable(f"cannot reach Elasticsearch while {action}: {e}") from e
    except TransportError as e:  # serialisation, sniffing
        raise BackendError(f"Elasticsearch client error while {action}: {e}") from e


def _check_response(response: Mapping[str, Any], action: str) -> None:
    """An ``msearch`` item carries its own error and status; raise it like a failed request."""
    if "error" not in response:
        return
    status = int(response.get("status", 500))
    if status in _UNAVAILABLE_STATUS:
        raise BackendUnavailable(f"Elasticsearch is unavailable ({status}) while {action}: {_describe(response)}")
    raise BackendError(f"Elasticsearch refused {action}: HTTP {status}: {_describe(response)}")


# -- pure builders -----------------------------------------------------------------------
def build_index_body(
    dim: int,
    model: str | None,
    vector_index_type: VectorIndexType = "int8_hnsw",
    *,
    exclude_vectors_from_source: bool = True,
) -> dict[str, Any]:
    """The ``PUT /<index>`` body: ``{"settings": ..., "mappings": ...}``.

    The product analyser (``clipfuse_product``): the ``standard`` tokenizer (Unicode
    word boundaries, so ``t-shirt`` -> ``t`` ``shirt``, ``4k`` stays one token),
    ``english_possessive`` (``men's`` -> ``men``), ``lowercase``, ``asciifolding``
    (``café`` matches ``cafe``, which shoppers type) and the ``light_english`` (KStem)
    stemmer (``boots`` -> ``boot``, gentler than Porter so brand-like words survive).
    No stop words: titles are short and BM25's IDF already discounts common words.

    ``vector_index_type`` is the ``dense_vector`` ``index_options.type``; ``bbq_hnsw``
    needs at least 64 dimensions. ``exclude_vectors_from_source`` drops the vectors
    from the stored ``_source`` (saves disk; the cost: reindex / update_by_query can't
    carry them over, re-ingest instead).
    """
    if not 1 <= dim <= MAX_DIMS:
        raise ConfigurationError(
            f"Elasticsearch dense_vector fields hold 1..{MAX_DIMS} dimensions; the model makes {dim}"
        )
    if vector_index_type not in VECTOR_INDEX_TYPES:
        raise ConfigurationError(
            f"unknown vector index type {vector_index_type!r}; choose one of {', '.join(VECTOR_INDEX_TYPES)}"
        )
    if vector_index_type == "bbq_hnsw" and dim < BBQ_MIN_DIMS:
        raise ConfigurationError(
            f"bbq_hnsw needs at least {BBQ_MIN_DIMS} dimensions; the model makes {dim}: use int8_hnsw"
        )

    def vector() -> dict[str, Any]:
        return {
            "type": "dense_vector",
            "dims": dim,
            "index": True,
            "similarity": "cosine",
            "index_options": {"type": vector_index_type},
        }

    def text() -> dict[str, Any]:
        return {"type": "text", "analyzer": ANALYZER}

    mappings: dict[str, Any] = {
        "_meta": {_META_KEY: {"version": _SCHEMA_VERSION, "model": model, "dim": dim, "fields": {}}},
        "dynamic": True,
        "date_detection": False,
        "numeric_detection": False,
        "dynamic_templates": [
            {"clipfuse_strings": {"match_mapping_type": "string", "mapping": {"type": "keyword"}}},
            {"clipfuse_integers": {"match_mapping_type": "long", "mapping": {"type": "double"}}},
            {"clipfuse_numbers": {"match_mapping_type": "double", "mapping": {"type": "double"}}},
            {"clipfuse_booleans": {"match_mapping_type": "boolean", "mapping": {"type": "boolean"}}},
        ],
        "properties": {
            "doc_id": {"type": "keyword"},
            "title": text(),
            "caption": text(),
            "description": text(),
            "images": {"type": "keyword", "index": False, "doc_values": False},
            IMAGE_FIELD: vector(),
            TEXT_FIELD: vector(),
        },
    }
    if exclude_vectors_from_source:
        mappings["_source"] = {"excludes": list(VECTOR_FIELDS)}
    settings = {
        "analysis": {
            "filter": {
                "clipfuse_english_possessive": {"type": "stemmer", "language": "possessive_english"},
                "clipfuse_english_stemmer": {"type": "stemmer", "language": "light_english"},
            },
            "analyzer": {
                ANALYZER: {
                    "type": "custom",
                    "tokenizer": "standard",
                    "filter": ["clipfuse_english_possessive", "lowercase", "asciifolding", "clipfuse_english_stemmer"],
                }
            },
        }
    }
    return {"settings": settings, "mappings": mappings}


def build_field_mappings(fields: Mapping[str, FieldType]) -> dict[str, dict[str, str]]:
    """``properties`` for attribute fields: keyword / double / boolean."""
    return {name: {"type": _ES_TYPE[kind]} for name, kind in fields.items()}


def _vector_list(vec: np.ndarray) -> list[float]:
    """A vector as JSON-ready floats (float32 values, as Elasticsearch stores them)."""
    values: list[float] = np.asarray(vec, dtype=np.float32).reshape(-1).tolist()
    return values


def build_bulk_actions(docs: Sequence[IndexedDocument], index: str) -> list[dict[str, Any]]:
    """``helpers.bulk`` actions: one idempotent ``index`` op per document, ``_id`` = its id.

    ``_source`` = the payload (texts, image references, attributes at the top level),
    ``doc_id`` and the vectors present. Checks (dimensions, reserved names) are the
    backend's job (:meth:`ElasticsearchBackend.upsert`); this only shapes the actions.
    """
    actions = []
    for doc in docs:
        source: dict[str, Any] = {**doc.payload, "doc_id": doc.id}
        if doc.image_vector is not None:
            source[IMAGE_FIELD] = _vector_list(doc.image_vector)
        if doc.text_vector is not None:
            source[TEXT_FIELD] = _vector_list(doc.text_vector)
        actions.append({"_op_type": "index", "_index": index, "_id": doc.id, "_source": source})
    return actions


def build_alias_actions(alias: str, new: str, old: str | None) -> dict[str, Any]:
    """The ``POST /_aliases`` body that moves ``alias`` from ``old`` to ``new`` in one atomic step."""
    actions: list[dict[str, Any]] = []
    if old is not None and old != new:
        actions.append({"remove": {"index": old, "alias": alias}})
    actions.append({"add": {"index": new, "alias": alias, "is_write_index": True}})
    return {"actions": actions}


def build_adopt_actions(name: str, physical: str) -> dict[str, Any]:
    """The ``POST /_aliases`` body that replaces the plain index ``name`` by an alias ``name`` -> ``physical``.

    ``remove_index`` and ``add`` in one request: Elasticsearch applies them atomically, so
    ``name`` resolves at every moment (``physical`` is a ``_clone`` of ``name``).
    """
    return {
        "actions": [
            {"remove_index": {"index": name}},
            {"add": {"index": physical, "alias": name, "is_write_index": True}},
        ]
    }


def build_bulk_delete_actions(ids: Sequence[str], index: str) -> list[dict[str, Any]]:
    """``helpers.bulk`` ``delete`` actions by ``_id``."""
    return [{"_op_type": "delete", "_index": index, "_id": doc_id} for doc_id in ids]


def _clause(c: FilterCondition) -> tuple[dict[str, Any], bool]:
    """(query clause, negated) for one checked filter condition. Values are JSON values, never query text."""
    if c.op in ("lt", "lte", "gt", "gte"):
        return {"range": {c.field: {c.op: c.value}}}, False
    if c.op in ("in", "nin"):
        values = list(c.value) if isinstance(c.value, list) else [c.value]
        return {"terms": {c.field: values}}, c.op == "nin"
    return {"term": {c.field: c.value}}, c.op == "ne"


def build_filter(filters: Sequence[FilterCondition], where: FilterGroup | None = None) -> list[dict[str, Any]]:
    """Checked filters (see :func:`clipfuse.plugin.filters.resolve_filters`) as a list of filter clauses.

    ``eq`` -> ``term``, ``in`` -> ``terms``, ``lt``/``lte``/``gt``/``gte`` -> ``range``;
    ``ne`` / ``nin`` go into one trailing ``{"bool": {"must_not": [...]}}`` (a document
    without the field passes them, as in Qdrant). Empty list: no filter. The list is
    what ``knn.filter`` and ``bool.filter`` take. ``where`` (a filter tree) is one more
    clause: :func:`build_filter_tree`.
    """
    positive: list[dict[str, Any]] = []
    negative: list[dict[str, Any]] = []
    for condition in filters:
        clause, negated = _clause(condition)
        (negative if negated else positive).append(clause)
    if negative:
        positive.append({"bool": {"must_not": negative}})
    if where is not None:
        positive.append(build_filter_tree(where))
    return positive


def _expr_clause(expr: FilterExpr) -> dict[str, Any]:
    if isinstance(expr, FilterGroup):
        return build_filter_tree(expr)
    clause, negated = _clause(expr)
    return {"bool": {"must_not": [clause]}} if negated else clause


def build_filter_tree(tree: FilterGroup) -> dict[str, Any]:
    """A checked filter tree as one ``bool`` clause: ``all`` -> ``filter``, ``any`` -> ``should``
    (``minimum_should_match: 1``), ``none`` -> ``must_not``; nested groups nest."""
    node: dict[str, Any] = {}
    if tree.all:
        node["filter"] = [_expr_clause(e) for e in tree.all]
    if tree.any:
        node["should"] = [_expr_clause(e) for e in tree.any]
        node["minimum_should_match"] = 1
    if tree.none:
        node["must_not"] = [_expr_clause(e) for e in tree.none]
    return {"bool": node}


def build_field_values_aggs(fields: Mapping[str, FieldType], *, max_values: int) -> dict[str, Any]:
    """The ``aggs`` of :meth:`ElasticsearchBackend.field_values`: ``f<i>`` terms, ``f<i>_min`` / ``f<i>_max``."""
    aggs: dict[str, Any] = {}
    for i, (name, kind) in enumerate(sorted(fields.items())):
        if kind == "number":
            aggs[f"f{i}_min"] = {"min": {"field": name}}
            aggs[f"f{i}_max"] = {"max": {"field": name}}
        else:
            aggs[f"f{i}"] = {"terms": {"field": name, "size": max_values}}
    return aggs


def _bucket_key(bucket: Mapping[str, Any], kind: FieldType) -> Any:
    if kind == "bool":
        return bucket.get("key_as_string", bucket["key"]) in (True, 1, "true")
    return bucket["key"]


def parse_field_values(results: Mapping[str, Any], fields: Mapping[str, FieldType]) -> list[FacetField]:
    """The answer to :func:`build_field_values_aggs` as facet fields."""
    out = []
    for i, (name, kind) in enumerate(sorted(fields.items())):
        if kind == "number":
            lo, hi = results[f"f{i}_min"].get("value"), results[f"f{i}_max"].get("value")
            out.append(FacetField(name=name, type=kind, min=lo, max=hi))
        else:
            values = [
                FacetValue(value=_bucket_key(b, kind), count=int(b["doc_count"])) for b in results[f"f{i}"]["buckets"]
            ]
            out.append(FacetField(name=name, type=kind, values=values))
    return out


#: buckets asked per facet field: every value (then sorted and cut here, so counts and order are exact)
FACET_BUCKETS = 10_000
#: counting groups: distinct group values are exact below this (Elasticsearch's ``cardinality`` precision)
GROUP_PRECISION = 40_000


def _match_query(text: str | None, flt: list[dict[str, Any]]) -> dict[str, Any]:
    boolean: dict[str, Any] = {}
    if text is not None and text.strip():
        boolean["must"] = [{"multi_match": {"query": text, "fields": list(BM25_FIELDS), "type": "best_fields"}}]
    if flt:
        boolean["filter"] = flt
    return {"bool": boolean} if boolean else {"match_all": {}}


def _groups_aggs(group_by: str) -> dict[str, Any]:
    """How many groups a bucket holds: distinct group values plus the documents without one."""
    return {
        "groups": {"cardinality": {"field": group_by, "precision_threshold": GROUP_PRECISION}},
        "loose": {"missing": {"field": group_by}},
    }


def build_facet_search(query: FacetQuery) -> dict[str, Any]:
    """The ``_search`` body of :meth:`ElasticsearchBackend.count_facets`: the matches (the query's
    keywords as the BM25 signal's ``multi_match``, the filters) with ``size: 0``, an exact total, and
    one aggregation per field: ``f<i>`` ``terms`` (every value; with ``group_by``, groups per value)
    or ``stats``; with ``group_by``, the set's groups too."""
    aggs: dict[str, Any] = {}
    for i, (name, kind) in enumerate(sorted(query.fields.items())):
        if kind == "number":
            aggs[f"f{i}"] = {"stats": {"field": name}}
        else:
            terms: dict[str, Any] = {"terms": {"field": name, "size": FACET_BUCKETS}}
            if query.group_by is not None:
                terms["aggs"] = _groups_aggs(query.group_by)
            aggs[f"f{i}"] = terms
    if query.group_by is not None:
        aggs.update(_groups_aggs(query.group_by))
    return {
        "size": 0,
        "track_total_hits": True,
        "query": _match_query(query.text, build_filter(query.filters, query.where)),
        "aggs": aggs,
    }


def parse_facet_search(response: Mapping[str, Any], query: FacetQuery) -> FacetCounts:
    """The answer to :func:`build_facet_search` as facet counts (sorted by count, then value; cut)."""
    results = response.get("aggregations") or {}

    def units(bucket: Mapping[str, Any]) -> int:
        if query.group_by is None:
            return int(bucket["doc_count"])
        return int(bucket["groups"]["value"]) + int(bucket["loose"]["doc_count"])

    facets: dict[str, dict[str, int]] = {}
    stats: dict[str, FacetStats] = {}
    for i, (name, kind) in enumerate(sorted(query.fields.items())):
        result = results[f"f{i}"]
        if kind == "number":
            if int(result.get("count") or 0):
                stats[name] = FacetStats(
                    count=int(result["count"]),
                    min=float(result["min"]),
                    max=float(result["max"]),
                    avg=float(result["avg"]),
                    sum=float(result["sum"]),
                )
            continue
        counts: dict[str, int] = {}
        for bucket in result["buckets"]:
            key = bucket.get("key_as_string", bucket["key"]) if kind == "bool" else bucket["key"]
            counts[str(key).lower() if kind == "bool" else str(key)] = units(bucket)
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: query.max_values]
        facets[name] = dict(ordered)
    if query.group_by is not None:
        total = units(results)
    else:
        total = int(((response.get("hits") or {}).get("total") or {}).get("value") or 0)
    return FacetCounts(facets=facets, stats=stats, total=total)


def _window(query: HybridQuery) -> int:
    """Candidates per retriever, capped at Elasticsearch's 10,000."""
    return max(1, min(int(query.candidates), MAX_WINDOW))


def _num_candidates(k: int) -> int:
    """``num_candidates`` per shard: twice ``k`` for recall, at least ``k``, at most 10,000."""
    return min(MAX_WINDOW, max(k, 2 * k))


def _source_filter() -> dict[str, Any]:
    return {"excludes": list(VECTOR_FIELDS)}


def _knn_clause(r: Retriever, k: int, flt: list[dict[str, Any]]) -> dict[str, Any]:
    if r.dense is None:
        raise InvalidQuery(f"the {r.signal} signal needs a query vector")
    knn: dict[str, Any] = {
        "field": _VECTOR_OF[r.signal],
        "query_vector": _vector_list(r.dense),
        "k": k,
        "num_candidates": _num_candidates(k),
    }
    if flt:
        knn["filter"] = flt
    return knn


def _bm25_query(r: Retriever, flt: list[dict[str, Any]]) -> dict[str, Any]:
    if r.text is None:
        raise InvalidQuery("the bm25 signal needs query text")
    match = {
        "multi_match": {
            "query": r.text,
            "fields": list(BM25_FIELDS),
            "type": "best_fields",
            "tie_breaker": 0.3,
        }
    }
    boolean: dict[str, Any] = {"must": [match]}
    if flt:
        boolean["filter"] = flt
    return {"bool": boolean}


def build_msearch(query: HybridQuery, index: str) -> list[dict[str, Any]]:
    """The ``msearch`` searches (header, body, header, body, ...) for one hybrid query, in retriever order.

    Dense signals: a top-level ``knn`` search (``k`` = ``size`` = candidates,
    ``num_candidates`` = ``min(10000, 2k)``, the filter inside ``knn.filter`` so
    filtering happens during the vector search, not after). BM25: a ``multi_match``
    of the query text over :data:`BM25_FIELDS` with the same filter in ``bool.filter``.
    """
    k = _window(query)
    flt = build_filter(query.filters, query.where)
    searches: list[dict[str, Any]] = []
    for r in query.retrievers:
        body: dict[str, Any] = {"query": _bm25_query(r, flt)} if r.signal == "bm25" else {"knn": _knn_clause(r, k, flt)}
        body.update({"size": k, "_source": _source_filter(), "track_total_hits": False})
        searches.extend([{"index": index}, body])
    return searches


def build_mget(ids: Sequence[str], fields: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``_mget`` body reading documents by ``_id``: their ``_source`` without vectors (or only ``fields``)."""
    source: Any = _source_filter()
    if fields is not None:
        source = {"includes": list(fields)} if fields else False  # an empty includes would mean everything
    return {"docs": [{"_id": doc_id, "_source": source} for doc_id in ids]}


def server_fusion_unsupported_reason(query: HybridQuery) -> str | None:
    """Why Elasticsearch cannot compute this query's fusion exactly as clipfuse does (None: it can).

    - ``rrf``: Elasticsearch scores ``sum 1 / (rank_constant + rank)``, which is
      :func:`clipfuse.plugin.fusion.rrf` with every weight 1 and ``k = rank_constant``;
      ``rank_constant`` is an integer >= 1. Its weighted RRF (9.2+) multiplies each
      term by the weight, which is not clipfuse's ``1 / (rank / w + k)``.
    - ``linear``: the ``linear`` retriever with the ``minmax`` normaliser and
      per-retriever weights is clipfuse's min-max linear fusion (all-equal lists
      normalise to 1 on both sides).
    - ``dbsf`` / ``zscore``: no Elasticsearch equivalent.
    - Elasticsearch's compound retrievers need at least two children.
    """
    if len(query.retrievers) < 2:
        return "a single signal needs no fusion"
    if query.fusion == "rrf":
        if not (float(query.rrf_k).is_integer() and query.rrf_k >= 1):
            return f"Elasticsearch's rank_constant is an integer >= 1; rrf_k={query.rrf_k:g} is not"
        if any(r.weight != 1.0 for r in query.retrievers):
            return "Elasticsearch's weighted RRF (9.2+) multiplies whole terms; clipfuse's weights divide the rank"
        return None
    if query.fusion == "linear":
        return None
    return f"Elasticsearch has no {query.fusion} fusion"


def build_retriever_search(query: HybridQuery, index: str | None = None) -> dict[str, Any] | None:
    """The ``_search`` body that fuses the query server-side with the ``rrf`` or ``linear`` retriever.

    None when :func:`server_fusion_unsupported_reason` has a reason (then fuse client-side).
    The children are exactly the msearch searches (same kNN clauses, same BM25 query,
    same filters); ``rank_window_size`` = candidates, ``size`` = the fused hits wanted.
    ``index`` is accepted for symmetry with :func:`build_msearch` (it goes in the URL).
    """
    del index
    if server_fusion_unsupported_reason(query) is not None:
        return None
    k = _window(query)
    flt = build_filter(query.filters, query.where)
    children: list[dict[str, Any]] = []
    for r in query.retrievers:
        if r.signal == "bm25":
            children.append({"standard": {"query": _bm25_query(r, flt)}})
        else:
            children.append({"knn": _knn_clause(r, k, flt)})
    size = max(1, min(int(query.limit), MAX_WINDOW))
    window = max(k, size)
    retriever: dict[str, Any]
    if query.fusion == "rrf":
        retriever = {"rrf": {"retrievers": children, "rank_constant": int(query.rrf_k), "rank_window_size": window}}
    else:
        retriever = {
            "linear": {
                "retrievers": [
                    {"retriever": child, "weight": float(r.weight), "normalizer": "minmax"}
                    for child, r in zip(children, query.retrievers, strict=True)
                ],
                "rank_window_size": window,
            }
        }
    return {"retriever": retriever, "size": size, "_source": _source_filter(), "track_total_hits": False}


# -- hybrid search around the shop's own _search body -------------------------------------
#: top-level keys of a shop's ``_search`` body the wrapper carries (others: InvalidQuery naming them)
SHOP_BODY_KEYS = frozenset(
    {
        "query",
        "aggs",
        "aggregations",
        "post_filter",
        "size",
        "from",
        "_source",
        "sort",
        "track_total_hits",
        "timeout",
        "collapse",
    }
)
#: query types that restrict the result set without scoring it: carried to the kNN signals as filters
_RESTRICTING = frozenset(
    {"term", "terms", "range", "exists", "ids", "prefix", "wildcard", "regexp", "nested", "bool", "terms_set",
     "geo_distance", "geo_bounding_box", "geo_shape", "match_none", "constant_score", "type"}
)  # fmt: skip
#: full-text query types: the shop's lexical signal (they score; they are not carried to kNN)
_FULL_TEXT = frozenset(
    {"match", "multi_match", "match_phrase", "match_phrase_prefix", "match_bool_prefix", "combined_fields",
     "query_string", "simple_query_string", "match_all", "dis_max"}
)  # fmt: skip


def _query_type(clause: Any, where: str) -> str:
    if not isinstance(clause, Mapping) or len(clause) != 1:
        raise InvalidQuery(f"{where}: a query clause is an object with one query type, got {json.dumps(clause)[:120]}")
    return str(next(iter(clause)))


def _clauses(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [] if value is None else [value]


def shop_knn_filter(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The filter clauses of a shop's ``_search`` body that must also filter the kNN signals.

    From a top-level ``bool``: every ``filter`` and ``must_not`` clause, and ``must``
    clauses that restrict without scoring (``term``, ``terms``, ``range``, ``nested``, ...);
    ``must`` full-text clauses and ``should`` boosts are the lexical signal only. A
    ``constant_score`` / ``function_score`` / ``script_score`` is unwrapped to its query.
    ``post_filter`` filters the kNN signals too (it filters the shop's hits, not its
    aggregations). Anything that cannot be split this way is an :class:`InvalidQuery`
    naming the clause; pass ``knn_filter=[...]`` to :func:`hybrid_shop_search` then.
    """
    out: list[dict[str, Any]] = []
    query = body.get("query")
    where = "query"
    while query is not None:
        kind = _query_type(query, where)
        inner = query[kind]
        if kind in ("function_score", "script_score"):
            query, where = inner.get("query"), f"{where}.{kind}.query"
            continue
        if kind == "constant_score":
            out.append(dict(inner["filter"]))
            break
        if kind in _FULL_TEXT:
            break
        if kind in _RESTRICTING and kind != "bool":
            out.append(dict(query))
            break
        if kind != "bool":
            raise InvalidQuery(
                f"{where}: clipfuse cannot split a {kind!r} query into the lexical signal and filters for the "
                "kNN signals: wrap it in a bool (scoring clauses in must / should, restrictions in filter), or pass "
                "knn_filter=[...] with the clauses the kNN signals must respect"
            )
        if inner.get("minimum_should_match") not in (None, 0, "0") and inner.get("should"):
            raise InvalidQuery(
                f"{where}.bool.minimum_should_match: 'should' clauses that must match restrict the result set, "
                "and clipfuse cannot tell which of them the kNN signals must respect: pass knn_filter=[...], or "
                "move the restriction into bool.filter"
            )
        for position, clause in enumerate(_clauses(inner.get("filter"))):
            _query_type(clause, f"{where}.bool.filter[{position}]")
            out.append(dict(clause))
        negative = [dict(c) for c in _clauses(inner.get("must_not"))]
        for position, clause in enumerate(_clauses(inner.get("must"))):
            kind = _query_type(clause, f"{where}.bool.must[{position}]")
            if kind in _RESTRICTING:
                out.append(dict(clause))
            elif kind not in _FULL_TEXT:
                raise InvalidQuery(
                    f"{where}.bool.must[{position}]: clipfuse cannot tell whether a {kind!r} clause restricts the "
                    "results or only scores them: pass knn_filter=[...], or move a restriction into bool.filter"
                )
        if negative:
            out.append({"bool": {"must_not": negative}})
        break
    post_filter = body.get("post_filter")
    if post_filter is not None:
        _query_type(post_filter, "post_filter")
        out.append(dict(post_filter))
    return out


def _check_shop_body(body: Mapping[str, Any]) -> None:
    if not isinstance(body, Mapping):
        raise InvalidQuery(f"the shop's _search body must be an object, got {type(body).__name__}")
    unknown = sorted(set(body) - SHOP_BODY_KEYS)
    if unknown:
        raise InvalidQuery(
            f"the shop's _search body has {', '.join(unknown)}, which clipfuse cannot carry into a hybrid search "
            f"(it carries {', '.join(sorted(SHOP_BODY_KEYS))}): drop them, or send that request to Elasticsearch "
            "directly"
        )
    for key in ("size", "from"):
        value = body.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidQuery(f"{key} must be a non-negative integer, got {value!r}")
    if int(body.get("from", 0)) + int(body.get("size", 10)) > MAX_WINDOW:
        raise InvalidQuery(f"from + size is over {MAX_WINDOW}: page with a smaller from")
    collapse = body.get("collapse")
    if collapse is not None and (not isinstance(collapse, Mapping) or set(collapse) != {"field"}):
        raise InvalidQuery(
            'collapse: clipfuse collapses the fused ranking itself and carries only {"field": ...}; '
            f"got {json.dumps(collapse)[:120]} (inner_hits / max_concurrent_group_searches are not carried)"
        )
    for position, item in enumerate(_clauses(body.get("sort"))):
        name = item if isinstance(item, str) else next(iter(item), None) if isinstance(item, Mapping) else None
        order = item.get(name) if isinstance(item, Mapping) and name is not None else "desc"
        if name != "_score" or order not in ("desc", {"order": "desc"}):
            raise InvalidQuery(
                f"sort[{position}]: a hybrid search ranks by the fused score; only sort on _score (descending) "
                f"can be carried, got {json.dumps(item)[:120]}: drop the sort, or run sorted listings without clipfuse"
            )


def _with_fields(source: Any, fields: Sequence[str]) -> Any:
    """A ``_source`` setting that also returns ``fields``."""
    if not fields:
        return source
    if source is False:
        return {"includes": list(fields)}
    if isinstance(source, str):
        source = [source]
    if isinstance(source, list):
        return [*source, *(f for f in fields if f not in source)]
    if isinstance(source, Mapping) and source.get("includes"):
        includes = _clauses(source["includes"])
        return {**source, "includes": [*includes, *(f for f in fields if f not in includes)]}
    return source


def build_shop_msearch(
    body: Mapping[str, Any],
    vectors: Mapping[str, np.ndarray],
    *,
    index: str,
    candidates: int,
    knn_filter: Sequence[Mapping[str, Any]] | None = None,
    source_fields: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The ``msearch`` for a hybrid search around a shop's body: its own query first, then one kNN per vector.

    The lexical search is the shop's body as sent (``query``, ``aggs``, ``post_filter``,
    ``track_total_hits``) with ``from: 0`` and ``size`` = ``candidates``; its
    aggregations are therefore computed on the shop's own query. Each kNN search
    (``vectors``: ``{"image": v, "text": v}``, matched against ``image_vector`` /
    ``text_vector``) carries :func:`shop_knn_filter` (or ``knn_filter``) in
    ``knn.filter``. ``_source`` is the shop's, with the vector fields left out and
    ``source_fields`` (what boosts and collapse read) added when it lists fields. The
    shop's ``collapse`` is not sent: clipfuse collapses the fused ranking.
    """
    _check_shop_body(body)
    k = max(1, min(int(candidates), MAX_WINDOW))
    flt = [dict(c) for c in knn_filter] if knn_filter is not None else shop_knn_filter(body)
    source: Any = body.get("_source", _source_filter())
    if source is True or source is None:
        source = _source_filter()
    source = _with_fields(source, source_fields)
    lexical: dict[str, Any] = {k_: v for k_, v in body.items() if k_ not in ("from", "size", "sort", "collapse")}
    lexical.update({"from": 0, "size": k, "_source": source})
    if "query" not in lexical:
        lexical["query"] = {"match_all": {}}
    searches: list[dict[str, Any]] = [{"index": index}, lexical]
    for signal in ("image", "text"):
        vector = vectors.get(signal)
        if vector is None:
            continue
        knn: dict[str, Any] = {
            "field": _VECTOR_OF[signal],
            "query_vector": _vector_list(vector),
            "k": k,
            "num_candidates": _num_candidates(k),
        }
        if flt:
            knn["filter"] = flt
        searches.extend([{"index": index}, {"knn": knn, "size": k, "_source": source, "track_total_hits": False}])
    return searches


def hybrid_shop_search(
    client: Elasticsearch,
    index: str,
    body: Mapping[str, Any],
    *,
    vectors: Mapping[str, np.ndarray],
    weights: Mapping[str, float] | None = None,
    fusion_method: str = "rrf",
    rrf_k: float = 60.0,
    candidates: int = 100,
    knn_filter: Sequence[Mapping[str, Any]] | None = None,
    boosts: Sequence[tuple[Any, str]] = (),
    collapse: str | None = None,
) -> dict[str, Any]:
    """Hybridise a shop's own ``_search`` body: its query is the lexical signal, kNN signals join it.

    ``vectors``: the query's dense embedding per signal (``{"image": v, "text": v}``;
    :meth:`clipfuse.plugin.HybridSearcher.hybridize` makes them from a text / an image).
    ``weights``: per signal (``bm25`` is the shop's query). The answer has
    Elasticsearch's own shape: ``hits.total`` (the fused candidates; ``gte`` when a
    signal's candidate list was full), ``hits.hits[]`` with ``_index``, ``_id``,
    ``_score`` (the fused score), ``_source`` and ``_clipfuse`` (each signal's raw
    score and rank, the fused rank), paged by the body's ``from`` / ``size``, and the
    shop's ``aggregations`` untouched, computed on its own query.

    ``boosts``: checked ``(boost, label)`` pairs (:meth:`HybridSearcher.hybridize` checks
    them against the index), applied to the window-normalised fused score as in
    :meth:`HybridSearcher.search`. ``collapse`` (or the body's ``collapse.field``): one
    hit per value of that field, before paging, with ``fields`` as Elasticsearch's
    collapse returns it and the other documents of the group in ``_clipfuse.variants``.
    """
    from clipfuse.plugin import collapse as collapse_steps
    from clipfuse.plugin import fusion as fusion_module
    from clipfuse.plugin import ranking as ranking_steps

    body_collapse = body.get("collapse") if isinstance(body, Mapping) else None
    if collapse is None and isinstance(body_collapse, Mapping):
        collapse = body_collapse.get("field")
    read_fields: set[str] = {collapse} if collapse else set()
    for boost, _label in boosts:
        filters = getattr(boost, "filters", None)
        if filters:
            read_fields.update(c.field for c in filters)
        else:
            read_fields.add(boost.field)
    read = sorted(read_fields)
    searches = build_shop_msearch(
        body, vectors, index=index, candidates=candidates, knn_filter=knn_filter, source_fields=read
    )
    signals = ["bm25", *(s for s in ("image", "text") if vectors.get(s) is not None)]
    chosen = {"bm25": 1.0, "image": 1.0, "text": 1.0, **(weights or {})}
    with _errors(f"searching {index!r} with the shop's query"):
        response = client.msearch(index=index, searches=searches)
    items = list(response["responses"])
    if len(items) != len(signals):
        raise BackendError(f"Elasticsearch answered {len(items)} searches for {len(signals)} sent")
    lists: list[list[Ranked]] = []
    hits_of: dict[str, dict[str, Any]] = {}
    for signal, item in zip(signals, items, strict=True):
        _check_response(item, f"searching {index!r} ({signal})")
        ranked = []
        for hit in (item.get("hits") or {}).get("hits") or []:
            doc_id = str(hit["_id"])
            score = float(hit.get("_score") or 0.0)
            ranked.append(Ranked(doc_id, score if signal == "bm25" else 2.0 * score - 1.0))
            hits_of.setdefault(doc_id, hit)
        lists.append(ranked)
    fused = fusion_module.fuse(
        fusion_method,  # type: ignore[arg-type]
        lists,
        k=rrf_k,
        weights=[float(chosen[s]) for s in signals],
    )
    tables = [{r.id: (r.score, position) for position, r in enumerate(ranked, start=1)} for ranked in lists]
    payloads = {doc_id: dict(hit.get("_source") or {}) for doc_id, hit in hits_of.items()}
    ranked_window = ranking_steps.apply_boosts([(f.id, f.score) for f in fused], payloads, list(boosts))
    groups = (
        collapse_steps.collapse(ranked_window, payloads, collapse)
        if collapse
        else collapse_steps.singletons(ranked_window)
    )
    added = set(read) - (set(_clauses(body.get("_source"))) if isinstance(body.get("_source"), (list, str)) else set())
    strip = added if isinstance(body.get("_source"), (list, str)) or body.get("_source") is False else set()
    start, size = int(body.get("from", 0)), int(body.get("size", 10))
    out_hits = []
    for rank, group in enumerate(groups[start : start + size], start=start + 1):
        item = group.head
        original = hits_of[item.id]
        source = {k: v for k, v in payloads[item.id].items() if k not in VECTOR_FIELDS and k not in strip}
        explanation: dict[str, Any] = {
            "rank": rank,
            "fusion": fusion_method,
            "fused": float(item.fused),
            "signals": {
                signal: ({"score": table[item.id][0], "rank": table[item.id][1]} if item.id in table else None)
                for signal, table in zip(signals, tables, strict=True)
            },
        }
        if item.boosts:
            explanation["normalised"] = item.normalised
            explanation["boosts"] = [b.model_dump() for b in item.boosts]
        out: dict[str, Any] = {
            "_index": original.get("_index", index),
            "_id": item.id,
            "_score": float(item.score),
            "_source": source,
            "_clipfuse": explanation,
        }
        if collapse:
            value = payloads[item.id].get(collapse)
            out["fields"] = {collapse: [value]} if value is not None else {}
            explanation["variants"] = [{"_id": v.id, "_score": float(v.score)} for v in group.variants]
        out_hits.append(out)
    lexical = items[0]
    full = any(len(ranked) >= max(1, min(int(candidates), MAX_WINDOW)) for ranked in lists)
    answer: dict[str, Any] = {
        "took": int(response.get("took", lexical.get("took", 0))),
        "timed_out": bool(lexical.get("timed_out", False)),
        "_shards": lexical.get("_shards", {}),
        "hits": {
            "total": {"value": len(groups), "relation": "gte" if full else "eq"},
            "max_score": out_hits[0]["_score"] if out_hits else None,
            "hits": out_hits,
        },
    }
    if "aggregations" in lexical:
        answer["aggregations"] = lexical["aggregations"]
    return answer


# -- the client factory (the edge) ------------------------------------------------------
def open_elasticsearch_client(
    url: str,
    *,
    api_key: str | None = None,
    username: str | None = None,
    password: str | None = None,
    ca_certs: str | None = None,
    verify_certs: bool = True,
    request_timeout: float = 30,
) -> Elasticsearch:
    """An ``Elasticsearch`` client for ``url`` with an API key or basic auth, and TLS with a CA file.

    Constructing it sends nothing. The transport retries connection errors, timeouts
    and 502/503/504 up to 3 times before the backend sees them.
    """
    if api_key and (username or password):
        raise ConfigurationError("give Elasticsearch either an API key or a username and password, not both")
    if (username is None) != (password is None):
        raise ConfigurationError("Elasticsearch basic auth needs both a username and a password")
    kwargs: dict[str, Any] = {
        "request_timeout": request_timeout,
        "verify_certs": verify_certs,
        "retry_on_timeout": True,
        "max_retries": 3,
    }
    if api_key:
        kwargs["api_key"] = api_key
    if username is not None and password is not None:
        kwargs["basic_auth"] = (username, password)
    if ca_certs:
        kwargs["ca_certs"] = ca_certs
    return Elasticsearch(url, **kwargs)


# -- the backend -------------------------------------------------------------------------
def _is_retriever_refusal(error: TransportApiError) -> bool:
    """A licence (403 ``license``) or version (400 unknown retriever) refusal of the retriever API."""
    status = _status_of(error)
    text = _describe(error.body, 2000).lower()
    if status == 403 and "licen" in text:
        return True
    return status == 400 and "retriever" in text and ("unknown" in text or "parsing" in text or "not supported" in text)


class ElasticsearchBackend:
    """The Elasticsearch implementation of :class:`~clipfuse.plugin.protocol.Backend`.

    ``client``: the caller's ``Elasticsearch`` (elasticsearch-py 8.x for an 8.x
    cluster, 9.x for a 9.x cluster). ``refresh``: the ``refresh`` parameter of writes
    (``False``: visible after the next refresh, about 1 s; ``"wait_for"``: the write
    returns once searchable; ``True``: force a refresh, for tests only).
    ``server_side_fusion``: also ask Elasticsearch for its fused ranking where it
    computes the same fusion (needs an Enterprise / trial licence).
    """

    name = "elasticsearch"
    lexical: Literal["sparse", "native"] = "native"

    def __init__(
        self,
        client: Elasticsearch,
        index: str,
        *,
        vector_index_type: VectorIndexType = "int8_hnsw",
        server_side_fusion: bool = False,
        refresh: bool | str = False,
        exclude_vectors_from_source: bool = True,
        chunk_size: int = 500,
        max_retries: int = 3,
        initial_backoff: float = 2.0,
        max_backoff: float = 60.0,
    ) -> None:
        if vector_index_type not in VECTOR_INDEX_TYPES:
            raise ConfigurationError(
                f"unknown vector index type {vector_index_type!r}; choose one of {', '.join(VECTOR_INDEX_TYPES)}"
            )
        if refresh not in (True, False, "true", "false", "wait_for"):
            raise ConfigurationError(f"refresh must be True, False or 'wait_for', got {refresh!r}")
        self.client = client
        self.index = index
        self.vector_index_type: VectorIndexType = vector_index_type
        self.server_side_fusion = server_side_fusion
        self.refresh = refresh
        self.exclude_vectors_from_source = exclude_vectors_from_source
        self.chunk_size = chunk_size
        self.max_retries = max_retries
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self._info: IndexInfo | None = None
        self._raw_meta: dict[str, Any] = {}
        #: False for a backend made by :meth:`open_index`: closing it leaves the shared client open
        self.owns_client = True
        #: set when the cluster refused the retriever API (licence / version): fuse client-side from then on
        self.server_fusion_refused: str | None = None

    def _bulk(self, actions: list[dict[str, Any]], what: str) -> Iterator[dict[str, Any]]:
        """Send ``actions`` with the bulk helper; yield the per-item results that failed.

        Items refused with 429 (and 502/503/504 where the helper can retry them) are
        retried with exponential backoff (``initial_backoff`` doubling up to
        ``max_backoff``, ``max_retries`` times) before they are yielded; a whole
        request failing that way is retried too, then raised as retryable.
        """
        options: dict[str, Any] = {
            "chunk_size": self.chunk_size,
            "raise_on_error": False,
            "raise_on_exception": True,
            "max_retries": self.max_retries,
            "initial_backoff": self.initial_backoff,
            "max_backoff": self.max_backoff,
            "yield_ok": False,
            **self._write_params(),
        }
        if _BULK_RETRY_ON_STATUS:  # elasticsearch-py 8.16+; older clients retry 429 only
            options["retry_on_status"] = _UNAVAILABLE_STATUS
        with _errors(f"{what} in {self.index!r}"):
            for ok, item in helpers.streaming_bulk(self.client, actions, **options):
                if not ok:
                    yield dict(next(iter(item.values())))

    def _write_params(self) -> dict[str, Any]:
        """Keyword arguments the bulk helper passes on to ``client.bulk``: the index (URL) and ``refresh``."""
        params: dict[str, Any] = {"index": self.index}
        if self.refresh not in (False, "false"):
            params["refresh"] = self.refresh
        return params

    # -- schema --------------------------------------------------------------------
    def _mapping(self) -> dict[str, Any] | None:
        """The index's mappings, or None if it does not exist."""
        with _errors(f"reading the mapping of {self.index!r}"):
            try:
                response = self.client.indices.get_mapping(index=self.index)
            except TransportApiError as e:
                if _status_of(e) == 404:
                    return None
                raise
        body = dict(response.body) if hasattr(response, "body") else dict(response)
        if not body:
            return None
        # keyed by the concrete index name (the name may be an alias)
        first = next(iter(body.values()))
        return dict(first.get("mappings") or {})

    def index_info(self) -> IndexInfo | None:
        mappings = self._mapping()
        if mappings is None:
            return None
        properties = mappings.get("properties") or {}
        vector = properties.get(IMAGE_FIELD) or {}
        if vector.get("type") != "dense_vector" or "dims" not in vector:
            raise ConfigurationError(
                f"index {self.index!r} exists but was not made by clipfuse (no dense_vector field "
                f"{IMAGE_FIELD!r} with dims); choose another index name (CLIPFUSE_INDEX)"
            )
        dim = int(vector["dims"])
        self._raw_meta = dict(mappings.get("_meta") or {})
        meta = self._raw_meta.get(_META_KEY)
        meta = meta if isinstance(meta, Mapping) else {}
        fields: dict[str, FieldType] = dict(meta.get("fields") or {})
        # the mapping is authoritative (put_mapping merges server-side; _meta is last-writer-wins)
        for name, spec in properties.items():
            kind = _FIELD_TYPE_OF_MAPPING.get(str((spec or {}).get("type")))
            if name not in RESERVED_FIELDS and kind is not None:
                fields[name] = kind
        info = IndexInfo(dim=dim, model=meta.get("model"), fields=fields)
        self._info = info
        return info

    def ensure_schema(self, *, dim: int, model: str | None) -> None:
        info = self.index_info()
        if info is not None:
            info.check_compatible(dim=dim, model=model, name=self.index, kind="index")
            return
        body = build_index_body(
            dim, model, self.vector_index_type, exclude_vectors_from_source=self.exclude_vectors_from_source
        )
        with _errors(f"creating index {self.index!r}"):
            try:
                self.client.indices.create(index=self.index, mappings=body["mappings"], settings=body["settings"])
            except TransportApiError as e:
                if _status_of(e) != 400 or "resource_already_exists_exception" not in _describe(e.body):
                    raise
                # another worker created it first: check it is ours and compatible
                log.info("index %r was created concurrently; checking its mapping", self.index)
                raced = self.index_info()
                if raced is None:  # pragma: no cover - deleted again in between
                    raise
                raced.check_compatible(dim=dim, model=model, name=self.index, kind="index")
                return
        self._info = IndexInfo(dim=dim, model=model, fields={})

    def register_fields(self, fields: Mapping[str, FieldType]) -> None:
        info = self.index_info()  # fresh: other workers may have registered fields meanwhile
        if info is None:
            raise ConfigurationError(f"index {self.index!r} does not exist; index documents first")
        # clipfuse's own fields keep their mapping; documents using these names are refused by upsert
        new = {k: v for k, v in fields.items() if k not in info.fields and k not in RESERVED_FIELDS}
        if not new:
            return
        merged = {**info.fields, **new}
        # put_mapping replaces _meta as a whole: keep the alias record that may sit next to clipfuse's
        meta: dict[str, Any] = {k: v for k, v in self._raw_meta.items() if k != _META_KEY}
        meta[_META_KEY] = {"version": _SCHEMA_VERSION, "model": info.model, "dim": info.dim, "fields": merged}
        with _errors(f"registering fields of {self.index!r}"):
            self.client.indices.put_mapping(index=self.index, properties=build_field_mappings(new), meta=meta)
        self._info = IndexInfo(dim=info.dim, model=info.model, fields=merged)

    # -- writes --------------------------------------------------------------------
    def _refusal(self, doc: IndexedDocument, dim: int) -> str | None:
        """Why this document cannot be sent (checked before sending), or None."""
        if len(doc.id.encode("utf-8")) > MAX_ID_BYTES:
            return f"id is {len(doc.id.encode('utf-8'))} bytes in UTF-8; Elasticsearch ids are at most {MAX_ID_BYTES}"
        reserved = sorted(k for k in doc.payload if k in (*VECTOR_FIELDS, "doc_id"))
        if reserved:
            return f"payload keys {reserved} are reserved by the Elasticsearch backend"
        for name, vec in (("image", doc.image_vector), ("text", doc.text_vector)):
            if vec is None:
                continue
            arr = np.asarray(vec)
            if arr.shape != (dim,):
                return f"{name} vector has {arr.size} dimensions (shape {tuple(arr.shape)}); the index expects {dim}"
            if not np.all(np.isfinite(arr)):
                return f"{name} vector has non-finite values"
            if not float(np.abs(arr).max(initial=0.0)) > 0.0:
                return f"{name} vector is all zeros; cosine similarity is undefined for it"
        return None

    def upsert(self, documents: Sequence[IndexedDocument]) -> dict[str, str]:
        info = self._info or self.index_info()
        if info is None:
            raise ConfigurationError(f"index {self.index!r} does not exist; call ensure_schema first")
        failures: dict[str, str] = {}
        ready = []
        for doc in documents:
            reason = self._refusal(doc, info.dim)
            if reason is not None:
                failures[doc.id] = reason
            else:
                ready.append(doc)
        if not ready:
            return failures
        unavailable: list[str] = []
        for result in self._bulk(build_bulk_actions(ready, self.index), f"indexing {len(ready)} documents"):
            doc_id = str(result.get("_id"))
            status = int(result.get("status", 500))
            if status in _UNAVAILABLE_STATUS:
                unavailable.append(f"{doc_id}: {status} {_describe(result.get('error', ''), 200)}")
            else:
                failures[doc_id] = _describe(result.get("error", f"HTTP {status}"))
        if unavailable:
            raise BackendUnavailable(
                f"Elasticsearch could not take {len(unavailable)} documents after {self.max_retries} retries "
                f"(e.g. {unavailable[0]}); retry later"
            )
        return failures

    def delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        problems: list[str] = []
        unavailable = False
        for result in self._bulk(build_bulk_delete_actions(ids, self.index), f"deleting {len(ids)} documents"):
            status = int(result.get("status", 500))
            if status == 404:  # already gone: deleting is idempotent
                continue
            unavailable = unavailable or status in _UNAVAILABLE_STATUS
            problems.append(f"{result.get('_id')}: {status} {_describe(result.get('error', ''), 200)}")
        if problems:
            error = BackendUnavailable if unavailable else BackendError
            raise error(f"Elasticsearch did not delete {len(problems)} documents (e.g. {problems[0]})")

    def count(self) -> int:
        """Documents visible to search (written with ``refresh=False``: after the next refresh)."""
        with _errors(f"counting {self.index!r}"):
            try:
                response = self.client.count(index=self.index)
            except TransportApiError as e:
                if _status_of(e) == 404:
                    return 0
                raise
        return int(response["count"])

    # -- reads ---------------------------------------------------------------------
    @staticmethod
    def _ranked(
        response: Mapping[str, Any], retriever: Retriever | None, payloads: dict[str, dict[str, Any]]
    ) -> list[Ranked]:
        ranked = []
        for hit in (response.get("hits") or {}).get("hits") or []:
            doc_id = str(hit["_id"])
            score = float(hit.get("_score") or 0.0)
            if retriever is not None and retriever.signal != "bm25":
                # cosine _score is (1 + cos) / 2; report the cosine itself, as Qdrant does
                score = 2.0 * score - 1.0
            source = dict(hit.get("_source") or {})
            for key in ("doc_id", *VECTOR_FIELDS):
                source.pop(key, None)
            payloads.setdefault(doc_id, source)
            ranked.append(Ranked(doc_id, score))
        return ranked

    def search(self, query: HybridQuery) -> BackendResult:
        searches = build_msearch(query, self.index)
        with _errors(f"searching {self.index!r}"):
            response = self.client.msearch(index=self.index, searches=searches)
        responses = list(response["responses"])
        if len(responses) != len(query.retrievers):
            raise BackendError(f"Elasticsearch answered {len(responses)} searches for {len(query.retrievers)} sent")
        payloads: dict[str, dict[str, Any]] = {}
        lists = []
        for retriever, item in zip(query.retrievers, responses, strict=True):
            _check_response(item, f"searching {self.index!r} ({retriever.signal})")
            lists.append(self._ranked(item, retriever, payloads))
        fused = self._server_fused(query, payloads) if self.server_side_fusion else None
        return BackendResult(lists=lists, fused=fused, payloads=payloads)

    def _server_fused(self, query: HybridQuery, payloads: dict[str, dict[str, Any]]) -> list[Ranked] | None:
        """Elasticsearch's own fused ranking, or None (unsupported fusion, or the cluster refuses retrievers)."""
        if self.server_fusion_refused is not None:
            return None
        body = build_retriever_search(query, self.index)
        if body is None:
            log.debug("fusing client-side: %s", server_fusion_unsupported_reason(query))
            return None
        with _errors(f"searching {self.index!r} with the {query.fusion} retriever"):
            try:
                response = self.client.search(index=self.index, body=body)
            except TransportApiError as e:
                if not _is_retriever_refusal(e):
                    raise
                self.server_fusion_refused = _describe(e.body)
                log.warning(
                    "Elasticsearch refused the %s retriever (%s); fusing client-side from now on",
                    query.fusion,
                    self.server_fusion_refused,
                )
                return None
        return self._ranked(response.body, None, payloads)

    def fetch(self, ids: Sequence[str], fields: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Payloads by ``_id`` with one ``mget`` (``fields``: only those keys); missing ids are left out."""
        if not ids:
            return {}
        with _errors(f"reading documents from {self.index!r}"):
            response = self.client.mget(index=self.index, docs=build_mget(ids, fields)["docs"])
        out: dict[str, dict[str, Any]] = {}
        for doc in response["docs"]:
            if not doc.get("found"):
                continue
            source = dict(doc.get("_source") or {})
            for key in ("doc_id", *VECTOR_FIELDS):
                source.pop(key, None)
            out[str(doc["_id"])] = source
        return out

    # -- facets (capability Facetable) ---------------------------------------------------
    def field_values(self, fields: Mapping[str, FieldType], *, sample: int, max_values: int) -> FieldValues:
        """One aggregation request (``terms`` per keyword / bool field, ``min`` / ``max`` per number field);
        the types only when the cluster refuses it (an old cluster, a mapping clipfuse did not make)."""
        body = build_field_values_aggs(fields, max_values=max_values)
        try:
            with _errors(f"aggregating the field values of {self.index!r}"):
                response = self.client.search(index=self.index, size=0, aggs=body, track_total_hits=False)
            return FieldValues(parse_field_values(response["aggregations"], fields), "engine")
        except BackendUnavailable:
            raise
        except (BackendError, KeyError, TypeError) as e:
            log.warning("facet aggregation on Elasticsearch failed: %s", e)
            return FieldValues.types_only(fields)

    def count_facets(self, query: FacetQuery) -> FacetCounts:
        """Exact counts over the matches: one ``_search`` with aggregations (:func:`build_facet_search`)."""
        with _errors(f"counting facets of {self.index!r}"):
            response = self.client.search(index=self.index, body=build_facet_search(query))
        return parse_facet_search(response.body, query)

    # -- aliases (capability Aliased) -------------------------------------------------------
    def _meta_of(self, index: str) -> dict[str, Any]:
        with _errors(f"reading the mapping of {index!r}"):
            response = self.client.indices.get_mapping(index=index)
        body = dict(response.body) if hasattr(response, "body") else dict(response)
        first: dict[str, Any] = next(iter(body.values()), {}) if body else {}
        return dict((first.get("mappings") or {}).get("_meta") or {})

    def read_alias(self, alias: str) -> AliasRecord | None:
        with _errors(f"reading alias {alias!r}"):
            try:
                response = self.client.indices.get_alias(name=alias)
            except TransportApiError as e:
                if _status_of(e) == 404:
                    return None
                raise
        body = dict(response.body) if hasattr(response, "body") else dict(response)
        targets = sorted(body)
        if not targets:
            return None
        if len(targets) > 1:  # several indexes behind the alias: the write index is the target
            writers = [t for t in targets if (body[t].get("aliases") or {}).get(alias, {}).get("is_write_index")]
            if len(writers) != 1:
                raise ConfigurationError(
                    f"alias {alias!r} points at {len(targets)} indexes ({', '.join(targets[:5])}) and none is its "
                    "only write index: clipfuse needs one target per alias"
                )
            targets = writers
        target = targets[0]
        stored = self._meta_of(target).get(_ALIAS_KEY)
        if isinstance(stored, Mapping) and stored.get("alias") == alias and stored.get("target") == target:
            return AliasRecord.from_json(stored)
        return AliasRecord(alias=alias, target=target)

    def write_alias(self, record: AliasRecord) -> None:
        current = self.read_alias(record.alias)
        meta = self._meta_of(record.target)
        meta[_ALIAS_KEY] = record.to_json()
        with _errors(f"moving alias {record.alias!r} to {record.target!r}"):
            # the record first, on the index the alias will point at (put_mapping replaces _meta whole)
            self.client.indices.put_mapping(index=record.target, meta=meta)
            if current is None or current.target != record.target:
                body = build_alias_actions(record.alias, record.target, current.target if current else None)
                self.client.indices.update_aliases(actions=body["actions"])

    def index_exists(self, name: str) -> bool:
        with _errors(f"looking up index {name!r}"):
            try:
                response = self.client.indices.get(index=name)
            except TransportApiError as e:
                if _status_of(e) == 404:
                    return False
                raise
        body = dict(response.body) if hasattr(response, "body") else dict(response)
        return name in body  # an alias answers with its indexes' names

    def open_index(self, name: str) -> ElasticsearchBackend:
        backend = ElasticsearchBackend(
            self.client,
            name,
            vector_index_type=self.vector_index_type,
            server_side_fusion=self.server_side_fusion,
            refresh=self.refresh,
            exclude_vectors_from_source=self.exclude_vectors_from_source,
            chunk_size=self.chunk_size,
            max_retries=self.max_retries,
            initial_backoff=self.initial_backoff,
            max_backoff=self.max_backoff,
        )
        backend.owns_client = False
        return backend

    def drop_index(self, name: str) -> None:
        with _errors(f"deleting index {name!r}"):
            self.client.indices.delete(index=name)

    def adopt(self, name: str, physical: str) -> None:
        """Clone the plain index ``name`` into ``physical`` and replace ``name`` by an alias to it, atomically.

        Writes to ``name`` are blocked while it is cloned (``_clone`` needs a read-only source;
        it hard-links segments, so this takes seconds, not a re-index); writers retry meanwhile.
        """
        if self.read_alias(name) is not None:
            return
        with _errors(f"adopting index {name!r} as {physical!r}"):
            self.client.indices.put_settings(index=name, settings={"index.blocks.write": True})
            try:
                self.client.indices.clone(index=name, target=physical, wait_for_active_shards="1")
                self.client.indices.put_settings(index=physical, settings={"index.blocks.write": False})
                self.client.indices.update_aliases(actions=build_adopt_actions(name, physical)["actions"])
            except BaseException:
                with contextlib.suppress(Exception):
                    self.client.indices.put_settings(index=name, settings={"index.blocks.write": False})
                raise

    # -- reading documents back (capability Scrollable) -------------------------------------
    def scroll_payloads(self, offset: Any, limit: int) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
        body: dict[str, Any] = {"size": limit, "sort": [{"doc_id": "asc"}], "_source": _source_filter()}
        if offset is not None:
            body["search_after"] = [offset]
        with _errors(f"reading documents from {self.index!r}"):
            response = self.client.search(index=self.index, body=body)
        hits = (response.get("hits") or {}).get("hits") or []
        out = []
        for hit in hits:
            source = dict(hit.get("_source") or {})
            for key in ("doc_id", *VECTOR_FIELDS):
                source.pop(key, None)
            out.append((str(hit["_id"]), source))
        return out, (str(hits[-1]["_id"]) if len(hits) == limit else None)

    def get_payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return self.fetch(ids)

    def close(self) -> None:
        if self.owns_client:
            self.client.close()

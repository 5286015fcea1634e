"""The filter semantics, as one table: filter -> the ids that pass, on every engine.

Each row is a checked filter (values typed as :func:`clipfuse.plugin.filters.resolve_filters`
types them, or a filter tree) over the contract catalog, the ids expected to pass, and the
Elasticsearch filter clauses clipfuse sends for it. The same table runs on qdrant-client's
local mode (or a server with ``QDRANT_URL``), on Qdrant Edge, on the pure payload evaluator
that boosts and pins use (:func:`clipfuse.plugin.ranking.payload_matches_tree`), and, for
Elasticsearch, as the exact request bodies (``ELASTICSEARCH_URL`` runs them live in
``test_elasticsearch_live.py``). The semantics are written down in
:mod:`clipfuse.plugin.qdrant_dialect`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from backend_contract import CATALOG, DIM, FIELDS, indexed, unit

from clipfuse.plugin.elasticsearch import build_filter, build_msearch
from clipfuse.plugin.protocol import Backend, HybridQuery, IndexedDocument, Retriever
from clipfuse.plugin.ranking import payload_matches_tree
from clipfuse.schemas import FilterCondition, FilterGroup

#: two more documents: a whole number stored as an int, and a field holding a keyword in one
#: document and a number in another (what an unchecked rule filter may meet)
EXTRA: list[dict[str, Any]] = [
    {
        "id": "sock-int",
        "v": unit(0, 0, 0, 1),
        "t": "grey wool socks",
        "a": {"category": "accessories", "color": "grey", "price": 110, "in_stock": True, "code": "7"},
    },
    {
        "id": "belt-num",
        "v": unit(0, 0, 0, 0, 1),
        "t": "brown leather belt",
        "a": {"category": "accessories", "color": "brown", "price": 45.0, "in_stock": True, "code": 7},
    },
]
DOCS = [*CATALOG, *EXTRA]
ALL = {e["id"] for e in DOCS}


def C(field: str, op: str, value: Any) -> FilterCondition:
    return FilterCondition(field=field, op=op, value=value)  # type: ignore[arg-type]


class Row(NamedTuple):
    name: str
    filters: tuple[FilterCondition, ...]
    where: FilterGroup | None
    expected: set[str]
    #: the filter clauses Elasticsearch gets (knn.filter / bool.filter)
    es: list[dict[str, Any]]


TABLE: list[Row] = [
    # keyword
    Row("keyword eq", (C("color", "eq", "red"),), None, {"boot-red", "sneaker-red", "bag-red"},
        [{"term": {"color": "red"}}]),
    Row("keyword ne passes a missing field", (C("group_id", "ne", "boot-1"),), None,
        ALL - {"boot-red", "boot-black"}, [{"bool": {"must_not": [{"term": {"group_id": "boot-1"}}]}}]),
    Row("keyword in", (C("color", "in", ["black", "blue"]),), None, {"boot-black", "tee-blue", "scarf-blue"},
        [{"terms": {"color": ["black", "blue"]}}]),
    Row("keyword nin", (C("color", "nin", ["red", "blue"]),), None, {"boot-black", "sock-int", "belt-num"},
        [{"bool": {"must_not": [{"terms": {"color": ["red", "blue"]}}]}}]),
    Row("keyword eq on a missing field matches nothing there", (C("group_id", "eq", "tee-1"),), None, {"tee-blue"},
        [{"term": {"group_id": "tee-1"}}]),
    # list attributes: any item
    Row("list eq: any item", (C("sizes", "eq", "39"),), None, {"boot-red", "boot-black"},
        [{"term": {"sizes": "39"}}]),
    Row("list in: any item", (C("sizes", "in", ["S", "40"]),), None, {"boot-black", "tee-blue"},
        [{"terms": {"sizes": ["S", "40"]}}]),
    Row("list ne: no item", (C("sizes", "ne", "38"),), None, ALL - {"boot-red", "sneaker-red"},
        [{"bool": {"must_not": [{"term": {"sizes": "38"}}]}}]),
    # numbers: whole-number floats and ints alike
    Row("number eq, whole-number float", (C("price", "eq", 110.0),), None, {"boot-red", "sock-int"},
        [{"term": {"price": 110.0}}]),
    Row("number eq, int", (C("price", "eq", 110),), None, {"boot-red", "sock-int"}, [{"term": {"price": 110}}]),
    Row("number eq, fraction", (C("price", "eq", 35.5),), None, {"scarf-blue"}, [{"term": {"price": 35.5}}]),
    Row("number ne", (C("price", "ne", 110.0),), None, ALL - {"boot-red", "sock-int"},
        [{"bool": {"must_not": [{"term": {"price": 110.0}}]}}]),
    Row("number in, ints and floats", (C("price", "in", [20, 35.5, 130.0]),), None,
        {"tee-blue", "scarf-blue", "boot-black"}, [{"terms": {"price": [20, 35.5, 130.0]}}]),
    Row("number nin", (C("price", "nin", [110, 45]),), None, ALL - {"boot-red", "sock-int", "belt-num"},
        [{"bool": {"must_not": [{"terms": {"price": [110, 45]}}]}}]),
    Row("range lt", (C("price", "lt", 45),), None, {"tee-blue", "scarf-blue"}, [{"range": {"price": {"lt": 45}}}]),
    Row("range lte", (C("price", "lte", 45),), None, {"tee-blue", "scarf-blue", "belt-num"},
        [{"range": {"price": {"lte": 45}}}]),
    Row("range gt", (C("price", "gt", 110),), None, {"boot-black"}, [{"range": {"price": {"gt": 110}}}]),
    Row("range gte", (C("price", "gte", 110.0),), None, {"boot-red", "boot-black", "sock-int"},
        [{"range": {"price": {"gte": 110.0}}}]),
    Row("range on a missing field", (C("popularity", "gt", 100),), None, {"boot-black", "tee-blue"},
        [{"range": {"popularity": {"gt": 100}}}]),
    # bools
    Row("bool eq false", (C("in_stock", "eq", False),), None, {"sneaker-red", "scarf-blue"},
        [{"term": {"in_stock": False}}]),
    Row("bool ne true", (C("in_stock", "ne", True),), None, {"sneaker-red", "scarf-blue"},
        [{"bool": {"must_not": [{"term": {"in_stock": True}}]}}]),
    Row("bool in", (C("in_stock", "in", [False]),), None, {"sneaker-red", "scarf-blue"},
        [{"terms": {"in_stock": [False]}}]),
    Row("bool in both", (C("in_stock", "in", [True, False]),), None, ALL, [{"terms": {"in_stock": [True, False]}}]),
    # a mixed-type in: each value matches as its own type
    Row("mixed in: keyword and number", (C("code", "in", ["7", 3]),), None, {"sock-int"},
        [{"terms": {"code": ["7", 3]}}]),
    Row("mixed in: number finds the number", (C("code", "in", [7, "x"]),), None, {"belt-num"},
        [{"terms": {"code": [7, "x"]}}]),
    # several conditions: AND
    Row("AND across fields", (C("category", "eq", "shoes"), C("price", "lt", 100), C("color", "ne", "blue")), None,
        {"sneaker-red"},
        [{"term": {"category": "shoes"}}, {"range": {"price": {"lt": 100}}},
         {"bool": {"must_not": [{"term": {"color": "blue"}}]}}]),
    # filter trees: cross-field OR, NOT of a group, nesting
    Row("tree: cross-field OR", (), FilterGroup(any=[C("category", "eq", "bags"), C("color", "eq", "blue")]),
        {"bag-red", "tee-blue", "scarf-blue"},
        [{"bool": {"should": [{"term": {"category": "bags"}}, {"term": {"color": "blue"}}],
                   "minimum_should_match": 1}}]),
    Row("tree: NOT of an AND", (), FilterGroup(none=[FilterGroup(all=[C("category", "eq", "shoes"),
                                                                    C("color", "eq", "red")])]),
        ALL - {"boot-red", "sneaker-red"},
        [{"bool": {"must_not": [{"bool": {"filter": [{"term": {"category": "shoes"}},
                                                     {"term": {"color": "red"}}]}}]}}]),
    Row("tree: OR with a negated item", (), FilterGroup(any=[C("price", "gt", 120), C("in_stock", "ne", True)]),
        {"boot-black", "sneaker-red", "scarf-blue"},
        [{"bool": {"should": [{"range": {"price": {"gt": 120}}},
                              {"bool": {"must_not": [{"term": {"in_stock": True}}]}}],
                   "minimum_should_match": 1}}]),
    Row("tree AND flat filters, nested OR of ANDs", (C("in_stock", "eq", True),),
        FilterGroup(any=[FilterGroup(all=[C("category", "eq", "shoes"), C("price", "gte", 120)]),
                         FilterGroup(all=[C("sizes", "in", ["S"]), C("tags", "eq", "summer")])]),
        {"boot-black", "tee-blue"},
        [{"term": {"in_stock": True}},
         {"bool": {"should": [{"bool": {"filter": [{"term": {"category": "shoes"}},
                                                   {"range": {"price": {"gte": 120}}}]}},
                              {"bool": {"filter": [{"terms": {"sizes": ["S"]}}, {"term": {"tags": "summer"}}]}}],
                   "minimum_should_match": 1}}]),
]  # fmt: skip

IDS = [row.name for row in TABLE]


def _query(row: Row) -> HybridQuery:
    return HybridQuery(
        retrievers=(Retriever("image", 1.0, dense=unit(1, 1, 1, 1, 1)),),
        filters=row.filters,
        fusion="rrf",
        rrf_k=60,
        limit=50,
        candidates=50,  # more than the catalog: every passing document is a candidate
        where=row.where,
    )


def _load(backend: Backend) -> Backend:
    backend.ensure_schema(dim=DIM, model="semantics")
    backend.register_fields({**FIELDS, "code": "keyword"})  # type: ignore[arg-type]
    docs: list[IndexedDocument] = [indexed(e, backend) for e in DOCS]
    assert backend.upsert(docs) == {}
    return backend


def _passing(backend: Backend, row: Row) -> set[str]:
    return {r.id for r in backend.search(_query(row)).lists[0]}


@pytest.fixture(scope="module")
def qdrant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    import os
    import uuid

    from qdrant_client import QdrantClient

    from clipfuse.plugin.qdrant import QdrantBackend

    url = os.environ.get("QDRANT_URL")
    if url:
        client = QdrantClient(url=url, api_key=os.environ.get("QDRANT_API_KEY"))
    else:
        client = QdrantClient(path=str(tmp_path_factory.mktemp("semantics-qdrant")))
    name = f"semantics-{uuid.uuid4().hex[:10]}"
    backend = _load(QdrantBackend(client, name))
    yield backend
    if url:
        client.delete_collection(name)
    backend.close()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    from clipfuse.plugin.edge import EdgeBackend

    backend = EdgeBackend(Path(tmp_path_factory.mktemp("semantics-edge")), "semantics")
    yield _load(backend)
    backend.close()


@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_payload_evaluator(row: Row) -> None:
    """The evaluator boosts, rules and pins use agrees with the table."""
    tree = FilterGroup(all=[*row.filters, *([row.where] if row.where else [])])
    assert {e["id"] for e in DOCS if payload_matches_tree(e["a"], tree)} == row.expected


@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_qdrant(qdrant: Backend, row: Row) -> None:
    assert _passing(qdrant, row) == row.expected


@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_edge(edge: Backend, row: Row) -> None:
    assert _passing(edge, row) == row.expected


@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_elasticsearch_request_bodies(row: Row) -> None:
    assert build_filter(row.filters, row.where) == row.es
    query = _query(row)
    knn_header, knn_body = build_msearch(query, "products")
    assert knn_header == {"index": "products"} and knn_body["knn"]["filter"] == row.es
    lexical = HybridQuery(
        retrievers=(Retriever("bm25", 1.0, text="boots"),),
        filters=row.filters,
        fusion="rrf",
        rrf_k=60,
        limit=10,
        candidates=10,
        where=row.where,
    )
    assert build_msearch(lexical, "products")[1]["query"]["bool"]["filter"] == row.es


def test_the_table_covers_each_operator_and_value_type() -> None:
    seen = {
        (c.op, type(c.value[0] if isinstance(c.value, list) else c.value).__name__) for r in TABLE for c in r.filters
    }
    required = {
        *(("eq", t) for t in ("str", "bool", "float", "int")),
        *(("ne", t) for t in ("str", "bool", "float")),
        *(("in", t) for t in ("str", "bool", "int")),
        *(("nin", t) for t in ("str", "int")),
        *((op, "int") for op in ("lt", "lte", "gt")),
        ("gte", "float"),
    }
    assert required <= seen, required - seen
    assert sum(r.where is not None for r in TABLE) >= 4

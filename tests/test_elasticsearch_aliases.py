"""Elasticsearch aliases at the request level: the exact ``_aliases`` / ``_mapping`` / ``_clone`` bodies.

Through a real ``elasticsearch.Elasticsearch`` whose node records requests and answers
from a script (``FakeCluster`` of ``test_elasticsearch_requests``); the live suite runs
the same operations against a cluster when ``ELASTICSEARCH_URL`` is set.
"""

from __future__ import annotations

import pytest
from test_elasticsearch_requests import INDEX, FakeCluster, backend_on, error_body, mapping_response

from clipfuse.plugin.elasticsearch import build_adopt_actions, build_alias_actions, build_index_body, build_mget
from clipfuse.plugin.protocol import Aliased, AliasRecord, Scrollable


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


def test_alias_bodies_are_exact() -> None:
    assert build_alias_actions("products", "products--b", "products--a") == {
        "actions": [
            {"remove": {"index": "products--a", "alias": "products"}},
            {"add": {"index": "products--b", "alias": "products", "is_write_index": True}},
        ]
    }
    assert build_alias_actions("products", "products--a", None) == {
        "actions": [{"add": {"index": "products--a", "alias": "products", "is_write_index": True}}]
    }
    assert build_adopt_actions("products", "products--a") == {
        "actions": [
            {"remove_index": {"index": "products"}},
            {"add": {"index": "products--a", "alias": "products", "is_write_index": True}},
        ]
    }


def _mapping_of(index: str, meta_extra: dict | None = None) -> dict:
    body = build_index_body(4, "m1", "int8_hnsw")
    mappings = body["mappings"]
    mappings["_meta"].update(meta_extra or {})
    return {index: {"mappings": mappings}}


def test_read_alias_and_its_record(cluster: FakeCluster) -> None:
    backend = backend_on(cluster)
    assert isinstance(backend, Aliased) and isinstance(backend, Scrollable)
    record = {"alias": INDEX, "target": "products--a", "previous": "products--z", "building": None}
    cluster.script = [
        (200, {"products--a": {"aliases": {INDEX: {"is_write_index": True}}}}),
        (200, _mapping_of("products--a", {"clipfuse_alias": record})),
    ]
    assert backend.read_alias(INDEX) == AliasRecord(INDEX, "products--a", previous="products--z")
    assert [(c.method, c.path) for c in cluster.calls] == [
        ("GET", "/_alias/products"),
        ("GET", "/products--a/_mapping"),
    ]
    cluster.calls.clear()
    cluster.script = [(404, error_body(404, "aliases_not_found_exception", "aliases [products] missing"))]
    assert backend.read_alias(INDEX) is None


def test_write_alias_stores_the_record_then_moves_the_alias_in_one_request(cluster: FakeCluster) -> None:
    backend = backend_on(cluster)
    cluster.script = [
        (200, {"products--a": {"aliases": {INDEX: {"is_write_index": True}}}}),  # current alias
        (200, _mapping_of("products--a")),  # its record (none)
        (200, _mapping_of("products--b")),  # the new target's _meta, kept whole
        (200, {"acknowledged": True}),  # put_mapping
        (200, {"acknowledged": True}),  # _aliases
    ]
    backend.write_alias(AliasRecord(INDEX, "products--b", previous="products--a"))
    put, move = cluster.calls[3], cluster.calls[4]
    assert (put.method, put.path) == ("PUT", "/products--b/_mapping")
    assert put.body["_meta"]["clipfuse_alias"] == {
        "alias": INDEX,
        "target": "products--b",
        "previous": "products--a",
        "building": None,
    }
    assert put.body["_meta"]["clipfuse"]["model"] == "m1"  # clipfuse's own record survives the put
    assert (move.method, move.path) == ("POST", "/_aliases")
    assert move.body == build_alias_actions(INDEX, "products--b", "products--a")


def test_adopt_clones_and_swaps_atomically(cluster: FakeCluster) -> None:
    backend = backend_on(cluster)
    ok = (200, {"acknowledged": True})
    cluster.script = [
        (404, error_body(404, "aliases_not_found_exception", "missing")),
        ok,  # block writes
        (200, {"acknowledged": True, "shards_acknowledged": True, "index": "products--a"}),  # clone
        ok,  # unblock the clone
        ok,  # _aliases
    ]
    backend.adopt(INDEX, "products--a")
    calls = [(c.method, c.path, c.body) for c in cluster.calls[1:]]
    assert calls[0] == ("PUT", "/products/_settings", {"index.blocks.write": True})
    assert calls[1][:2] == ("PUT", "/products/_clone/products--a")
    assert calls[2] == ("PUT", "/products--a/_settings", {"index.blocks.write": False})
    assert calls[3] == ("POST", "/_aliases", build_adopt_actions(INDEX, "products--a"))


def test_scroll_and_get_payloads(cluster: FakeCluster) -> None:
    backend = backend_on(cluster)
    hits = [
        {"_id": "a", "_source": {"doc_id": "a", "title": "A"}, "sort": ["a"]},
        {"_id": "b", "_source": {"doc_id": "b", "title": "B"}, "sort": ["b"]},
    ]
    cluster.script = [
        (200, {"hits": {"hits": hits}}),
        (
            200,
            {
                "docs": [
                    {"_id": "a", "found": True, "_source": {"doc_id": "a", "title": "A"}},
                    {"_id": "x", "found": False},
                ]
            },
        ),
    ]
    page, offset = backend.scroll_payloads("0", 2)
    assert page == [("a", {"title": "A"}), ("b", {"title": "B"})] and offset == "b"
    search = cluster.calls[0]
    assert search.body == {
        "size": 2,
        "sort": [{"doc_id": "asc"}],
        "_source": {"excludes": ["image_vector", "text_vector"]},
        "search_after": ["0"],
    }
    assert backend.get_payloads(["a", "x"]) == {"a": {"title": "A"}}
    assert cluster.calls[1].path == "/products/_mget"
    assert cluster.calls[1].body == build_mget(["a", "x"])


def test_register_fields_keeps_the_alias_record(cluster: FakeCluster) -> None:
    backend = backend_on(cluster)
    record = {"alias": "products", "target": INDEX, "previous": None, "building": "products--b"}
    answer = mapping_response()
    answer[INDEX]["mappings"]["_meta"]["clipfuse_alias"] = record
    cluster.script = [(200, answer), (200, {"acknowledged": True})]
    backend.register_fields({"color": "keyword"})
    put = cluster.calls[1]
    assert put.body["_meta"]["clipfuse_alias"] == record
    assert put.body["_meta"]["clipfuse"]["fields"] == {"color": "keyword"}

"""The Algolia request layer, pure: params, filters (with a property test of the parser), facets, hits."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipfuse.plugin.elasticsearch import build_filter
from clipfuse.plugin.filters import resolve_filter_tree, resolve_filters
from clipfuse.plugin.ranking import payload_matches_tree
from clipfuse.schemas import FilterCondition, FilterExpr, FilterGroup, Hit, SearchRequest, SignalScores
from clipfuse.service.algolia import (
    AlgoliaError,
    encode_params,
    facet_filters,
    facet_names,
    filters_of,
    highlight,
    numeric_filters,
    parse_filters,
    parse_params,
    read_params,
    request_params,
    shape_hit,
    split_filters,
)

FIELDS: dict[str, Any] = {
    "brand": "keyword",
    "color": "keyword",
    "price": "number",
    "in_stock": "bool",
    "sizes": "keyword",
}


def C(field: str, op: str = "eq", value: Any = None) -> FilterCondition:
    return FilterCondition(field=field, op=op, value=value)  # type: ignore[arg-type]


# -- a plain Python evaluation of the documented semantics -----------------------------------
def holds(expr: FilterExpr, doc: dict[str, Any]) -> bool:
    if isinstance(expr, FilterGroup):
        return (
            all(holds(e, doc) for e in expr.all)
            and (not expr.any or any(holds(e, doc) for e in expr.any))
            and not any(holds(e, doc) for e in expr.none)
        )
    raw = doc.get(expr.field)
    values = [] if raw is None else raw if isinstance(raw, list) else [raw]
    if expr.op == "eq":
        return expr.value in values
    if expr.op == "ne":
        return expr.value not in values
    if expr.op == "in":
        return any(v in expr.value for v in values)  # type: ignore[operator]
    if expr.op == "nin":
        return not any(v in expr.value for v in values)  # type: ignore[operator]
    test = {"lt": float.__lt__, "lte": float.__le__, "gt": float.__gt__, "gte": float.__ge__}[expr.op]
    return any(test(float(v), float(expr.value)) for v in values)  # type: ignore[arg-type]


def holds_split(conditions: list[FilterCondition], tree: FilterGroup | None, doc: dict[str, Any]) -> bool:
    return all(holds(c, doc) for c in conditions) and (tree is None or holds(tree, doc))


# -- params ------------------------------------------------------------------------------
def test_v4_params_string_decodes_json_arrays_and_keeps_strings() -> None:
    raw = (
        "query=red%20boots&hitsPerPage=12&page=2&facets=%5B%22brand%22%2C%22price%22%5D"
        "&facetFilters=%5B%5B%22brand%3AAcme%22%2C%22brand%3ABolt%22%5D%2C%22color%3Ared%22%5D"
        "&numericFilters=%5B%22price%3E%3D10%22%5D&getRankingInfo=true&distinct=1&analytics=false&tagFilters="
    )
    params = read_params(parse_params(raw))
    assert params.query == "red boots" and params.hitsPerPage == 12 and params.page == 2
    assert params.facets == ["brand", "price"]
    assert params.facetFilters == [["brand:Acme", "brand:Bolt"], "color:red"]
    assert params.numericFilters == ["price>=10"]
    assert params.getRankingInfo is True and params.distinct_count == 1


def test_v5_object_and_flattened_params_read_the_same() -> None:
    nested = request_params({"indexName": "products", "params": {"query": "boots", "hitsPerPage": 5}})
    flat = request_params({"indexName": "products", "query": "boots", "hitsPerPage": 5, "type": "default"})
    assert read_params(nested) == read_params(flat)
    assert read_params(flat).hitsPerPage == 5


def test_comma_separated_forms_and_unknown_parameters() -> None:
    params = read_params(
        {"attributesToRetrieve": "title,price", "facets": "brand", "someFutureParam": 1, "userToken": "u-1"}
    )
    assert params.attributesToRetrieve == ["title", "price"] and params.facets == ["brand"]


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"hitsPerPage": "many"}, "hitsPerPage"),
        ({"hitsPerPage": 5000}, "hitsPerPage"),
        ({"page": -1}, "page"),
        ({"facetFilters": "[not json"}, "facetFilters"),
        ({"facetFilters": [[["a:b"]]]}, "facetFilters"),
        ({"getRankingInfo": "maybe"}, "getRankingInfo"),
        ({"clipfuseFusion": "borda"}, "clipfuseFusion"),
        ({"clipfuseWeights": "image=2,colour=1"}, "clipfuseWeights"),
        ({"tagFilters": ["promo"]}, "tagFilters"),
        ({"aroundLatLng": "40.71, -74.01"}, "geo search"),
        ({"optionalFilters": ["brand:Acme"]}, "optionalFilters"),
    ],
)
def test_wrong_types_and_unsupported_parameters_are_400_naming_them(raw: dict[str, Any], needle: str) -> None:
    with pytest.raises(AlgoliaError) as error:
        params = read_params(raw)
        filters_of(params)
    assert error.value.status == 400
    assert needle in error.value.message
    assert error.value.body() == {"message": error.value.message, "status": 400}


@pytest.mark.parametrize("raw", ["query=%ZZ&&=", 12, ["query"]])
def test_malformed_params_are_400(raw: Any) -> None:
    with pytest.raises(AlgoliaError):
        parse_params(raw)


def test_facet_query_requests_are_refused() -> None:
    with pytest.raises(AlgoliaError, match="searchForFacetValues"):
        request_params({"indexName": "products", "type": "facet", "facet": "brand"})


def test_params_echo_is_url_encoded_with_json_arrays() -> None:
    echoed = encode_params({"query": "a b", "facets": ["brand"], "getRankingInfo": True, "clipfuseImage": "xx"})
    assert echoed == "query=a+b&facets=%5B%22brand%22%5D&getRankingInfo=true"


# -- facetFilters / numericFilters ------------------------------------------------------------
def test_facet_filters_or_inside_and_outside_not_with_dash() -> None:
    exprs = facet_filters([["brand:Acme", "brand:Bolt"], "color:-red", "sizes:\\-1"])
    conditions, tree = split_filters(exprs)
    assert tree is None
    assert conditions == [C("brand", "in", ["Acme", "Bolt"]), C("color", "ne", "red"), C("sizes", "eq", "-1")]


def test_cross_field_or_in_facet_filters_becomes_a_tree() -> None:
    conditions, tree = split_filters(facet_filters([["brand:Acme", "color:red"], "in_stock:true"]))
    assert conditions == [C("in_stock", "eq", "true")]
    assert tree == FilterGroup(all=[FilterGroup(any=[C("brand", "eq", "Acme"), C("color", "eq", "red")])])


def test_numeric_filters_with_ranges_and_or() -> None:
    conditions, tree = split_filters(numeric_filters(["price>=10", "price<=100.5", ["price=5", "price:200 TO 300"]]))
    assert conditions == [C("price", "gte", 10.0), C("price", "lte", 100.5)]
    assert tree == FilterGroup(
        all=[
            FilterGroup(
                any=[C("price", "eq", 5.0), FilterGroup(all=[C("price", "gte", 200.0), C("price", "lte", 300.0)])]
            )
        ]
    )


@pytest.mark.parametrize("bad", ["price", "price>>3", "price>=cheap", "price:1 TO", "price>=nan", 7])
def test_bad_numeric_filters_are_400(bad: Any) -> None:
    with pytest.raises(AlgoliaError, match="numericFilters"):
        numeric_filters([bad])


def test_bad_facet_filters_are_400() -> None:
    with pytest.raises(AlgoliaError, match=r"facetFilters\[0\]"):
        facet_filters(["no-colon"])
    with pytest.raises(AlgoliaError, match="string"):
        facet_filters([{"brand": "Acme"}])


# -- the filters string -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("brand:Acme", C("brand", "eq", "Acme")),
        ('brand:"Acme & Co"', C("brand", "eq", "Acme & Co")),
        ("'the brand':'it''s'".replace("''", "\\'"), C("the brand", "eq", "it's")),
        ("price > 10", C("price", "gt", 10.0)),
        ("price<=9.5", C("price", "lte", 9.5)),
        ("price != 3", C("price", "ne", 3.0)),
        ("price:10 TO 100", FilterGroup(all=[C("price", "gte", 10.0), C("price", "lte", 100.0)])),
        ("NOT brand:Acme", FilterGroup(none=[C("brand", "eq", "Acme")])),
        (
            "brand:Acme AND (color:red OR price < 20)",
            FilterGroup(
                all=[C("brand", "eq", "Acme"), FilterGroup(any=[C("color", "eq", "red"), C("price", "lt", 20.0)])]
            ),
        ),
        ("((brand:Acme))", C("brand", "eq", "Acme")),
        ("brand:A OR brand:B OR brand:C", FilterGroup(any=[C("brand", "eq", v) for v in "ABC"])),
    ],
)
def test_filters_string(text: str, expected: FilterExpr) -> None:
    assert parse_filters(text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("brand:Acme OR", "ended"),
        ("(brand:Acme", "expected rparen"),
        ("brand:Acme)", "unexpected ')'"),
        ("promo", "tag filters"),
        ("brand:Acme<score=2>", "filter scores"),
        ("brand:Acme and color:red", "upper case"),
        ("brand:Acme color:red", "AND or OR"),
        ("price > cheap", "not a number"),
        ("price:1 TO x", "not a number"),
        ("= brand:x", "attribute name"),
        ("(" * 40 + "a:b" + ")" * 40, "nested deeper"),
        ("brand:" + " OR brand:".join(str(i) for i in range(300)), "MAX_FILTER_NODES"),
    ],
)
def test_unsupported_filters_syntax_is_400_naming_the_spot(text: str, needle: str) -> None:
    with pytest.raises(AlgoliaError) as error:
        parse_filters(text)
    assert needle in error.value.message and error.value.status == 400


# property: render a random tree in Algolia's syntax, parse it back, and it selects the same documents
_KEYWORDS = st.sampled_from(["Acme", "Bolt", "Corvo", "t-shirt", "Acme & Co", "x y"])
_leaf = st.one_of(
    st.builds(lambda f, v: C(f, "eq", v), st.sampled_from(["brand", "color", "sizes"]), _KEYWORDS),
    st.builds(
        lambda op, v: C("price", op, float(v)),
        st.sampled_from(["lt", "lte", "gt", "gte", "eq", "ne"]),
        st.integers(0, 12),
    ),
    st.builds(lambda v: C("in_stock", "eq", v), st.sampled_from(["true", "false"])),
)


def _groups(children: st.SearchStrategy[FilterExpr]) -> st.SearchStrategy[FilterExpr]:
    items = st.lists(children, min_size=1, max_size=3)
    return st.one_of(
        st.builds(lambda xs: FilterGroup(all=xs), items),
        st.builds(lambda xs: FilterGroup(any=xs), items),
        st.builds(lambda x: FilterGroup(none=[x]), children),
    )


_trees = st.recursive(_leaf, _groups, max_leaves=10)
_OPS = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">=", "eq": "=", "ne": "!="}


def _quote(text: str) -> str:
    return text if text.replace("-", "").isalnum() else '"' + text.replace('"', '\\"') + '"'


def render(expr: FilterExpr, spaces: str) -> str:
    if isinstance(expr, FilterCondition):
        if expr.field == "price":
            return f"price{spaces}{_OPS[expr.op]}{spaces}{int(expr.value)}"  # type: ignore[arg-type]
        return f"{expr.field}:{_quote(str(expr.value))}"
    parts = [f"({render(e, spaces)})" for e in expr.all]
    if expr.any:
        parts.append("(" + " OR ".join(f"({render(e, spaces)})" for e in expr.any) + ")")
    parts.extend(f"NOT ({render(e, spaces)})" for e in expr.none)
    return " AND ".join(parts)


_DOCS = [
    {"brand": b, "color": c, "price": p, "in_stock": s, "sizes": z}
    for b in ("Acme", "Bolt", "Acme & Co")
    for c in ("t-shirt", "x y")
    for p in (0.0, 5.0, 12.0)
    for s in (True, False)
    for z in (["Acme", "Corvo"], [])
] + [{}, {"price": 7.0}, {"brand": "Corvo", "price": [3.0, 11.0]}]


@settings(max_examples=300, deadline=None)
@given(_trees, st.sampled_from(["", " ", "  "]))
def test_parsed_filters_select_the_same_documents(tree: FilterExpr, spaces: str) -> None:
    text = render(tree, spaces)
    parsed = parse_filters(text)
    assert parsed is not None
    original = _resolve(tree)
    conditions, where = split_filters([parsed])
    conditions = list(resolve_filters(conditions, FIELDS))
    where = resolve_filter_tree(where, FIELDS)
    for doc in _DOCS:
        assert holds(original, doc) == holds_split(conditions, where, doc), (text, doc)
        # the searcher's own evaluation (pins fetched from outside the window) agrees
        assert payload_matches_tree(doc, original) == holds(original, doc), (text, doc)  # type: ignore[arg-type]


def _resolve(expr: FilterExpr) -> FilterExpr:
    group = resolve_filter_tree(FilterGroup(all=[expr]), FIELDS)
    assert group is not None
    return group


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(
            st.sampled_from(["brand:Acme", "brand:Bolt", "color:-x y", "color:t-shirt", "brand:-Bolt"]), max_size=3
        ),
        max_size=3,
    )
)
def test_facet_filters_keep_and_of_or_semantics(nested: list[list[str]]) -> None:
    conditions, where = split_filters(facet_filters(nested))
    conditions = list(resolve_filters(conditions, FIELDS))
    where = resolve_filter_tree(where, FIELDS)

    def one(text: str, doc: dict[str, Any]) -> bool:
        name, _, value = text.partition(":")
        negated = value.startswith("-")
        return (doc.get(name) == value.lstrip("-")) != negated

    for doc in _DOCS:
        expected = all(any(one(t, doc) for t in group) for group in nested if group)
        assert holds_split(conditions, where, doc) == expected, (nested, doc)


def test_the_tree_reaches_elasticsearch_as_nested_bool() -> None:
    conditions, tree = filters_of(
        read_params({"filters": "in_stock:true AND (brand:Acme OR price < 20) AND NOT color:red"})
    )
    conditions = list(resolve_filters(conditions, FIELDS))
    tree = resolve_filter_tree(tree, FIELDS)
    assert build_filter(conditions, tree) == [
        {"term": {"in_stock": True}},
        {"bool": {"must_not": [{"term": {"color": "red"}}]}},
        {
            "bool": {
                "filter": [
                    {
                        "bool": {
                            "should": [{"term": {"brand": "Acme"}}, {"range": {"price": {"lt": 20.0}}}],
                            "minimum_should_match": 1,
                        }
                    }
                ]
            }
        },
    ]


def test_search_request_carries_the_tree_and_bounds_it() -> None:
    tree = FilterGroup(any=[C("brand", "eq", "Acme"), C("price", "lt", 5)])
    assert SearchRequest(text="boots", where=tree).where == tree
    deep: dict[str, Any] = {"field": "brand", "value": "x"}
    for _ in range(9):
        deep = {"none": [deep]}
    with pytest.raises(ValueError, match="MAX_FILTER_DEPTH"):
        SearchRequest.model_validate({"text": "boots", "where": deep})
    with pytest.raises(ValueError, match="at least one item"):
        FilterGroup()


# -- facets -----------------------------------------------------------------------------------
def test_facet_names_star_and_unknown() -> None:
    assert facet_names(["*"], FIELDS) == sorted(FIELDS)
    with pytest.raises(AlgoliaError, match=r"unknown attribute 'colour'.*brand, color"):
        facet_names(["brand", "colour"], FIELDS)


# -- hits ---------------------------------------------------------------------------------------
def test_highlight_marks_query_words_with_levels() -> None:
    full = highlight("Red leather Boots", ["red", "boots"], "<em>", "</em>")
    assert full == {
        "value": "<em>Red</em> leather <em>Boots</em>",
        "matchLevel": "full",
        "matchedWords": ["red", "boots"],
        "fullyHighlighted": False,
    }
    partial = highlight("red dress", ["red", "boot"], "__ais-highlight__", "__/ais-highlight__")
    assert partial["value"] == "__ais-highlight__red__/ais-highlight__ dress"
    assert partial["matchLevel"] == "partial" and partial["matchedWords"] == ["red"]
    assert highlight("blue", ["red"], "<em>", "</em>") == {"value": "blue", "matchLevel": "none", "matchedWords": []}
    assert highlight("sneakers", ["sne"], "<b>", "</b>")["value"] == "<b>sneakers</b>"  # prefix on the last word
    assert highlight("sneakers", ["sne", "x"], "<b>", "</b>")["matchLevel"] == "none"  # only the last word is a prefix


def test_shape_hit_retrieves_highlights_and_explains() -> None:
    hit = Hit(
        id="sku-1",
        rank=3,
        score=0.04,
        signals=SignalScores(image=0.5, text=None, bm25=7.0),
        ranks=SignalScores(image=2, bm25=1),
        payload={},
    )
    record = {"title": "Acme red boots", "price": 10.0, "brand": "Acme", "images": ["a.jpg"]}
    params = read_params({"query": "red boots", "attributesToRetrieve": ["title", "price"], "getRankingInfo": True})
    shaped = shape_hit(hit, params, record=record, fusion="rrf", fused_by="client")
    assert shaped["objectID"] == "sku-1" and shaped["title"] == "Acme red boots" and "brand" not in shaped
    assert shaped["_highlightResult"]["title"]["value"] == "Acme <em>red</em> <em>boots</em>"
    info = shaped["_rankingInfo"]
    assert info["words"] == 2 and info["nbExactWords"] == 2
    assert info["clipfuse"]["signals"] == {
        "image": {"score": 0.5, "rank": 2.0},
        "text": {"score": None, "rank": None},
        "bm25": {"score": 7.0, "rank": 1.0},
    }
    assert info["clipfuse"]["score"] == 0.04 and info["clipfuse"]["rank"] == 3
    none = shape_hit(
        hit,
        read_params({"attributesToRetrieve": [], "attributesToHighlight": []}),
        record=record,
        fusion="rrf",
        fused_by="client",
    )
    assert none == {"objectID": "sku-1"}
    star = shape_hit(
        hit, read_params({"attributesToRetrieve": ["*", "-images"]}), record=record, fusion="rrf", fused_by="client"
    )
    assert "images" not in star and star["brand"] == "Acme"


def test_url_encoded_filters_string_in_v4_params() -> None:
    raw = "filters=" + quote('brand:"Acme & Co" AND price:10 TO 20')
    conditions, tree = filters_of(read_params(parse_params(raw)))
    assert tree is None
    assert conditions == [C("brand", "eq", "Acme & Co"), C("price", "gte", 10.0), C("price", "lte", 20.0)]
    assert not math.isnan(conditions[1].value)  # type: ignore[arg-type]

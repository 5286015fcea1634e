"""Tests for clipfuse.schemas (documents, searches, filters, reports) and clipfuse.errors."""

from __future__ import annotations

import base64
import math
import pickle
from typing import Any

import pytest
from pydantic import ValidationError

import clipfuse.errors as errors_module
from clipfuse.errors import (
    BackendError,
    BackendUnavailable,
    ClipfuseError,
    ConfigurationError,
    EmbeddingError,
    InvalidDocument,
    InvalidQuery,
)
from clipfuse.schemas import (
    RESERVED_FIELDS,
    Document,
    FilterCondition,
    ImageSource,
    IngestReport,
    Rejection,
    SearchRequest,
    Weights,
    format_validation_error,
    parse_document,
    parse_filter,
)
from clipfuse.schemas import limits as L
from clipfuse.schemas.reports import MAX_KEPT_DOCUMENT_CHARS

try:  # optional: property tests with hypothesis when it is installed
    import hypothesis
    import hypothesis.strategies as st
except ImportError:  # pragma: no cover - depends on the environment
    hypothesis = None

B64 = base64.b64encode(b"\x89PNG fake bytes").decode()


def invalid(raw: Any) -> str:
    """parse_document(raw) must fail with code 'validation'; returns the message."""
    with pytest.raises(InvalidDocument) as info:
        parse_document(raw)
    assert info.value.code == "validation"
    message = str(info.value)
    assert message and len(message) < 2000
    return message


def search_error(**kwargs: Any) -> str:
    with pytest.raises(ValidationError) as info:
        SearchRequest(**kwargs)
    return str(info.value)


# -- documents: the valid shapes --------------------------------------------------------


def test_minimal_image_only_document() -> None:
    doc = parse_document({"id": "sku-1", "images": [{"path": "a.jpg"}]})
    assert doc.id == "sku-1"
    assert doc.images[0].kind == "path"
    assert doc.text == ""
    assert doc.attributes == {}


@pytest.mark.parametrize("field", ["title", "caption", "description"])
def test_minimal_text_only_document(field: str) -> None:
    doc = parse_document({"id": "1", field: "red shoe"})
    assert doc.images == []
    assert doc.text == "red shoe"


def test_text_joins_title_caption_description() -> None:
    doc = Document(id="1", title="T", caption="C", description="D")
    assert doc.text == "T\nC\nD"
    assert Document(id="1", title="T", description="D").text == "T\nD"


def test_full_document_round_trips_through_json() -> None:
    raw = {
        "id": "sku-9",
        "images": ["https://cdn.example.com/a.jpg", "local/b.png", {"data": B64}],
        "title": "Trail runner",
        "caption": "a red running shoe",
        "description": "Light, grippy.",
        "attributes": {
            "brand": "Acme",
            "price": 89.5,
            "stock": 3,
            "in_stock": True,
            "sizes": [40, 41, 42],
            "colors": ["red", "black"],
            "tags": [],
        },
    }
    doc = parse_document(raw)
    assert [s.kind for s in doc.images] == ["url", "path", "data"]
    again = Document.model_validate_json(doc.model_dump_json())
    assert again == doc
    # types are kept strictly: no int -> float, bool stays bool
    assert doc.attributes["stock"] == 3 and isinstance(doc.attributes["stock"], int)
    assert doc.attributes["in_stock"] is True
    assert isinstance(doc.attributes["price"], float)


def test_parse_document_passes_documents_through() -> None:
    doc = Document(id="1", title="t")
    assert parse_document(doc) is doc


def test_int_id_coerced_to_str() -> None:
    assert parse_document({"id": 42, "title": "t"}).id == "42"
    assert Document(id=0, title="t").id == "0"  # type: ignore[arg-type]


@pytest.mark.parametrize("bad_id", [True, False, 1.5, None, ["a"], {"a": 1}])
def test_non_str_non_int_ids_refused(bad_id: Any) -> None:
    assert "id" in invalid({"id": bad_id, "title": "t"})


@pytest.mark.parametrize("bad_id", ["", "a\nb", "a\x00b", "tab\there", "del\x7f"])
def test_empty_or_control_character_ids_refused(bad_id: str) -> None:
    assert "id" in invalid({"id": bad_id, "title": "t"})


def test_missing_id_refused() -> None:
    message = invalid({"title": "t"})
    assert "id" in message and "required" in message.lower()


def test_extra_fields_forbidden() -> None:
    message = invalid({"id": "1", "title": "t", "price": 3})
    assert "price" in message
    assert "not permitted" in message
    with pytest.raises(ValidationError):
        ImageSource(path="a.jpg", alt="x")  # type: ignore[call-arg]


def test_documents_are_frozen() -> None:
    doc = Document(id="1", title="t")
    with pytest.raises(ValidationError):
        doc.title = "u"  # type: ignore[misc]


@pytest.mark.parametrize(
    "raw",
    [
        {"id": "1"},
        {"id": "1", "images": []},
        {"id": "1", "title": "", "caption": "   ", "description": "\n\t"},
        {"id": "1", "title": None, "attributes": {"brand": "Acme"}},
    ],
)
def test_empty_document_refused(raw: dict[str, Any]) -> None:
    assert "empty" in invalid(raw)


def test_non_dict_documents_refused() -> None:
    for raw in ["sku-1", 42, None, ["id", "1"], b"{}"]:
        with pytest.raises(InvalidDocument) as info:
            parse_document(raw)  # type: ignore[arg-type]
        assert info.value.code == "validation"
        assert "JSON object" in str(info.value)
        assert info.value.doc_id is None


def test_doc_id_is_set_on_rejection() -> None:
    with pytest.raises(InvalidDocument) as info:
        parse_document({"id": "sku-7"})
    assert info.value.doc_id == "sku-7"
    with pytest.raises(InvalidDocument) as info:
        parse_document({"id": 7})
    assert info.value.doc_id == "7"
    with pytest.raises(InvalidDocument) as info:
        parse_document({"id": "x" * 10_000, "title": "t"})
    assert info.value.doc_id == "x" * L.MAX_ID_CHARS


# -- image sources -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("http://cdn.example.com/a.jpg", "url"),
        ("https://cdn.example.com/a.jpg", "url"),
        ("HTTPS://CDN.EXAMPLE.COM/A.JPG", "url"),
        ("images/a.jpg", "path"),
        ("/abs/a.jpg", "path"),
        ("ftp://example.com/a.jpg", "path"),  # not http(s): taken as a (strange) path
        ("httpfoo.jpg", "path"),
    ],
)
def test_string_shorthand(text: str, kind: str) -> None:
    source = ImageSource.model_validate(text)
    assert source.kind == kind
    assert getattr(source, kind) == text
    assert Document(id="1", images=[text]).images[0] == source  # type: ignore[list-item]


def test_data_must_be_valid_base64() -> None:
    assert ImageSource(data=B64).kind == "data"
    for bad in ["not base64!", "abc", "Zm9v\x00", "data:image/png;base64,AAAA"]:
        with pytest.raises(ValidationError) as info:
            ImageSource(data=bad)
        assert "base64" in str(info.value)
    assert "base64" in invalid({"id": "1", "images": [{"data": "@@@"}]})


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"path": "a.jpg", "url": "http://x/a.jpg"},
        {"path": "a.jpg", "data": B64},
        {"url": "http://x/a.jpg", "data": B64},
        {"path": "a.jpg", "url": "http://x/a.jpg", "data": B64},
    ],
)
def test_exactly_one_of_path_url_data(fields: dict[str, str]) -> None:
    with pytest.raises(ValidationError) as info:
        ImageSource(**fields)
    assert "exactly one of 'path', 'url' or 'data'" in str(info.value)


@pytest.mark.parametrize("url", ["ftp://x/a.jpg", "file:///etc/passwd", "javascript:alert(1)", "//x/a.jpg", "x"])
def test_non_http_url_refused(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        ImageSource(url=url)
    assert "http:// or https://" in str(info.value)


def test_empty_image_fields_refused() -> None:
    for field in ("path", "url", "data"):
        with pytest.raises(ValidationError):
            ImageSource(**{field: ""})


def test_describe_never_shows_inline_bytes() -> None:
    assert ImageSource(path="a.jpg").describe() == "path a.jpg"
    assert ImageSource(url="http://x/a.jpg").describe() == "url http://x/a.jpg"
    described = ImageSource(data=B64).describe()
    assert B64 not in described
    assert str(len(B64)) in described


# -- document limits ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "limit", "name"),
    [
        ("title", L.MAX_TITLE_CHARS, "MAX_TITLE_CHARS"),
        ("caption", L.MAX_CAPTION_CHARS, "MAX_CAPTION_CHARS"),
        ("description", L.MAX_DESCRIPTION_CHARS, "MAX_DESCRIPTION_CHARS"),
    ],
)
def test_text_length_limits(field: str, limit: int, name: str) -> None:
    assert getattr(parse_document({"id": "1", field: "x" * limit}), field) == "x" * limit
    message = invalid({"id": "1", field: "x" * (limit + 1)})
    assert field in message
    assert f"{name}={limit}" in message


def test_id_length_limit() -> None:
    assert parse_document({"id": "i" * L.MAX_ID_CHARS, "title": "t"}).id == "i" * L.MAX_ID_CHARS
    message = invalid({"id": "i" * (L.MAX_ID_CHARS + 1), "title": "t"})
    assert f"MAX_ID_CHARS={L.MAX_ID_CHARS}" in message


def test_images_count_limit() -> None:
    images = [f"img{i}.jpg" for i in range(L.MAX_IMAGES_PER_DOCUMENT)]
    assert len(parse_document({"id": "1", "images": images}).images) == L.MAX_IMAGES_PER_DOCUMENT
    message = invalid({"id": "1", "images": [*images, "one-more.jpg"]})
    assert f"MAX_IMAGES_PER_DOCUMENT={L.MAX_IMAGES_PER_DOCUMENT}" in message


@pytest.mark.parametrize(
    ("source", "limit", "name"),
    [
        ({"url": "http://x/" + "a" * L.MAX_URL_CHARS}, L.MAX_URL_CHARS, "MAX_URL_CHARS"),
        ({"path": "a" * (L.MAX_PATH_CHARS + 1)}, L.MAX_PATH_CHARS, "MAX_PATH_CHARS"),
    ],
)
def test_image_source_length_limits_name_their_own_limit(source: dict[str, str], limit: int, name: str) -> None:
    message = invalid({"id": "1", "images": [source]})
    assert f"images.0.{next(iter(source))}" in message
    assert f"{name}={limit}" in message
    assert "MAX_IMAGES_PER_DOCUMENT" not in message  # a long url is not "too many images"


def test_attributes_count_limit() -> None:
    ok = {f"a{i}": i for i in range(L.MAX_ATTRIBUTES)}
    assert len(parse_document({"id": "1", "title": "t", "attributes": ok}).attributes) == L.MAX_ATTRIBUTES
    message = invalid({"id": "1", "title": "t", "attributes": {**ok, "extra": 1}})
    assert f"MAX_ATTRIBUTES={L.MAX_ATTRIBUTES}" in message


@pytest.mark.parametrize("name", ["1abc", "with space", "dot.ted", "", "é", "a/b", "-lead"])
def test_attribute_name_pattern(name: str) -> None:
    message = invalid({"id": "1", "title": "t", "attributes": {name: 1}})
    assert "attribute name" in message
    assert "must match" in message


def test_attribute_name_length() -> None:
    ok = "a" * L.MAX_ATTRIBUTE_NAME_CHARS
    assert ok in parse_document({"id": "1", "title": "t", "attributes": {ok: 1}}).attributes
    message = invalid({"id": "1", "title": "t", "attributes": {ok + "a": 1}})
    assert f"MAX_ATTRIBUTE_NAME_CHARS={L.MAX_ATTRIBUTE_NAME_CHARS}" in message


def test_valid_attribute_names() -> None:
    names = ["_x", "Brand", "size_eu", "kebab-case", "a1"]
    doc = parse_document({"id": "1", "title": "t", "attributes": dict.fromkeys(names, 1)})
    assert list(doc.attributes) == names


@pytest.mark.parametrize("name", sorted(RESERVED_FIELDS))
def test_reserved_attribute_names(name: str) -> None:
    message = invalid({"id": "1", "title": "t", "attributes": {name: "x"}})
    assert "reserved" in message
    assert name in message


def test_attribute_string_length() -> None:
    ok = "s" * L.MAX_ATTRIBUTE_STRING_CHARS
    parse_document({"id": "1", "title": "t", "attributes": {"a": ok, "b": [ok]}})
    message = invalid({"id": "1", "title": "t", "attributes": {"a": ok + "s"}})
    assert f"MAX_ATTRIBUTE_STRING_CHARS={L.MAX_ATTRIBUTE_STRING_CHARS}" in message
    message = invalid({"id": "1", "title": "t", "attributes": {"a": ["x", ok + "s"]}})
    assert "MAX_ATTRIBUTE_STRING_CHARS" in message


def test_attribute_list_length() -> None:
    ok = list(range(L.MAX_ATTRIBUTE_LIST_ITEMS))
    parse_document({"id": "1", "title": "t", "attributes": {"a": ok}})
    message = invalid({"id": "1", "title": "t", "attributes": {"a": [*ok, 0]}})
    assert f"MAX_ATTRIBUTE_LIST_ITEMS={L.MAX_ATTRIBUTE_LIST_ITEMS}" in message


@pytest.mark.parametrize("items", [[1, "a"], [True, 1], ["x", False], [1.5, "2"]])
def test_mixed_type_list_refused(items: list[Any]) -> None:
    message = invalid({"id": "1", "title": "t", "attributes": {"a": items}})
    assert "mixes" in message


def test_int_and_float_mix_is_one_number_type() -> None:
    doc = parse_document({"id": "1", "title": "t", "attributes": {"a": [1, 2.5]}})
    assert doc.attributes["a"] == [1, 2.5]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1.0, math.nan]])
def test_non_finite_numbers_refused(value: Any) -> None:
    message = invalid({"id": "1", "title": "t", "attributes": {"a": value}})
    assert "finite" in message


@pytest.mark.parametrize("value", [None, {"nested": 1}, [[1]], [None], b"bytes"])
def test_attribute_value_types(value: Any) -> None:
    assert "attributes.a" in invalid({"id": "1", "title": "t", "attributes": {"a": value}})


def test_ten_megabyte_caption_gives_a_short_message() -> None:
    with pytest.raises(InvalidDocument) as info:
        parse_document({"id": "big-1", "caption": "c" * (10 * 1024 * 1024)})
    error = info.value
    assert error.code == "validation"
    assert error.doc_id == "big-1"
    assert "caption" in error.message
    assert f"MAX_CAPTION_CHARS={L.MAX_CAPTION_CHARS}" in error.message
    assert len(error.message) < 500


@pytest.mark.parametrize(
    "raw",
    [
        {"id": "1", "title": "t", "k" * 1_000_000: 1},  # a huge extra field name
        {"id": "1", "title": "t", "attributes": {"k" * 1_000_000: {"bad": 1}}},  # a huge key, bad value
        {"id": "1", "title": "t", "attributes": {"k" * 1_000_000: 1}},  # a huge key, good value
        {"id": "1", "images": [{"url": "ftp://" + "u" * 2000}]},
        {"id": "1", "images": [{"path": "p", "url": "http://" + "u" * 2000}]},
        {"id": "\x00" * 1_000_000, "title": "t"},
    ],
)
def test_messages_never_echo_huge_inputs(raw: dict[str, Any]) -> None:
    assert len(invalid(raw)) < 1000


def test_format_validation_error_caps_the_number_of_errors() -> None:
    raw = {"id": "1", "title": "t", **{f"extra{i}": i for i in range(12)}}
    with pytest.raises(ValidationError) as info:
        Document.model_validate(raw)
    message = format_validation_error(info.value)
    assert message.count("not permitted") == 5
    assert message.endswith("; and 7 more")
    assert format_validation_error(info.value, limit=20).count("not permitted") == 12


# -- searches ------------------------------------------------------------------------------------


def test_search_text_only_and_defaults() -> None:
    request = SearchRequest(text="red shoes")
    assert request.image is None
    assert request.weights == Weights()
    assert request.fusion == "rrf"
    assert request.rrf_k == 60.0
    assert request.k == 10 and request.offset == 0
    assert request.filters == []


def test_search_image_only_and_image_plus_text() -> None:
    assert SearchRequest(image="q.jpg").image == ImageSource(path="q.jpg")  # type: ignore[arg-type]
    request = SearchRequest.model_validate({"image": {"url": "https://x/q.jpg"}, "text": "in black"})
    assert request.image is not None and request.image.kind == "url"
    assert request.text == "in black"


@pytest.mark.parametrize("kwargs", [{}, {"text": None}, {"text": ""}, {"text": "   "}, {"text": "\n\t "}])
def test_search_needs_text_or_image(kwargs: dict[str, Any]) -> None:
    assert "needs a text, an image, or both" in search_error(**kwargs)


def test_blank_text_with_image_counts_as_image_only() -> None:
    request = SearchRequest(text="  ", image="q.jpg")  # type: ignore[arg-type]
    assert request.text is None


def test_all_zero_weights_refused() -> None:
    assert "all signal weights are 0" in search_error(text="x", weights={"image": 0, "text": 0, "bm25": 0})


def test_image_only_needs_a_dense_weight() -> None:
    message = search_error(image="q.jpg", weights={"image": 0, "text": 0, "bm25": 1})
    assert "image-only" in message
    SearchRequest(image="q.jpg", weights={"image": 0, "text": 1, "bm25": 0})  # type: ignore[arg-type]
    SearchRequest(text="x", weights={"image": 0, "text": 0, "bm25": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize("weight", [-0.1, L.MAX_WEIGHT + 0.001, math.inf, math.nan])
def test_weight_bounds(weight: float) -> None:
    with pytest.raises(ValidationError):
        Weights(image=weight)
    assert Weights(image=L.MAX_WEIGHT).image == L.MAX_WEIGHT
    assert Weights(text=0.0).as_tuple() == (1.0, 0.0, 1.0)


@pytest.mark.parametrize(
    ("field", "bad", "good"),
    [
        ("k", [0, -1, L.MAX_K + 1], [1, L.MAX_K]),
        ("offset", [-1, L.MAX_OFFSET + 1], [0, L.MAX_OFFSET]),
        ("candidates", [0, L.MAX_CANDIDATES + 1], [L.MAX_CANDIDATES]),
        ("rrf_k", [-1.0, L.MAX_RRF_K + 1, math.inf, math.nan], [0.0, 1.0, L.MAX_RRF_K]),
        ("compose_alpha", [-0.01, 1.01, math.nan], [0.0, 0.5, 1.0]),
    ],
)
def test_search_numeric_bounds(field: str, bad: list[Any], good: list[Any]) -> None:
    for value in bad:
        assert field in search_error(text="x", **{field: value})
    for value in good:
        assert getattr(SearchRequest(text="x", **{field: value}), field) == value


def test_query_text_length_limit() -> None:
    SearchRequest(text="q" * L.MAX_QUERY_TEXT_CHARS)
    assert "text" in search_error(text="q" * (L.MAX_QUERY_TEXT_CHARS + 1))


def test_filters_count_limit() -> None:
    one = {"field": "a", "value": 1}
    assert len(SearchRequest(text="x", filters=[one] * L.MAX_FILTERS).filters) == L.MAX_FILTERS  # type: ignore[list-item]
    assert "filters" in search_error(text="x", filters=[one] * (L.MAX_FILTERS + 1))


def test_candidates_must_cover_k_plus_offset() -> None:
    message = search_error(text="x", k=10, offset=5, candidates=14)
    assert "candidates=14" in message and "k + offset = 15" in message
    assert SearchRequest(text="x", k=10, offset=5, candidates=15).candidate_limit == 15


@pytest.mark.parametrize(("k", "offset", "expected"), [(10, 0, 100), (50, 0, 100), (51, 0, 102), (100, 20, 240)])
def test_candidate_limit_default(k: int, offset: int, expected: int) -> None:
    assert SearchRequest(text="x", k=k, offset=offset).candidate_limit == expected


@pytest.mark.parametrize("fusion", ["rrf", "dbsf", "linear", "zscore"])
def test_fusion_values(fusion: str) -> None:
    assert SearchRequest(text="x", fusion=fusion).fusion == fusion  # type: ignore[arg-type]


@pytest.mark.parametrize("fusion", ["sum", "RRF", "", None])
def test_unknown_fusion_refused(fusion: Any) -> None:
    assert "fusion" in search_error(text="x", fusion=fusion)


def test_search_extra_fields_forbidden() -> None:
    assert "not permitted" in search_error(text="x", limit=5)
    with pytest.raises(ValidationError):
        Weights(clip=1.0)  # type: ignore[call-arg]


# -- filters -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "op", "value"),
    [
        ("category=shoes", "eq", "shoes"),
        ("brand!=Acme", "ne", "Acme"),
        ("price<120", "lt", 120),
        ("price<=120", "lte", 120),
        ("price>10", "gt", 10),
        ("price>=10.5", "gte", 10.5),
        ("price>=-3", "gte", -3),
        ("  rating >= 4.5  ", "gte", 4.5),
        ("size = 42", "eq", 42),
        ("in_stock=true", "eq", True),
        ("in_stock=FALSE", "eq", False),
        ("title=Red Shoe", "eq", "Red Shoe"),
        ("code=007x", "eq", "007x"),
        ("ratio=1e3", "eq", 1000.0),
        ("x=nan", "eq", "nan"),  # not a finite number: kept as a string
        ("x=inf", "eq", "inf"),
        ("kebab-name=v", "eq", "v"),
        ("url=a=b", "eq", "a=b"),
    ],
)
def test_parse_filter_operators_and_values(expression: str, op: str, value: Any) -> None:
    condition = parse_filter(expression)
    assert condition.op == op
    assert condition.value == value
    assert type(condition.value) is type(value)


def test_parse_filter_field_name() -> None:
    assert parse_filter("  my_field>=1").field == "my_field"


def test_parse_filter_refusal_is_one_readable_line() -> None:
    """A value the condition refuses reads as the model's reason, not pydantic's dump of the input."""
    with pytest.raises(InvalidQuery) as info:
        parse_filter("price<=abc")
    assert str(info.value) == "filter 'price<=abc': filter on 'price': 'lte' needs a number, got 'abc'"


@pytest.mark.parametrize(
    ("expression", "op", "value"),
    [
        ("color=red|black", "in", ["red", "black"]),
        ("color!=red|black", "nin", ["red", "black"]),
        ("size=40|41|42.5", "in", [40, 41, 42.5]),
        ("flag=true|false", "in", [True, False]),
        ("color = red | black |", "in", ["red", "black"]),
        ("color=red|", "in", ["red"]),
    ],
)
def test_parse_filter_any_of_none_of(expression: str, op: str, value: list[Any]) -> None:
    condition = parse_filter(expression)
    assert condition.op == op
    assert condition.value == value


@pytest.mark.parametrize("expression", ["", "category", "=shoes", "1abc=2", "a b=c", "color:red", "é=1"])
def test_parse_filter_bad_syntax(expression: str) -> None:
    with pytest.raises(InvalidQuery) as info:
        parse_filter(expression)
    message = str(info.value)
    assert "FIELD OP VALUE" in message or "no value" in message
    if "FIELD OP VALUE" in message:
        assert "category=shoes" in message  # shows an example


@pytest.mark.parametrize("expression", ["price=", "price<=  ", "price>"])
def test_parse_filter_missing_value(expression: str) -> None:
    with pytest.raises(InvalidQuery) as info:
        parse_filter(expression)
    assert "no value" in str(info.value)


@pytest.mark.parametrize("expression", ["price<cheap", "price>=true", "price<1|2", "price>=x"])
def test_parse_filter_comparisons_need_numbers(expression: str) -> None:
    with pytest.raises(InvalidQuery) as info:
        parse_filter(expression)
    assert "needs a number" in str(info.value)


def test_parse_filter_empty_any_of() -> None:
    with pytest.raises(InvalidQuery):
        parse_filter("color=|")


def test_filter_condition_shapes() -> None:
    assert FilterCondition(field="a", value="x").op == "eq"
    assert FilterCondition(field="a", op="in", value=["x", 1]).value == ["x", 1]
    for op in ("in", "nin"):
        with pytest.raises(ValidationError) as info:
            FilterCondition(field="a", op=op, value="x")  # type: ignore[arg-type]
        assert "needs a list" in str(info.value)
    for op in ("eq", "ne", "lt"):
        with pytest.raises(ValidationError) as info:
            FilterCondition(field="a", op=op, value=[1, 2])  # type: ignore[arg-type]
        assert "not a list" in str(info.value)
    for op in ("lt", "lte", "gt", "gte"):
        with pytest.raises(ValidationError) as info:
            FilterCondition(field="a", op=op, value=True)  # type: ignore[arg-type]
        assert "needs a number" in str(info.value)
        assert FilterCondition(field="a", op=op, value=1.5).value == 1.5  # type: ignore[arg-type]


def test_filter_condition_limits() -> None:
    with pytest.raises(ValidationError):
        FilterCondition(field="a", op="eq", value=math.nan)
    with pytest.raises(ValidationError):
        FilterCondition(field="a", op="in", value=[1.0, math.inf])
    with pytest.raises(ValidationError):
        FilterCondition(field="a", op="in", value=[])
    with pytest.raises(ValidationError):
        FilterCondition(field="a", op="in", value=list(range(L.MAX_FILTER_VALUES + 1)))
    assert len(FilterCondition(field="a", op="in", value=list(range(L.MAX_FILTER_VALUES))).value) == 256  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        FilterCondition(field="", value=1)
    with pytest.raises(ValidationError):
        FilterCondition(field="f" * (L.MAX_ATTRIBUTE_NAME_CHARS + 1), value=1)
    with pytest.raises(ValidationError):
        FilterCondition(field="a", op="like", value="x")  # type: ignore[arg-type]


# -- reports -------------------------------------------------------------------------------------


def test_ingest_report_merge() -> None:
    r1 = Rejection(id="a", code="validation", reason="empty", stage="validate", position=0)
    r2 = Rejection(id="b", code="image_not_found", reason="gone", stage="load")
    left = IngestReport(indexed=3, deleted=1, rejected=[r1], stage_seconds={"embed": 1.5, "load": 0.5}, seconds=2.0)
    right = IngestReport(indexed=2, rejected=[r2], stage_seconds={"embed": 0.25, "upsert": 1.0}, seconds=1.25)
    merged = left.merge(right)
    assert merged.indexed == 5
    assert merged.deleted == 1
    assert merged.rejected == [r1, r2]
    assert merged.stage_seconds == {"embed": 1.75, "load": 0.5, "upsert": 1.0}
    assert merged.seconds == 3.25
    # merge builds a new report: the inputs are unchanged
    assert left.indexed == 3 and left.stage_seconds == {"embed": 1.5, "load": 0.5}
    assert IngestReport().merge(IngestReport()) == IngestReport()


def test_rejection_round_trips_and_validates_stage() -> None:
    rejection = Rejection(id=None, code="validation", reason="r", stage="embed", document={"id": 1})
    assert rejection.at.tzinfo is not None
    assert Rejection.model_validate_json(rejection.model_dump_json()) == rejection
    with pytest.raises(ValidationError):
        Rejection(id="a", code="c", reason="r", stage="index")  # type: ignore[arg-type]


def test_rejection_keepable() -> None:
    small = {"id": "1", "title": "t"}
    assert Rejection.keepable(small) is small
    padding = MAX_KEPT_DOCUMENT_CHARS - len('{"id": "1", "caption": ""}')
    at_limit = {"id": "1", "caption": "c" * padding}
    assert Rejection.keepable(at_limit) is at_limit
    assert Rejection.keepable({"id": "1", "caption": "c" * (padding + 1)}) is None
    assert Rejection.keepable("not a dict") is None
    assert Rejection.keepable(["id", "1"]) is None
    assert Rejection.keepable({"id": object()}) is not None  # default=str copes with odd values
    circular: dict[str, Any] = {"id": "1"}
    circular["self"] = circular
    assert Rejection.keepable(circular) is None


# -- errors --------------------------------------------------------------------------------------


def all_error_classes() -> list[type[ClipfuseError]]:
    found = [
        obj
        for obj in vars(errors_module).values()
        if isinstance(obj, type) and issubclass(obj, ClipfuseError) and obj.__module__ == errors_module.__name__
    ]
    assert set(found) >= {
        ClipfuseError,
        ConfigurationError,
        InvalidDocument,
        InvalidQuery,
        EmbeddingError,
        BackendError,
        BackendUnavailable,
    }
    assert {cls.__name__ for cls in found} == set(errors_module.__all__)
    return found


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda cls: cls.__name__)
def test_errors_pickle_round_trip(cls: type[ClipfuseError]) -> None:
    error = cls("something went wrong: ünïcode")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is cls
    assert str(again) == str(error) == "something went wrong: ünïcode"
    assert again.message == error.message
    assert again.args == error.args


def test_invalid_document_pickle_keeps_doc_id_and_code() -> None:
    error = InvalidDocument("too big", doc_id="sku-1", code="image_too_large")
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        again = pickle.loads(pickle.dumps(error, protocol=protocol))
        assert isinstance(again, InvalidDocument)
        assert (again.message, again.doc_id, again.code) == ("too big", "sku-1", "image_too_large")
    default = pickle.loads(pickle.dumps(InvalidDocument("x")))
    assert (default.doc_id, default.code) == (None, "invalid")


def test_error_hierarchy() -> None:
    assert issubclass(BackendUnavailable, BackendError)
    for cls in (ConfigurationError, InvalidDocument, InvalidQuery, EmbeddingError, BackendError):
        assert issubclass(cls, ClipfuseError)
    assert issubclass(ClipfuseError, Exception)


# -- properties ----------------------------------------------------------------------------------

if hypothesis is not None:
    json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    junk = (
        json_scalars
        | st.lists(json_scalars, max_size=3)
        | st.dictionaries(st.text(max_size=4), json_scalars, max_size=2)
    )
    image_entries = (
        st.text(max_size=12)
        | st.sampled_from(["http://x/a.jpg", "a.jpg", "ftp://x"])
        | st.fixed_dictionaries({}, optional={"path": st.text(max_size=8), "url": st.text(max_size=12), "data": junk})
        | junk
    )
    attribute_values = json_scalars | st.lists(json_scalars, max_size=4) | junk
    documents = st.fixed_dictionaries(
        {},
        optional={
            "id": st.text(max_size=10) | st.integers() | junk,
            "images": st.lists(image_entries, max_size=3) | junk,
            "title": st.text(max_size=12) | junk,
            "caption": st.text(max_size=12),
            "description": st.text(max_size=12),
            "attributes": st.dictionaries(
                st.text(max_size=6) | st.sampled_from(sorted(RESERVED_FIELDS)), attribute_values, max_size=4
            )
            | junk,
            "extra": junk,
        },
    )

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(documents)
    def test_parse_document_only_raises_invalid_document(raw: dict[str, Any]) -> None:
        try:
            doc = parse_document(raw)
        except InvalidDocument as e:
            assert e.code == "validation"
            assert e.message
        else:
            assert doc.id
            assert doc.images or doc.text.strip()

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(st.text(max_size=40))
    def test_parse_filter_only_raises_invalid_query(expression: str) -> None:
        try:
            condition = parse_filter(expression)
        except InvalidQuery as e:
            assert e.message
        else:
            assert condition.field
            assert condition.op in ("eq", "ne", "lt", "lte", "gt", "gte", "in", "nin")

    @hypothesis.settings(max_examples=200, deadline=None)
    @hypothesis.given(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True),
        st.sampled_from(["=", "!=", "<", "<=", ">", ">="]),
        st.integers(min_value=-(10**12), max_value=10**12),
    )
    def test_parse_filter_integers_round_trip(field: str, op: str, number: int) -> None:
        condition = parse_filter(f"{field}{op}{number}")
        assert condition.field == field
        assert condition.value == number and type(condition.value) is int


def test_parse_weights_is_the_one_weights_reader() -> None:
    from clipfuse.errors import InvalidQuery
    from clipfuse.schemas import Weights, parse_weights

    assert parse_weights(None) == parse_weights("  ") == Weights()
    assert parse_weights("image=2, bm25=0") == Weights(image=2, text=1, bm25=0)
    assert parse_weights("text=0.5,") == Weights(text=0.5)
    for spec, message in [
        ("colour=1", "cannot read 'colour=1'"),
        ("image=x", "cannot read 'image=x': image needs a number"),
        ("image", "cannot read 'image'"),
        ("image=1000", "less than or equal"),
    ]:
        with pytest.raises(InvalidQuery, match=message):
            parse_weights(spec)

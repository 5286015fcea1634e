"""Algolia-compatible search: reading requests, parsing filters, shaping responses (pure: no I/O, no FastAPI).

What InstantSearch (and any Algolia client) sends to ``POST /1/indexes/*/queries``
is read here into clipfuse's own request model, and clipfuse's hits are shaped
back into Algolia's response. The HTTP routes (:mod:`clipfuse.service.algolia_api`)
only move bytes.

- ``params`` arrive as a URL-encoded string (algoliasearch v4: arrays and objects
  JSON-encoded inside it), as an object (``{"params": {...}}``), or flattened into the
  request (algoliasearch v5); :func:`request_params` merges them.
- :class:`AlgoliaParams` types every supported parameter with its limits; a wrong
  type is an :class:`AlgoliaError` (HTTP 400 ``{"message": ..., "status": 400}``)
  naming the parameter. Unknown parameters are ignored; the few known ones that
  would change what the results mean and that clipfuse cannot honour
  (:data:`UNSUPPORTED`) are refused instead of silently ignored.
- ``facetFilters`` (OR inside a nested array, AND outside, ``attr:-value`` NOT),
  ``numericFilters`` and the ``filters`` string (:func:`parse_filters`) all become
  :class:`~clipfuse.schemas.FilterCondition` s and :class:`~clipfuse.schemas.FilterGroup`
  trees; :func:`split_filters` keeps what is a plain AND of conditions (an OR inside
  one field becomes ``in``) as ``SearchRequest.filters`` and only the rest as the
  ``SearchRequest.where`` tree.
- ``_highlightResult`` marks the query's words (:func:`highlight`); facets, collapse
  and totals are :class:`~clipfuse.plugin.HybridSearcher`'s own, over its candidate window.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from clipfuse.errors import InvalidQuery
from clipfuse.schemas import FieldType, FilterCondition, FilterExpr, FilterGroup, Hit, Weights, parse_weights
from clipfuse.schemas import limits as L

__all__ = [
    "DEFAULT_HIGHLIGHT",
    "UNSUPPORTED",
    "AlgoliaError",
    "AlgoliaParams",
    "facet_filters",
    "highlight",
    "numeric_filters",
    "parse_filters",
    "parse_params",
    "read_params",
    "request_params",
    "shape_hit",
    "split_filters",
]

#: text attributes highlighted when ``attributesToHighlight`` is not given (the BM25 fields)
DEFAULT_HIGHLIGHT: tuple[str, ...] = ("title", "caption", "description")
MAX_FILTERS_CHARS = 4_096
MAX_FACETS = 64
MAX_HITS_PER_PAGE = 1_000
MAX_PAGE = 1_000
MAX_TAG_CHARS = 64
#: parameters Algolia defines that would change what the results mean and that clipfuse does not do:
#: refused with a 400 naming them (when set to something other than their "off" value), never ignored
UNSUPPORTED: dict[str, str] = {
    "tagFilters": "clipfuse has no _tags: filter on an attribute with facetFilters or filters instead",
    "optionalFilters": "optional filters (score boosts by filter) are not supported: use clipfuse's boosts",
    "sumOrFiltersScores": "filter scores are not supported",
    "aroundLatLng": "geo search is not supported",
    "aroundLatLngViaIP": "geo search is not supported",
    "insideBoundingBox": "geo search is not supported",
    "insidePolygon": "geo search is not supported",
    "similarQuery": "similarQuery is not supported: send the text as query",
    "facetQuery": "searchForFacetValues is not supported",
}
_OFF_VALUES: tuple[Any, ...] = (None, "", [], False, "false", "[]")


class AlgoliaError(InvalidQuery):
    """A request the Algolia-compatible API refuses: answered ``{"message": ..., "status": status}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.message, self.status))

    def body(self) -> dict[str, Any]:
        return {"message": self.message, "status": self.status}


# -- params ------------------------------------------------------------------------------
def parse_params(raw: Any) -> dict[str, Any]:
    """``params`` as algoliasearch sends it: a URL-encoded string (v4), an object (v5), or nothing."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    if not isinstance(raw, str):
        raise AlgoliaError(f"params must be a URL-encoded string or an object, got {type(raw).__name__}")
    if len(raw) > 64 * 1024:
        raise AlgoliaError("params is over 64 KiB")
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=True, max_num_fields=200)
    except ValueError as e:
        raise AlgoliaError(f"params is not a URL-encoded string (name=value&...): {e}") from None
    out: dict[str, Any] = {}
    for name, value in pairs:
        out[name] = _decode_string_value(value)
    return out


def _decode_string_value(value: str) -> Any:
    """A value from the URL-encoded form: arrays and objects are JSON inside it; the rest stays a string."""
    stripped = value.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except ValueError:
            return value  # a filters string may start with a parenthesis-like bracket; the field decides
    return value


def request_params(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of one request of a multi-query (``params`` merged with flattened v5 keys)."""
    if not isinstance(entry, Mapping):
        raise AlgoliaError(f"each request must be an object with indexName and params, got {type(entry).__name__}")
    params = parse_params(entry.get("params"))
    for key, value in entry.items():
        if key not in ("params", "indexName", "type"):
            params.setdefault(key, value)
    if entry.get("type") == "facet":
        raise AlgoliaError("searchForFacetValues (request type 'facet') is not supported", 400)
    return params


def _list_of_strings(value: Any) -> Any:
    if isinstance(value, str):
        if value.strip()[:1] == "[":
            try:
                return json.loads(value)
            except ValueError:
                return value
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _boolish(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    return value


class AlgoliaParams(BaseModel):
    """The search parameters clipfuse reads, typed, with Algolia's names and defaults."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    query: Annotated[str, Field(max_length=L.MAX_QUERY_TEXT_CHARS)] = ""
    page: Annotated[int, Field(ge=0, le=MAX_PAGE)] = 0
    hitsPerPage: Annotated[int, Field(ge=0, le=MAX_HITS_PER_PAGE)] = 20
    offset: Annotated[int, Field(ge=0, le=L.MAX_OFFSET)] | None = None
    length: Annotated[int, Field(ge=0, le=MAX_HITS_PER_PAGE)] | None = None
    facets: Annotated[
        list[Annotated[str, Field(max_length=L.MAX_ATTRIBUTE_NAME_CHARS)]], Field(max_length=MAX_FACETS)
    ] = []
    maxValuesPerFacet: Annotated[int, Field(ge=1, le=1_000)] = 100
    facetFilters: list[str | list[str]] = []
    numericFilters: list[str | list[str]] = []
    filters: Annotated[str, Field(max_length=MAX_FILTERS_CHARS)] = ""
    attributesToRetrieve: list[str] | None = None
    attributesToHighlight: list[str] | None = None
    highlightPreTag: Annotated[str, Field(max_length=MAX_TAG_CHARS)] = "<em>"
    highlightPostTag: Annotated[str, Field(max_length=MAX_TAG_CHARS)] = "</em>"
    getRankingInfo: bool = False
    #: False / 0: off; True / 1: one hit per group; N: at most N hits per group
    distinct: bool | Annotated[int, Field(ge=0, le=100)] = False
    # accepted and ignored: clipfuse keeps no analytics
    analytics: Any = None
    clickAnalytics: Any = None
    userToken: Any = None
    # clipfuse's extensions
    #: a query image: an http(s) URL, or base64 data (a ``data:`` URL's payload or the bare base64)
    clipfuseImage: Annotated[str, Field(max_length=L.MAX_INLINE_IMAGE_CHARS)] | None = None
    clipfuseWeights: Weights | None = None
    clipfuseFusion: Literal["rrf", "dbsf", "linear", "zscore"] | None = None
    #: the attribute ``distinct`` collapses on (default: the service's setting, ``group_id``)
    clipfuseDistinctField: Annotated[str, Field(max_length=L.MAX_ATTRIBUTE_NAME_CHARS)] | None = None

    @field_validator("facets", "attributesToRetrieve", "attributesToHighlight", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return _list_of_strings(value)

    @field_validator("facetFilters", "numericFilters", mode="before")
    @classmethod
    def _nested(cls, value: Any) -> Any:
        if isinstance(value, str):
            stripped = value.strip()
            if stripped[:1] == "[":
                try:
                    return json.loads(stripped)
                except ValueError:
                    raise ValueError("is not a JSON array") from None
            # Algolia's legacy string form: comma-separated, AND
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("getRankingInfo", "distinct", mode="before")
    @classmethod
    def _flags(cls, value: Any) -> Any:
        value = _boolish(value)
        if isinstance(value, str) and value.isdigit():
            return int(value)
        return value

    @field_validator("clipfuseWeights", mode="before")
    @classmethod
    def _weights(cls, value: Any) -> Any:
        if isinstance(value, str):  # "image=1,text=0.5": the one weights syntax (parse_weights)
            try:
                return parse_weights(value)
            except InvalidQuery as e:
                raise ValueError(e.message) from None
        return value

    @property
    def distinct_count(self) -> int:
        return int(self.distinct) if not isinstance(self.distinct, bool) else (1 if self.distinct else 0)


def read_params(raw: Mapping[str, Any]) -> AlgoliaParams:
    """Typed parameters from the merged ``params``; a wrong type is a 400 naming the parameter."""
    for name, why in UNSUPPORTED.items():
        if name in raw and raw[name] not in _OFF_VALUES:
            raise AlgoliaError(f"parameter {name} is not supported by clipfuse: {why}")
    try:
        return AlgoliaParams.model_validate(dict(raw))
    except ValidationError as e:
        parts = []
        for error in e.errors()[:5]:
            where = ".".join(str(p) for p in error.get("loc", ()))
            parts.append(f"{where}: {str(error.get('msg', 'invalid')).removeprefix('Value error, ')}")
        raise AlgoliaError("invalid parameter " + "; ".join(parts)) from None


def encode_params(raw: Mapping[str, Any]) -> str:
    """``params`` as Algolia echoes them: URL-encoded, arrays and objects as JSON."""
    return urlencode(
        [
            (k, json.dumps(v, separators=(",", ":")) if isinstance(v, (list, dict)) else _plain(v))
            for k, v in raw.items()
            if k != "clipfuseImage"  # megabytes of base64 are not echoed back
        ]
    )


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -- filters -----------------------------------------------------------------------------
def _all(items: Sequence[FilterExpr]) -> FilterExpr:
    return items[0] if len(items) == 1 else FilterGroup(all=list(items))


def _any(items: Sequence[FilterExpr]) -> FilterExpr:
    return items[0] if len(items) == 1 else FilterGroup(any=list(items))


def _not(item: FilterExpr) -> FilterExpr:
    return FilterGroup(none=[item])


def _facet_filter(text: Any, where: str) -> FilterExpr:
    """``attr:value``; ``attr:-value`` is NOT; ``attr:\\-value`` is a value starting with '-'."""
    if not isinstance(text, str):
        raise AlgoliaError(f"{where}: a facet filter is a string 'attribute:value', got {json.dumps(text)[:80]}")
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name:
        raise AlgoliaError(f"{where}: cannot read facet filter {text[:100]!r}: write 'attribute:value'")
    negated = False
    if name.startswith("-"):  # '-attribute:value' is read as NOT too
        negated, name = True, name[1:].strip()
    if value.startswith("-"):
        negated, value = True, value[1:]
    elif value.startswith("\\-"):
        value = value[1:]
    condition = _condition(name, "eq", value, where)
    return _not(condition) if negated else condition


def _condition(name: str, op: str, value: Any, where: str) -> FilterCondition:
    try:
        return FilterCondition(field=name, op=op, value=value)  # type: ignore[arg-type]
    except ValidationError as e:
        raise AlgoliaError(f"{where}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def _nested(value: Sequence[Any], leaf: Any, name: str) -> list[FilterExpr]:
    out: list[FilterExpr] = []
    for i, item in enumerate(value):
        if isinstance(item, list):
            if not item:
                continue
            if any(isinstance(sub, list) for sub in item):
                raise AlgoliaError(f"{name}[{i}]: at most two levels of nesting (OR inside, AND outside)")
            out.append(_any([leaf(sub, f"{name}[{i}]") for sub in item]))
        else:
            out.append(leaf(item, f"{name}[{i}]"))
    return out


def facet_filters(value: Sequence[Any]) -> list[FilterExpr]:
    """``facetFilters``: each item is ANDed; a nested array is an OR of its items."""
    return _nested(value, _facet_filter, "facetFilters")


_NUMERIC_RE = re.compile(r"^\s*(.+?)\s*(<=|>=|!=|=|<|>)\s*(\S+)\s*$")
_RANGE_RE = re.compile(r"^\s*(.+?)\s*:\s*(\S+)\s+TO\s+(\S+)\s*$")
_NUM_OPS = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte", "=": "eq", "!=": "ne"}


def _number(text: str, where: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise AlgoliaError(f"{where}: {text[:40]!r} is not a number") from None
    if not math.isfinite(number):
        raise AlgoliaError(f"{where}: numbers must be finite, got {text[:40]!r}")
    return number


def _range(name: str, low: float, high: float) -> FilterExpr:
    return FilterGroup(
        all=[FilterCondition(field=name, op="gte", value=low), FilterCondition(field=name, op="lte", value=high)]
    )


def _numeric_filter(text: Any, where: str) -> FilterExpr:
    if not isinstance(text, str):
        raise AlgoliaError(f"{where}: a numeric filter is a string like 'price>=10', got {json.dumps(text)[:80]}")
    match = _RANGE_RE.match(text)
    if match:
        name, low, high = match.groups()
        return _range(name.strip(), _number(low, where), _number(high, where))
    match = _NUMERIC_RE.match(text)
    if not match:
        raise AlgoliaError(
            f"{where}: cannot read numeric filter {text[:100]!r}: write 'attribute OP number' with OP one of "
            "< <= = != >= >, or 'attribute:LOW TO HIGH'"
        )
    name, op, number = match.groups()
    return _condition(name.strip(), _NUM_OPS[op], _number(number, where), where)


def numeric_filters(value: Sequence[Any]) -> list[FilterExpr]:
    """``numericFilters``: ``price>=10``, ``price:10 TO 100``; nested arrays are ORs."""
    return _nested(value, _numeric_filter, "numericFilters")


# The filters string: a small recursive-descent parser over tokens.
_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<lparen>\() | (?P<rparen>\)) |
        (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*') |
        (?P<op><=|>=|!=|<|>|=) | (?P<colon>:) |
        (?P<word>[^\s()"':<>=!]+) |
        (?P<other>\S)
    )""",
    re.X,
)
_MAX_PARSE_DEPTH = 32


class _Token:
    __slots__ = ("kind", "position", "text")

    def __init__(self, kind: str, text: str, position: int) -> None:
        self.kind, self.text, self.position = kind, text, position

    def describe(self) -> str:
        return f"{self.text!r} at character {self.position + 1}"


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN_RE.match(text, position)
        if match is None or match.end() == position:
            break
        kind = match.lastgroup or "other"
        value = match.group(kind)
        start = match.start(kind)
        if kind == "string":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        elif kind == "word" and value in ("AND", "OR", "NOT", "TO"):
            kind = value
        out.append(_Token(kind, value, start))
        position = match.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0
        self.depth = 0

    def fail(self, message: str) -> AlgoliaError:
        return AlgoliaError(f"filters: {message} in {self.text[:200]!r}")

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, *kinds: str) -> _Token:
        token = self.peek()
        if token is None:
            raise self.fail(f"expected {' or '.join(kinds)} but the filter ended")
        if token.kind not in kinds:
            raise self.fail(f"expected {' or '.join(kinds)}, found {token.describe()}")
        self.i += 1
        return token

    def parse(self) -> FilterExpr:
        if not self.tokens:
            raise self.fail("empty filter")
        expr = self.expr()
        token = self.peek()
        if token is not None:
            hint = ""
            if token.kind == "word" and token.text.upper() in ("AND", "OR", "NOT", "TO"):
                hint = f" (operators are upper case: {token.text.upper()})"
            elif token.kind in ("word", "string", "NOT", "lparen"):
                hint = " (join conditions with AND or OR)"
            raise self.fail(f"unexpected {token.describe()}{hint}")
        return expr

    def expr(self) -> FilterExpr:
        items = [self.conjunction()]
        while (token := self.peek()) is not None and token.kind == "OR":
            self.i += 1
            items.append(self.conjunction())
        return _flatten_any(items)

    def conjunction(self) -> FilterExpr:
        items = [self.unary()]
        while (token := self.peek()) is not None and token.kind == "AND":
            self.i += 1
            items.append(self.unary())
        return _flatten_all(items)

    def unary(self) -> FilterExpr:
        token = self.peek()
        if token is None:
            raise self.fail("expected a condition but the filter ended")
        if token.kind == "NOT":
            self.i += 1
            return _not(self.unary())
        if token.kind == "lparen":
            self.i += 1
            self.depth += 1
            if self.depth > _MAX_PARSE_DEPTH:
                raise self.fail(f"parentheses nested deeper than {_MAX_PARSE_DEPTH}")
            inner = self.expr()
            self.take("rparen")
            self.depth -= 1
            return inner
        return self.comparison()

    def comparison(self) -> FilterExpr:
        start = self.peek()
        assert start is not None
        if start.kind == "op" and start.text == "<":
            raise self.fail(f"filter scores ('<score=N>') are not supported ({start.describe()})")
        if start.kind not in ("word", "string"):
            raise self.fail(f"expected an attribute name, found {start.describe()}")
        self.i += 1
        name = start.text
        token = self.peek()
        if token is None or token.kind not in ("colon", "op"):
            raise self.fail(
                f"{name!r} has no ':value' or comparison: tag filters (a bare word) are not supported; "
                "write attribute:value"
            )
        self.i += 1
        if token.kind == "op":
            value = self.take("word", "string")
            return _condition(name, _NUM_OPS[token.text], _number(value.text, "filters"), "filters")
        value = self.take("word", "string")
        nxt = self.peek()
        if nxt is not None and nxt.kind == "TO":
            self.i += 1
            high = self.take("word", "string")
            return _range(name, _number(value.text, "filters"), _number(high.text, "filters"))
        if nxt is not None and nxt.kind == "op" and nxt.text == "<":
            raise self.fail(f"filter scores ('<score=N>') are not supported ({nxt.describe()})")
        return _condition(name, "eq", value.text, "filters")


def _flatten_all(items: list[FilterExpr]) -> FilterExpr:
    flat: list[FilterExpr] = []
    for item in items:
        if isinstance(item, FilterGroup) and not item.any and not item.none:
            flat.extend(item.all)
        else:
            flat.append(item)
    return _all(flat)


def _flatten_any(items: list[FilterExpr]) -> FilterExpr:
    flat: list[FilterExpr] = []
    for item in items:
        if isinstance(item, FilterGroup) and not item.all and not item.none and len(item.any) > 0:
            flat.extend(item.any)
        else:
            flat.append(item)
    return _any(flat)


def parse_filters(text: str) -> FilterExpr | None:
    """Algolia's ``filters`` string as a filter expression (None for an empty string).

    Supported: ``attribute:value`` (quoted ``"..."`` / ``'...'`` names and values, ``\\``
    escapes), numeric comparisons ``price < 10`` (``< <= = != >= >``), ranges
    ``price:10 TO 100`` (inclusive), ``AND``, ``OR``, ``NOT``, parentheses, in any
    combination (also ORs of ANDs and NOT of a group, which Algolia itself refuses).
    Refused with a message naming the spot: tag filters (a bare word), filter scores
    (``<score=2>``), lower-case operators, anything unbalanced.
    """
    if not text.strip():
        return None
    try:
        return _Parser(text).parse()
    except ValidationError as e:  # a FilterGroup over its limits
        raise AlgoliaError(f"filters: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def split_filters(exprs: Iterable[FilterExpr]) -> tuple[list[FilterCondition], FilterGroup | None]:
    """An AND of expressions as (plain conditions, the tree of what is not one).

    A condition stays a condition; an OR of ``eq`` on one field becomes ``in``; NOT
    of an ``eq`` / ``in`` becomes ``ne`` / ``nin`` (both let a document without the
    field pass, as NOT does); nested ANDs are flattened. Whatever remains (an OR
    across fields, NOT of a range or a group) goes into one ``FilterGroup(all=...)``.
    """
    plain: list[FilterCondition] = []
    rest: list[FilterExpr] = []
    pending = list(exprs)
    while pending:
        expr = pending.pop(0)
        if isinstance(expr, FilterCondition):
            plain.append(expr)
            continue
        if not expr.any and not expr.none:
            pending[:0] = expr.all
            continue
        simple = _as_condition(expr)
        if simple is not None:
            plain.append(simple)
        else:
            rest.append(expr)
    if len(plain) > L.MAX_FILTERS:
        rest = [*plain[L.MAX_FILTERS :], *rest]
        plain = plain[: L.MAX_FILTERS]
    try:
        tree = FilterGroup(all=rest) if rest else None
    except ValidationError as e:
        raise AlgoliaError(f"filters: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    return plain, tree


def _values(expr: FilterExpr) -> tuple[str, list[Any]] | None:
    """(field, values) when ``expr`` is an ``eq`` / ``in`` / OR of those on one field."""
    if isinstance(expr, FilterCondition):
        if expr.op == "eq":
            return expr.field, [expr.value]
        if expr.op == "in":
            return expr.field, list(expr.value)  # type: ignore[arg-type]
        return None
    if expr.all or expr.none or not expr.any:
        return None
    field: str | None = None
    values: list[Any] = []
    for item in expr.any:
        found = _values(item)
        if found is None or (field is not None and found[0] != field):
            return None
        field = found[0]
        values.extend(v for v in found[1] if v not in values)
    return (field, values) if field is not None else None


def _as_condition(group: FilterGroup) -> FilterCondition | None:
    if group.any and not group.all and not group.none:
        found = _values(group)
        if found is not None and len(found[1]) <= L.MAX_FILTER_VALUES:
            return FilterCondition(field=found[0], op="in", value=found[1])
        return None
    if group.none and not group.all and not group.any:
        fields: set[str] = set()
        values: list[Any] = []
        for item in group.none:  # NOT a AND NOT b on one field = none of
            found = _values(item)
            if found is None:
                return None
            fields.add(found[0])
            values.extend(v for v in found[1] if v not in values)
        if len(fields) == 1 and len(values) <= L.MAX_FILTER_VALUES:
            name = fields.pop()
            return (
                FilterCondition(field=name, op="ne", value=values[0])
                if len(values) == 1
                else FilterCondition(field=name, op="nin", value=values)
            )
    return None


def filters_of(params: AlgoliaParams) -> tuple[list[FilterCondition], FilterGroup | None]:
    """Every filter parameter of a request, ANDed, as (conditions, tree)."""
    exprs: list[FilterExpr] = [*facet_filters(params.facetFilters), *numeric_filters(params.numericFilters)]
    parsed = parse_filters(params.filters)
    if parsed is not None:
        exprs.append(parsed)
    return split_filters(exprs)


# -- facets ------------------------------------------------------------------------------
def facet_names(requested: Sequence[str], fields: Mapping[str, FieldType]) -> list[str]:
    """The facets to count: ``["*"]`` is every filterable field; an unknown name is a 400."""
    if not requested:
        return []
    if "*" in requested:
        return sorted(fields)
    unknown = [name for name in requested if name not in fields]
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        raise AlgoliaError(f"facets: unknown attribute {unknown[0]!r}; facetable attributes: {known}")
    return list(dict.fromkeys(requested))


def _facet_key(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# -- hits --------------------------------------------------------------------------------
_WORD_RE = re.compile(r"\w+", re.UNICODE)


def query_words(query: str) -> list[str]:
    return list(dict.fromkeys(w.lower() for w in _WORD_RE.findall(query)))


def _word_matches(token: str, word: str, *, prefix: bool) -> bool:
    if token == word or (prefix and token.startswith(word)):
        return True
    # plural tolerance, the way a stemmed BM25 field matched it: boot ~ boots, dress ~ dresses
    return token.rstrip("s") == word.rstrip("s") and abs(len(token) - len(word)) <= 2 and len(word) > 2


def highlight(text: str, words: Sequence[str], pre: str, post: str) -> dict[str, Any]:
    """One ``_highlightResult`` entry: the text with matched words wrapped, matchLevel, matchedWords."""
    matched: list[str] = []
    parts: list[str] = []
    cursor = 0
    tokens = 0
    marked = 0
    for match in _WORD_RE.finditer(text):
        tokens += 1
        token = match.group(0).lower()
        hit = next(
            (w for i, w in enumerate(words) if _word_matches(token, w, prefix=i == len(words) - 1)),
            None,
        )
        if hit is None:
            continue
        marked += 1
        if hit not in matched:
            matched.append(hit)
        parts.append(text[cursor : match.start()])
        parts.append(f"{pre}{match.group(0)}{post}")
        cursor = match.end()
    parts.append(text[cursor:])
    level = "none" if not matched else ("full" if len(matched) == len(words) else "partial")
    result: dict[str, Any] = {"value": "".join(parts), "matchLevel": level, "matchedWords": matched}
    if matched:
        result["fullyHighlighted"] = marked == tokens
    return result


def _highlight_value(value: Any, words: Sequence[str], pre: str, post: str) -> Any:
    if isinstance(value, str):
        return highlight(value, words, pre, post)
    if isinstance(value, list):
        return [_highlight_value(v, words, pre, post) for v in value]
    return {"value": _facet_key(value), "matchLevel": "none", "matchedWords": []}


def _retrieved(record: Mapping[str, Any], attributes: Sequence[str] | None) -> dict[str, Any]:
    if attributes is None or "*" in attributes:
        excluded = {a[1:] for a in (attributes or ()) if a.startswith("-")}
        return {k: v for k, v in record.items() if k not in excluded}
    return {k: record[k] for k in attributes if k in record}


def shape_hit(
    hit: Hit,
    params: AlgoliaParams,
    *,
    record: Mapping[str, Any],
    fusion: str,
    fused_by: str,
) -> dict[str, Any]:
    """One Algolia hit: the retrieved attributes, ``objectID``, ``_highlightResult``, ``_rankingInfo``."""
    out = _retrieved(record, params.attributesToRetrieve)
    out["objectID"] = hit.id
    words = query_words(params.query)
    wanted = params.attributesToHighlight
    if wanted is None:
        names = [name for name in DEFAULT_HIGHLIGHT if name in record]
    elif "*" in wanted:
        names = [name for name, value in record.items() if isinstance(value, (str, list)) and name != "images"]
    else:
        names = [name for name in wanted if name in record]
    if names:
        out["_highlightResult"] = {
            name: _highlight_value(record[name], words, params.highlightPreTag, params.highlightPostTag)
            for name in names
        }
    if params.getRankingInfo:
        out["_rankingInfo"] = ranking_info(hit, words, record, fusion=fusion, fused_by=fused_by)
    return out


def ranking_info(
    hit: Hit, words: Sequence[str], record: Mapping[str, Any], *, fusion: str, fused_by: str
) -> dict[str, Any]:
    """Algolia's ``_rankingInfo`` keys (neutral where clipfuse has no such notion) plus ``clipfuse``:
    each signal's raw score and rank, the fused score and rank, and whatever else the hit explains."""
    texts = " ".join(str(record.get(name, "")) for name in DEFAULT_HIGHLIGHT).lower()
    tokens = set(_WORD_RE.findall(texts))
    exact = sum(1 for w in words if w in tokens)
    signals = {
        name: {"score": getattr(hit.signals, name), "rank": getattr(hit.ranks, name)}
        for name in ("image", "text", "bm25")
    }
    explanation: dict[str, Any] = {
        "rank": hit.rank,
        "score": hit.score,
        "fusion": fusion,
        "fused_by": fused_by,
        "signals": signals,
    }
    # fields later issues add to a hit (boosts, rule, explanation, variants) travel as they are
    extra = hit.model_dump(mode="json", exclude={"id", "rank", "score", "signals", "ranks", "payload"})
    explanation.update({k: v for k, v in extra.items() if v not in (None, [], {})})
    return {
        "nbTypos": 0,
        "firstMatchedWord": 0,
        "proximityDistance": 0,
        "userScore": 0,
        "geoDistance": 0,
        "geoPrecision": 1,
        "nbExactWords": exact,
        "words": len(words),
        "filters": 0,
        "clipfuse": explanation,
    }

"""What a search asks and what it returns."""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from clipfuse.errors import InvalidQuery
from clipfuse.schemas import limits as L
from clipfuse.schemas.documents import ImageSource, Scalar

__all__ = [
    "Boost",
    "BoostExplanation",
    "Collapse",
    "DecayBoost",
    "Explanation",
    "FacetScope",
    "FacetStats",
    "FieldBoost",
    "FieldType",
    "FilterBoost",
    "FilterCondition",
    "FilterExpr",
    "FilterGroup",
    "FilterOp",
    "FusionMethod",
    "Hit",
    "SearchRequest",
    "SearchResponse",
    "SignalExplanation",
    "SignalScores",
    "Total",
    "Variant",
    "Weights",
    "parse_boost",
    "parse_date",
    "parse_duration",
    "parse_filter",
    "parse_weights",
]

FusionMethod = Literal["rrf", "dbsf", "linear", "zscore"]
FilterOp = Literal["eq", "ne", "lt", "lte", "gt", "gte", "in", "nin"]
FieldType = Literal["keyword", "number", "bool"]
SIGNALS: tuple[str, ...] = ("image", "text", "bm25")

Weight = Annotated[float, Field(ge=0.0, le=L.MAX_WEIGHT, allow_inf_nan=False)]
FieldName = Annotated[str, Field(min_length=1, max_length=L.MAX_ATTRIBUTE_NAME_CHARS)]
FacetScope = Literal["window", "matches"]
BoostFunction = Literal["log1p", "sqrt", "linear"]
DecayFunction = Literal["gauss", "exp", "linear"]
BoostWeight = Annotated[float, Field(ge=-L.MAX_BOOST_WEIGHT, le=L.MAX_BOOST_WEIGHT, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Weights(_Model):
    """Weight of each signal in the fusion; 0 switches a signal off.

    ``image``: the query against the products' image vectors; ``text``: against
    their text (title + caption) vectors; ``bm25``: keyword match on their texts.
    """

    image: Weight = 1.0
    text: Weight = 1.0
    bm25: Weight = 1.0

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.image, self.text, self.bm25)


class FilterCondition(_Model):
    """``field op value``; ``in`` / ``nin`` take a list."""

    field: Annotated[str, Field(min_length=1, max_length=L.MAX_ATTRIBUTE_NAME_CHARS)]
    op: FilterOp = "eq"
    value: Scalar | Annotated[list[Scalar], Field(min_length=1, max_length=L.MAX_FILTER_VALUES)]

    @model_validator(mode="after")
    def _shape(self) -> FilterCondition:
        is_list = isinstance(self.value, list)
        if self.op in ("in", "nin") and not is_list:
            raise ValueError(f"filter on {self.field!r}: '{self.op}' needs a list of values")
        if self.op not in ("in", "nin") and is_list:
            raise ValueError(f"filter on {self.field!r}: '{self.op}' takes one value, not a list")
        if self.op in ("lt", "lte", "gt", "gte") and (
            isinstance(self.value, bool) or not isinstance(self.value, (int, float))
        ):
            raise ValueError(f"filter on {self.field!r}: '{self.op}' needs a number, got {self.value!r}")
        values = self.value if isinstance(self.value, list) else [self.value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"filter on {self.field!r}: numbers must be finite")
        return self


class FilterGroup(_Model):
    """A boolean filter tree node: ``all`` of, ``any`` of and ``none`` of its items must hold.

    The three lists are Qdrant's ``Filter(must, should, must_not)`` and Elasticsearch's
    ``bool`` (``filter``, ``should`` with ``minimum_should_match: 1``, ``must_not``), so each
    engine translates a node into one native node. An empty list puts no condition:
    ``{"any": [a, b]}`` is ``a OR b``, ``{"none": [a]}`` is ``NOT a``, and a node holds when
    its ``all`` items all hold, at least one ``any`` item holds (if there are any) and no
    ``none`` item holds. Items are conditions or nested groups, at most
    ``MAX_FILTER_DEPTH`` deep and ``MAX_FILTER_NODES`` conditions in all.

    >>> FilterGroup(any=[FilterCondition(field="brand", value="Acme"),
    ...                  FilterCondition(field="price", op="lt", value=20)])  # brand:Acme OR price < 20
    """

    all: list[FilterExpr] = []
    any: list[FilterExpr] = []
    none: list[FilterExpr] = []

    @model_validator(mode="after")
    def _bounded(self) -> FilterGroup:
        if not (self.all or self.any or self.none):
            raise ValueError("a filter group needs at least one item in 'all', 'any' or 'none'")
        depth, nodes = _tree_size(self)
        if depth > L.MAX_FILTER_DEPTH:
            raise ValueError(f"filter tree is {depth} groups deep; at most MAX_FILTER_DEPTH={L.MAX_FILTER_DEPTH}")
        if nodes > L.MAX_FILTER_NODES:
            raise ValueError(f"filter tree has {nodes} conditions; at most MAX_FILTER_NODES={L.MAX_FILTER_NODES}")
        return self

    def children(self) -> list[FilterExpr]:
        return [*self.all, *self.any, *self.none]


#: a filter expression: one condition, or a group of expressions
FilterExpr = FilterCondition | FilterGroup


def _tree_size(expr: FilterExpr) -> tuple[int, int]:
    """(depth in groups, number of conditions) of a filter expression."""
    if isinstance(expr, FilterCondition):
        return 0, 1
    depth, nodes = 0, 0
    for child in expr.children():
        d, n = _tree_size(child)
        depth, nodes = max(depth, d), nodes + n
    return depth + 1, nodes


FilterGroup.model_rebuild()


_FILTER_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_\-]*)\s*(<=|>=|!=|=|<|>)\s*(.*?)\s*$", re.S)
_OPS = {"=": "eq", "!=": "ne", "<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}


def _parse_value(text: str) -> Scalar:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def parse_weights(spec: str | None) -> Weights:
    """Parse ``image=W,text=W,bm25=W`` (any subset; the others keep their default 1) into :class:`Weights`.

    The one reader of the weights the CLI, the service's form fields and the Algolia
    ``clipfuseWeights`` parameter take. Blank: the defaults. A part that is not
    ``SIGNAL=NUMBER`` or a weight out of range is an :class:`InvalidQuery` naming it.
    """
    if spec is None or not spec.strip():
        return Weights()
    values: dict[str, float] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        name, _, number = part.partition("=")
        name = name.strip()
        if name not in SIGNALS:
            raise InvalidQuery(
                f"weights: cannot read {part.strip()[:60]!r}; write image=W,text=W,bm25=W, e.g. image=1,text=0.5 "
                f"(signals: {', '.join(SIGNALS)})"
            )
        try:
            values[name] = float(number)
        except ValueError:
            raise InvalidQuery(
                f"weights: cannot read {part.strip()[:60]!r}: {name} needs a number; write image=W,text=W,bm25=W"
            ) from None
    try:
        return Weights(**values)
    except ValidationError as e:
        detail = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise InvalidQuery(f"weights: {detail}") from None


def parse_filter(expression: str) -> FilterCondition:
    """Parse the CLI's filter language into a :class:`FilterCondition`.

    ``category=shoes``, ``brand!=Acme``, ``price<=120``, ``price>10``,
    ``color=red|black`` (any of), ``color!=red|black`` (none of),
    ``in_stock=true``. Values are typed loosely here (``12`` is a number) and
    coerced to the field's type when the index is known.
    """
    match = _FILTER_RE.match(expression)
    if not match:
        raise InvalidQuery(
            f"cannot read filter {expression[:100]!r}: write FIELD OP VALUE with OP one of "
            "= != < <= > >=, e.g. 'category=shoes' or 'price<=120'; 'color=red|black' means any of"
        )
    name, op_text, raw = match.groups()
    if raw == "":
        raise InvalidQuery(f"filter {expression!r} has no value after {op_text!r}")
    if raw[0] in "=<>!":
        raise InvalidQuery(
            f"cannot read filter {expression[:100]!r}: the operator is one of = != < <= > >= "
            "(did you mean '<=' or '>='?)"
        )
    op = _OPS[op_text]
    value: Any
    if "|" in raw and op in ("eq", "ne"):
        value = [_parse_value(part.strip()) for part in raw.split("|") if part.strip()]
        op = "in" if op == "eq" else "nin"
    else:
        value = _parse_value(raw)
    try:
        return FilterCondition(field=name, op=op, value=value)
    except ValidationError as e:  # the model's own words, without pydantic's input dump and link
        detail = "; ".join(str(x["msg"]).removeprefix("Value error, ") for x in e.errors())
        raise InvalidQuery(f"filter {expression[:100]!r}: {detail}") from None


_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$")


def parse_date(text: str) -> float | None:
    """An ISO-8601 date or datetime as epoch seconds (UTC when no zone is given); None if it is not one."""
    text = text.strip()
    if not _DATE_RE.match(text):
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_DURATION_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """``"30d"`` -> seconds. Units as in Elasticsearch's date math: ``ms s m h d w``."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(
            f"cannot read duration {text[:40]!r}: write a number and a unit (ms, s, m, h, d, w), e.g. '30d'"
        )
    return float(match.group(1)) * _DURATION_S[match.group(2)]


class Collapse(_Model):
    """One hit per value of a keyword ``field`` (a product's ``group_id``), its other documents as variants.

    The best-ranked document of a group is the hit; the group's other documents in
    the candidate window are listed in ``hit.variants`` (best first, at most
    ``max_variants``) with the payload ``fields`` asked for. Documents without a
    value for the field stand alone. Collapsing happens before paging.
    """

    field: FieldName
    fields: Annotated[list[FieldName], Field(max_length=L.MAX_VARIANT_FIELDS)] = []
    max_variants: Annotated[int, Field(ge=0, le=L.MAX_VARIANTS)] = 10


class FieldBoost(_Model):
    """Adds ``weight * function(value)`` of a number field (``missing`` when a document lacks it).

    ``log1p``: ``ln(1 + max(x, 0))``; ``sqrt``: ``sqrt(max(x, 0))``; ``linear``: ``x``.
    """

    type: Literal["field"]
    field: FieldName
    function: BoostFunction = "linear"
    weight: BoostWeight = 1.0
    missing: Finite = 0.0

    @property
    def label(self) -> str:
        inner = self.field if self.function == "linear" else f"{self.function}({self.field})"
        return f"{inner} * {self.weight:g}"


class FilterBoost(_Model):
    """Adds ``weight`` to every document matching all ``filters`` (``in_stock=true`` +0.1); negative buries."""

    type: Literal["filter"]
    filters: Annotated[list[FilterCondition], Field(min_length=1, max_length=L.MAX_FILTERS)]
    weight: BoostWeight

    @property
    def label(self) -> str:
        conditions = " and ".join(f"{c.field} {c.op} {c.value}" for c in self.filters)
        return f"{conditions}: {self.weight:+g}"


class DecayBoost(_Model):
    """Adds ``weight * decay(value)``: Elasticsearch's ``function_score`` decay functions, same names and formulas.

    With ``d = max(0, |value - origin| - offset)``:
    ``gauss``: ``exp(-d**2 / (2 * sigma**2))``, ``sigma**2 = -scale**2 / (2 * ln(decay))``;
    ``exp``: ``exp(ln(decay) / scale * d)``; ``linear``: ``max(0, (s - d) / s)``, ``s = scale / (1 - decay)``.
    So a document ``offset + scale`` away from ``origin`` scores ``decay``. Qdrant's
    ``GaussDecayExpression`` / ``ExpDecayExpression`` / ``LinDecayExpression`` with
    ``target = origin`` and ``midpoint = decay`` are the same functions with ``offset = 0``.

    Number fields: ``origin``, ``scale``, ``offset`` are numbers. Date fields (ISO-8601
    dates or datetimes, as ``created_at``): ``origin`` is an ISO date or ``"now"``,
    ``scale`` / ``offset`` durations (``"30d"``, ``"12h"``). A document without the
    field scores ``missing`` (1.0, as in Elasticsearch).
    """

    type: Literal["decay"]
    field: FieldName
    function: DecayFunction = "gauss"
    origin: Finite | Annotated[str, Field(min_length=1, max_length=64)]
    scale: Finite | Annotated[str, Field(min_length=1, max_length=32)]
    offset: Finite | Annotated[str, Field(min_length=1, max_length=32)] = 0.0
    decay: Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)] = 0.5
    weight: BoostWeight = 1.0
    missing: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = 1.0

    @property
    def on_dates(self) -> bool:
        return isinstance(self.origin, str)

    @model_validator(mode="after")
    def _units(self) -> DecayBoost:
        where = f"decay boost on {self.field!r}"
        if self.on_dates:
            if self.origin != "now" and parse_date(str(self.origin)) is None:
                raise ValueError(f"{where}: origin {self.origin!r} is neither a number, an ISO date nor 'now'")
            for name in ("scale", "offset"):
                value = getattr(self, name)
                if isinstance(value, str):
                    parse_duration(value)
                elif not (name == "offset" and value == 0):
                    raise ValueError(f"{where}: on a date field, {name} is a duration such as '30d', not {value!r}")
        else:
            for name in ("scale", "offset"):
                if isinstance(getattr(self, name), str):
                    raise ValueError(
                        f"{where}: with a number origin, {name} must be a number (durations are for dates)"
                    )
        if self.scale_value <= 0:
            raise ValueError(
                f"{where}: scale must be greater than 0 (got {self.scale!r}); it is the distance at which the score is 'decay'"
            )
        if self.offset_value < 0:
            raise ValueError(f"{where}: offset must be >= 0 (got {self.offset!r})")
        return self

    @property
    def scale_value(self) -> float:
        return parse_duration(self.scale) if isinstance(self.scale, str) else float(self.scale)

    @property
    def offset_value(self) -> float:
        return parse_duration(self.offset) if isinstance(self.offset, str) else float(self.offset)

    @property
    def label(self) -> str:
        return f"{self.function}({self.field}, origin={self.origin}, scale={self.scale}) * {self.weight:g}"


Boost = Annotated[FieldBoost | FilterBoost | DecayBoost, Field(discriminator="type")]

_FIELD_BOOST_RE = re.compile(
    r"^\s*(?:(log1p|sqrt|linear)\(\s*([A-Za-z_][\w\-]*)\s*\)|([A-Za-z_][\w\-]*))\s*(?:\*\s*(\S+))?\s*$"
)
_DECAY_RE = re.compile(r"^\s*(gauss|exp|linear)\(\s*([A-Za-z_][\w\-]*)\s*,(.*)\)\s*(?:\*\s*(\S+))?\s*$", re.S)


def _number_or_text(text: str) -> float | str:
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def parse_boost(expression: str) -> FieldBoost | FilterBoost | DecayBoost:
    """The CLI's boost language.

    - ``log1p(popularity)*0.1``, ``sqrt(rating)*0.2``, ``margin*0.01`` (linear): a number field;
    - ``in_stock=true:+0.1``, ``brand=Acme:-0.2`` (a filter, then ``:`` and the weight);
    - ``gauss(created_at, origin=now, scale=30d, offset=7d, decay=0.5)*0.2``,
      ``exp(price, origin=50, scale=20)*0.1``: a decay.
    """
    text = expression.strip()
    try:
        decay = _DECAY_RE.match(text)
        if decay:
            function, field, args, weight = decay.groups()
            params: dict[str, Any] = {}
            for part in args.split(","):
                if not part.strip():
                    continue
                name, sep, value = part.partition("=")
                if not sep or name.strip() not in ("origin", "scale", "offset", "decay", "missing"):
                    raise InvalidQuery(
                        f"boost {expression[:100]!r}: cannot read {part.strip()!r}; write origin=..., scale=..., "
                        "offset=..., decay=..."
                    )
                params[name.strip()] = _number_or_text(value.strip())
            return DecayBoost(type="decay", field=field, function=function, weight=float(weight or 1.0), **params)
        if ":" in text and any(op in text.rsplit(":", 1)[0] for op in "=<>"):
            condition, _, weight = text.rpartition(":")
            filters = [parse_filter(part) for part in condition.split("&") if part.strip()]
            return FilterBoost(type="filter", filters=filters, weight=float(weight))
        field_boost = _FIELD_BOOST_RE.match(text)
        if field_boost:
            function, inner, plain, weight = field_boost.groups()
            return FieldBoost(
                type="field", field=inner or plain, function=function or "linear", weight=float(weight or 1.0)
            )
    except ValueError as e:
        raise InvalidQuery(f"boost {expression[:100]!r}: {str(e).removeprefix('Value error, ')}") from None
    raise InvalidQuery(
        f"cannot read boost {expression[:100]!r}: write 'log1p(popularity)*0.1', 'in_stock=true:+0.1' or "
        "'gauss(created_at, origin=now, scale=30d)*0.2'"
    )


class SearchRequest(_Model):
    """A hybrid search: text, an image, or an image plus a modifier text.

    - text only: the text embedding is matched against image and text vectors, and BM25.
    - image only: the image embedding is matched against image and text vectors.
    - image + text ("this, but in black"): the dense query is the normalised mix
      ``compose_alpha * image + (1 - compose_alpha) * text`` of the two
      embeddings (training-free composed retrieval), and the text also drives BM25.
      The default 0.3 leans towards the text because image-image cosines are
      larger than text-image ones (CLIP's modality gap): measured on the demo
      catalog, a photo plus "<other colour> <category>" found that product in the
      new colour first 29/30 times at 0.3 with all signals, 17/30 at 0.5.
    """

    #: what JSON Schema can say of the rules below: a text (not blank) or an image, not all weights 0
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["text"], "properties": {"text": {"type": "string", "pattern": r"\S"}}},
                {"required": ["image"], "properties": {"image": {"type": "object"}}},
            ],
        },
    )

    text: Annotated[str, Field(max_length=L.MAX_QUERY_TEXT_CHARS)] | None = None
    image: ImageSource | None = None
    weights: Weights = Weights()
    fusion: FusionMethod = "rrf"
    rrf_k: Annotated[float, Field(ge=0.0, le=L.MAX_RRF_K, allow_inf_nan=False)] = 60.0
    compose_alpha: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.3
    filters: Annotated[list[FilterCondition], Field(max_length=L.MAX_FILTERS)] = []
    #: a boolean filter tree (cross-field OR, NOT of a group), ANDed with ``filters``
    where: FilterGroup | None = None
    k: Annotated[int, Field(ge=1, le=L.MAX_K)] = 10
    offset: Annotated[int, Field(ge=0, le=L.MAX_OFFSET)] = 0
    #: how many candidates each signal retrieves before fusion (default: max(100, 2 * (k + offset)))
    candidates: Annotated[int, Field(ge=1, le=L.MAX_CANDIDATES)] | None = None
    #: fields to count: keyword / bool fields give value counts, number fields min / max / avg / sum
    facets: Annotated[list[FieldName], Field(max_length=L.MAX_FACETS)] = []
    max_values_per_facet: Annotated[int, Field(ge=1, le=L.MAX_FACET_VALUES)] = 10
    #: what facets count: the fused candidate window (what the shopper can page through) or every
    #: document that passes the filters and matches the query's keywords
    facet_scope: FacetScope = "window"
    #: one hit per value of this keyword field (``"group_id"`` or ``{"field": ..., "fields": [...]}``)
    collapse: Collapse | None = None
    #: business boosts added to the window-normalised fused score, before paging
    boosts: Annotated[list[Boost], Field(max_length=L.MAX_BOOSTS)] = []
    #: apply the merchandising rules the searcher holds (off: the organic ranking, e.g. to preview)
    rules: bool = True
    #: ``next_cursor`` of a previous response: the next page of that frozen ranking (only ``k`` may change)
    cursor: Annotated[str, Field(min_length=1, max_length=L.MAX_CURSOR_CHARS)] | None = None

    @field_validator("collapse", mode="before")
    @classmethod
    def _collapse_shorthand(cls, value: Any) -> Any:
        return {"field": value} if isinstance(value, str) else value

    @field_validator("facets")
    @classmethod
    def _unique_facets(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("facets: each field once")
        return value

    @field_validator("text")
    @classmethod
    def _blank_text(cls, value: str | None) -> str | None:
        return value if value is None or value.strip() else None

    @model_validator(mode="after")
    def _needs_query(self) -> SearchRequest:
        if self.cursor is not None:
            extra = sorted(self.model_fields_set - {"cursor", "k"})
            if extra:
                raise ValueError(
                    f"a cursor request takes only 'cursor' and 'k' (the query, filters, boosts and collapse are "
                    f"frozen in the cursor): drop {', '.join(extra)}"
                )
            return self
        if self.text is None and self.image is None:
            raise ValueError("a search needs a text, an image, or both; got neither")
        if self.weights.as_tuple() == (0.0, 0.0, 0.0):
            raise ValueError("all signal weights are 0: give at least one signal a positive weight")
        if self.text is None and self.weights.image == 0 and self.weights.text == 0:
            raise ValueError("an image-only search needs a positive 'image' or 'text' weight (BM25 needs text)")
        if self.candidates is not None and self.candidates < self.k + self.offset:
            raise ValueError(f"candidates={self.candidates} must be at least k + offset = {self.k + self.offset}")
        return self

    @property
    def candidate_limit(self) -> int:
        return self.candidates if self.candidates is not None else max(100, 2 * (self.k + self.offset))

    @property
    def needs_window(self) -> bool:
        """Whether the whole fused window is ranked here (boosts, collapse, facets), not only the page."""
        return bool(self.facets or self.collapse is not None or self.boosts)


class SignalScores(_Model):
    """Each signal's raw score for a hit (``None``: the hit was not in that signal's candidates)."""

    image: float | None = None
    text: float | None = None
    bm25: float | None = None


class SignalExplanation(_Model):
    """One signal's part in a hit's fused score."""

    #: the engine's raw score (cosine for image / text, BM25 for bm25)
    raw: float
    #: 1-based rank in that signal's candidates
    rank: int
    #: what it added to the fused score: ``1 / (rank / w + k)`` (rrf) or ``w * normalised score``
    contribution: float


class BoostExplanation(_Model):
    """One boost's (or rule's) part in a hit's final score."""

    boost: str
    #: what the boost read: the field's value, 1.0 / 0.0 for a filter, the decay's value
    value: float | None = None
    contribution: float


class Explanation(_Model):
    """How a hit got its score: signals -> fused -> (normalised + boosts) -> final.

    Without boosts, ``final == fused``. With boosts, the fused score is first
    normalised to [0, 1] over the whole candidate window (``(s - min) / (max - min)``,
    1.0 when all are equal) and ``final = normalised + sum(boost contributions)``.
    """

    signals: dict[str, SignalExplanation] = {}
    fused: float
    normalised: float | None = None
    boosts: list[BoostExplanation] = []
    final: float


class Variant(_Model):
    """Another document of a collapsed hit's group (another colour of the product)."""

    id: str
    score: float
    payload: dict[str, Any] = {}


class Hit(_Model):
    id: str
    rank: int
    score: float
    signals: SignalScores = SignalScores()
    ranks: SignalScores = SignalScores()
    payload: dict[str, Any] = {}
    explanation: Explanation | None = None
    #: the id of the merchandising rule that pinned or moved this hit
    rule: str | None = None
    #: with ``collapse``: the group value, and the group's other documents in the window
    group: str | None = None
    variants: list[Variant] = []


class FacetStats(_Model):
    """A number facet over the counted set: documents with a value, and their min / max / avg / sum."""

    count: int
    min: float
    max: float
    avg: float
    sum: float


class Total(_Model):
    """How many results there are: exactly (``eq``) or at least (``gte``), as Elasticsearch reports it."""

    value: int
    relation: Literal["eq", "gte"]


class SearchResponse(_Model):
    hits: list[Hit]
    fusion: FusionMethod
    fused_by: Literal["engine", "client"]
    took_ms: float
    #: results in the counted set (groups when collapsed); ``gte`` when a signal's candidate list was full
    total: Total | None = None
    #: keyword / bool facets: value -> count, most frequent first (ties: value order), at most max_values_per_facet
    facets: dict[str, dict[str, int]] = {}
    facets_stats: dict[str, FacetStats] = {}
    #: the set facets and total count: "window" (the fused candidates) or "matches"
    facet_scope: FacetScope | None = None
    #: what one count is: a document, or (with collapse) a group
    facets_count: Literal["documents", "groups"] | None = None
    collapsed_by: str | None = None
    #: ids of the merchandising rules that matched this query
    rules_applied: list[str] = []
    #: the next page of this same frozen ranking (pass it as ``cursor``); None on the last page
    next_cursor: str | None = None

"""What a search asks and what it returns."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from clipfuse.errors import InvalidQuery
from clipfuse.schemas import limits as L
from clipfuse.schemas.documents import ImageSource, Scalar

__all__ = [
    "FieldType",
    "FilterCondition",
    "FilterOp",
    "FusionMethod",
    "Hit",
    "SearchRequest",
    "SearchResponse",
    "SignalScores",
    "Weights",
    "parse_filter",
]

FusionMethod = Literal["rrf", "dbsf", "linear", "zscore"]
FilterOp = Literal["eq", "ne", "lt", "lte", "gt", "gte", "in", "nin"]
FieldType = Literal["keyword", "number", "bool"]
SIGNALS: tuple[str, ...] = ("image", "text", "bm25")

Weight = Annotated[float, Field(ge=0.0, le=L.MAX_WEIGHT, allow_inf_nan=False)]


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
        return FilterCondition(field=name, op=op, value=value)  # type: ignore[arg-type]
    except ValueError as e:
        raise InvalidQuery(f"filter {expression!r}: {e}") from None


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

    text: Annotated[str, Field(max_length=L.MAX_QUERY_TEXT_CHARS)] | None = None
    image: ImageSource | None = None
    weights: Weights = Weights()
    fusion: FusionMethod = "rrf"
    rrf_k: Annotated[float, Field(ge=0.0, le=L.MAX_RRF_K, allow_inf_nan=False)] = 60.0
    compose_alpha: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.3
    filters: Annotated[list[FilterCondition], Field(max_length=L.MAX_FILTERS)] = []
    k: Annotated[int, Field(ge=1, le=L.MAX_K)] = 10
    offset: Annotated[int, Field(ge=0, le=L.MAX_OFFSET)] = 0
    #: how many candidates each signal retrieves before fusion (default: max(100, 2 * (k + offset)))
    candidates: Annotated[int, Field(ge=1, le=L.MAX_CANDIDATES)] | None = None

    @field_validator("text")
    @classmethod
    def _blank_text(cls, value: str | None) -> str | None:
        return value if value is None or value.strip() else None

    @model_validator(mode="after")
    def _needs_query(self) -> SearchRequest:
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


class SignalScores(_Model):
    """Each signal's raw score for a hit (``None``: the hit was not in that signal's candidates)."""

    image: float | None = None
    text: float | None = None
    bm25: float | None = None


class Hit(_Model):
    id: str
    rank: int
    score: float
    signals: SignalScores = SignalScores()
    ranks: SignalScores = SignalScores()
    payload: dict[str, Any] = {}


class SearchResponse(_Model):
    hits: list[Hit]
    fusion: FusionMethod
    fused_by: Literal["engine", "client"]
    took_ms: float

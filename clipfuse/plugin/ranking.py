"""Pure ranking steps after fusion: per-signal contributions, window normalisation, business boosts.

Nothing here does I/O. The searcher hands in the fused candidate window (every
fused candidate, not only the page) with the payload fields the boosts read, and
gets back the window re-ranked, each candidate carrying its explanation.

Scores
------
Without boosts the final score is the fused score. With boosts the fused scores
are first normalised to ``[0, 1]`` over the whole window, min-max
(``(s - min) / (max - min)``; every candidate 1.0 when all are equal, as
:func:`clipfuse.plugin.fusion.linear` does), and each boost's contribution is
added: ``final = normalised + sum(contributions)``. Normalising over the window
(not the page) makes a boost weigh the same on page 1 and page 5, and the same
whatever the fusion method's scale (RRF scores are ~0.03, linear ones ~1).

Order
-----
Candidates are sorted by final score, descending; equal final scores keep their
fused order, which itself breaks ties by best signal rank and then by document id
(:mod:`clipfuse.plugin.fusion`). So the same request on the same index always
gives the same order, on every engine.

Filters on payloads
-------------------
:func:`payload_matches` evaluates checked filter conditions on a payload with the
engines' semantics: a list attribute matches ``eq`` / ``in`` / ranges when any of
its items does; ``ne`` / ``nin`` pass a document without the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from clipfuse.plugin import fusion
from clipfuse.schemas.search import (
    BoostExplanation,
    DecayBoost,
    FieldBoost,
    FilterBoost,
    FilterCondition,
    FilterGroup,
    FusionMethod,
    parse_date,
)

__all__ = [
    "Candidate",
    "apply_boosts",
    "decay_score",
    "field_function",
    "minmax",
    "parse_date",
    "payload_matches",
    "payload_matches_tree",
    "signal_contributions",
    "tie_order",
]


@dataclass(slots=True)
class Candidate:
    """One document of the window as it moves through boosts, rules, collapse and paging."""

    id: str
    fused: float
    score: float
    normalised: float | None = None
    boosts: list[BoostExplanation] = field(default_factory=list)
    #: the rule that pinned or moved it
    rule: str | None = None


def tie_order(ranked: Sequence[fusion.Ranked]) -> list[fusion.Ranked]:
    """A signal's list with equal scores in document-id order (engines return ties in storage order).

    :class:`~clipfuse.plugin.HybridSearcher` fuses these lists, so rankings do not depend on
    how an engine happened to store documents.
    """
    return sorted(ranked, key=lambda r: (-r.score, r.id))


# --------------------------------------------------------------------------- contributions
def signal_contributions(
    method: FusionMethod,
    lists: Sequence[Sequence[fusion.Ranked]],
    *,
    weights: Sequence[float],
    k: float,
) -> list[dict[str, float]]:
    """For each list, ``{doc id: what it adds to the fused score}`` under ``method``.

    ``rrf``: ``1 / (rank / w + k)`` (0 for a weight <= 0); ``linear`` / ``zscore`` /
    ``dbsf``: ``w * normalised score`` with the same normalisations as
    :func:`clipfuse.plugin.fusion.linear`. The contributions of a document sum to its
    fused score (up to float rounding).
    """
    out: list[dict[str, float]] = []
    normalization = {"linear": "minmax", "zscore": "zscore", "dbsf": "dbsf"}.get(method)
    for ranked, weight in zip(lists, weights, strict=True):
        seen: dict[str, float] = {}
        entries: list[tuple[str, float, int]] = []
        for position, hit in enumerate(ranked, start=1):
            if hit.id in seen:
                continue
            seen[hit.id] = 0.0
            entries.append((hit.id, float(hit.score), position))
        if method == "rrf":
            table = {doc: (1.0 / (rank / weight + k) if weight > 0 else 0.0) for doc, _s, rank in entries}
        elif entries and normalization is not None:
            normed = fusion.NORMALIZERS[normalization]([s for _d, s, _r in entries])
            table = {doc: weight * value for (doc, _s, _r), value in zip(entries, normed, strict=True)}
        else:
            table = {}
        out.append(table)
    return out


# --------------------------------------------------------------------------- normalisation
def minmax(values: Sequence[float]) -> list[float]:
    """``(s - min) / (max - min)`` in [0, 1]; all equal (or one value) -> 1.0 each."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    if hi == lo:
        return [1.0] * len(values)
    return [(v - lo) / (hi - lo) for v in values]


# --------------------------------------------------------------------------- functions
def field_function(function: str, x: float) -> float:
    """``log1p``: ln(1 + max(x, 0)); ``sqrt``: sqrt(max(x, 0)); ``linear``: x."""
    if function == "log1p":
        return math.log1p(max(x, 0.0))
    if function == "sqrt":
        return math.sqrt(max(x, 0.0))
    if function == "linear":
        return x
    raise ValueError(f"unknown boost function {function!r}; expected log1p, sqrt or linear")


def decay_score(function: str, value: float, *, origin: float, scale: float, offset: float, decay: float) -> float:
    """Elasticsearch's ``function_score`` decay functions, formula for formula.

    ``d = max(0, |value - origin| - offset)``;
    gauss: ``exp(-d**2 / (2 sigma**2))`` with ``sigma**2 = -scale**2 / (2 ln(decay))``;
    exp: ``exp(lambda d)`` with ``lambda = ln(decay) / scale``;
    linear: ``max(0, (s - d) / s)`` with ``s = scale / (1 - decay)``.
    """
    if not scale > 0:
        raise ValueError(f"decay scale must be > 0, got {scale!r}")
    if not 0.0 < decay < 1.0:
        raise ValueError(f"decay must be between 0 and 1 (exclusive), got {decay!r}")
    d = max(0.0, abs(value - origin) - offset)
    if function == "gauss":
        sigma_sq = -(scale**2) / (2.0 * math.log(decay))
        return math.exp(-(d**2) / (2.0 * sigma_sq))
    if function == "exp":
        return math.exp(math.log(decay) / scale * d)
    if function == "linear":
        s = scale / (1.0 - decay)
        return max(0.0, (s - d) / s)
    raise ValueError(f"unknown decay function {function!r}; expected gauss, exp or linear")


def _number(value: Any) -> float | None:
    """A payload value as a number (the first finite number of a list), or None."""
    if isinstance(value, list):
        for item in value:
            number = _number(item)
            if number is not None:
                return number
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _date(value: Any) -> float | None:
    if isinstance(value, list):
        return next((d for d in (_date(v) for v in value) if d is not None), None)
    if isinstance(value, str):
        return parse_date(value)
    return _number(value)  # epoch seconds


# --------------------------------------------------------------------------- filters on payloads
def _same(item: Any, value: Any) -> bool:
    if isinstance(value, bool):
        return isinstance(item, bool) and item == value
    if isinstance(value, (int, float)):
        return isinstance(item, (int, float)) and not isinstance(item, bool) and float(item) == float(value)
    return isinstance(item, str) and item == value


def _condition_holds(payload: Mapping[str, Any], c: FilterCondition) -> bool:
    raw = payload.get(c.field)
    items = [] if raw is None else (raw if isinstance(raw, list) else [raw])
    if c.op in ("eq", "ne"):
        found = any(_same(item, c.value) for item in items)
        return found if c.op == "eq" else not found
    if c.op in ("in", "nin"):
        values = c.value if isinstance(c.value, list) else [c.value]
        found = any(_same(item, v) for item in items for v in values)
        return found if c.op == "in" else not found
    bound = float(c.value)  # type: ignore[arg-type]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        x = float(item)
        if (
            (c.op == "lt" and x < bound)
            or (c.op == "lte" and x <= bound)
            or (c.op == "gt" and x > bound)
            or (c.op == "gte" and x >= bound)
        ):
            return True
    return False


def payload_matches(payload: Mapping[str, Any], conditions: Sequence[FilterCondition]) -> bool:
    """Whether a payload passes every (checked, typed) condition, with the engines' semantics."""
    return all(_condition_holds(payload, c) for c in conditions)


def payload_matches_tree(payload: Mapping[str, Any], tree: FilterGroup | None) -> bool:
    """Whether a payload passes a checked filter tree (``SearchRequest.where``); None passes."""
    if tree is None:
        return True

    def holds(expr: FilterCondition | FilterGroup) -> bool:
        if isinstance(expr, FilterGroup):
            return payload_matches_tree(payload, expr)
        return _condition_holds(payload, expr)

    return (
        all(holds(e) for e in tree.all)
        and (not tree.any or any(holds(e) for e in tree.any))
        and not any(holds(e) for e in tree.none)
    )


# --------------------------------------------------------------------------- boosts
AnyBoost = FieldBoost | FilterBoost | DecayBoost


def _boost_value(boost: AnyBoost, payload: Mapping[str, Any], now: float) -> tuple[float | None, float]:
    """(what the boost read, its contribution) for one payload."""
    if isinstance(boost, FieldBoost):
        number = _number(payload.get(boost.field))
        return number, boost.weight * field_function(boost.function, boost.missing if number is None else number)
    if isinstance(boost, FilterBoost):
        hit = payload_matches(payload, boost.filters)
        return (1.0 if hit else 0.0), (boost.weight if hit else 0.0)
    x: float | None
    if boost.on_dates:
        x = _date(payload.get(boost.field))
        origin = now if boost.origin == "now" else parse_date(str(boost.origin))
        assert origin is not None  # checked by the schema
    else:
        x = _number(payload.get(boost.field))
        origin = float(boost.origin)
    if x is None:
        return None, boost.weight * boost.missing
    value = decay_score(
        boost.function, x, origin=origin, scale=boost.scale_value, offset=boost.offset_value, decay=boost.decay
    )
    return value, boost.weight * value


def apply_boosts(
    ranking: Sequence[tuple[str, float]],
    payloads: Mapping[str, Mapping[str, Any]],
    boosts: Sequence[tuple[AnyBoost, str]],
    *,
    now: float | None = None,
    rule_of: Mapping[int, str] | None = None,
) -> list[Candidate]:
    """Re-rank the fused window by boosts; ``boosts`` are ``(boost, label)``, filters already checked.

    ``ranking`` is the whole fused window, best first. With no boosts the candidates
    keep their fused scores and order. ``rule_of`` maps a boost's index to the rule
    that added it (the candidate's ``rule`` when that boost changed its score).
    """
    if not boosts:
        return [Candidate(id=doc, fused=score, score=score) for doc, score in ranking]
    moment = now if now is not None else datetime.now(timezone.utc).timestamp()
    normalised = minmax([score for _doc, score in ranking])
    out: list[Candidate] = []
    for (doc, score), base in zip(ranking, normalised, strict=True):
        payload = payloads.get(doc, {})
        candidate = Candidate(id=doc, fused=score, score=base, normalised=base)
        for index, (boost, label) in enumerate(boosts):
            value, contribution = _boost_value(boost, payload, moment)
            candidate.boosts.append(BoostExplanation(boost=label, value=value, contribution=contribution))
            candidate.score += contribution
            if rule_of and index in rule_of and contribution != 0.0:
                candidate.rule = rule_of[index]
        out.append(candidate)
    order = sorted(range(len(out)), key=lambda i: (-out[i].score, i))
    return [out[i] for i in order]

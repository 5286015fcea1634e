"""Pure score-fusion functions for hybrid (dense + BM25) retrieval.

Every function here is pure: no I/O, no numeric libraries, only the standard
library.  Inputs are one or more ranked lists of :class:`Ranked` hits (one list
per retriever, e.g. image-vector kNN, text-vector kNN, BM25), each **ranked
best-first** (higher score = better).  The lists are never re-sorted: the rank
of a hit is its position in its list plus one.  If an id occurs more than once
in one list only its first (best) occurrence is used; the positions of the
other hits are *not* renumbered (rank is always ``position + 1`` in the list
as given).

Methods
-------
``rrf``
    Weighted Reciprocal Rank Fusion, using exactly Qdrant's formula::

        score(d) = sum_i  1 / (rank_i(d) / w_i + k)

    over the lists ``i`` that contain ``d`` and have ``w_i > 0``.

``linear``
    Normalise each list's scores, then take a weighted sum::

        score(d) = sum_i  w_i * norm_i(d)

    where a document absent from list ``i`` contributes ``0`` from it.
    Normalisations: ``"minmax"``, ``"zscore"``, ``"dbsf"`` (see
    :func:`linear`).

``dbsf``
    Distribution-Based Score Fusion, ``linear(..., normalization="dbsf")``;
    with all weights 1 it reproduces qdrant-client's
    ``distribution_based_score_fusion`` scores exactly.

Ordering
--------
Results are sorted by fused score, descending.  Ties are broken
deterministically by the best (smallest) rank the document has in any input
list, ascending, and then by id, ascending (plain string comparison).  This
differs from Qdrant, which keeps insertion order among equal scores.

Errors
------
Invalid arguments raise :class:`ValueError` with a descriptive message
(non-finite scores or weights, wrong number of weights, negative ``k`` or
``limit``, unknown method / normalisation).  Mapping that to an API error is
the caller's job.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from clipfuse.schemas.search import FusionMethod

__all__ = [
    "Fused",
    "FusionMethod",
    "Normalization",
    "Ranked",
    "dbsf",
    "fuse",
    "fused_order",
    "linear",
    "qdrant_rrf_k",
    "rrf",
]

Normalization = Literal["minmax", "zscore", "dbsf"]


@dataclass(frozen=True, slots=True)
class Ranked:
    """One hit from one retriever: a document id and its raw score."""

    id: str
    score: float


@dataclass(frozen=True, slots=True)
class Fused:
    """One fused result.

    Attributes:
        id: Document id.
        score: Fused score (meaning depends on the fusion method).
        signal_scores: Raw score of the document in each input list, in input
            order; ``None`` where the document is absent from that list.
        signal_ranks: 1-based rank (``position + 1``) in each input list, in
            input order; ``None`` where absent.
    """

    id: str
    score: float
    signal_scores: tuple[float | None, ...]
    signal_ranks: tuple[int | None, ...]


# --------------------------------------------------------------------------- #
# Internal helpers
# --------------------------------------------------------------------------- #

# A de-duplicated list: (id, raw score, 1-based rank) in input order.
_Entry = tuple[str, float, int]


def _prepare(lists: Sequence[Sequence[Ranked]]) -> list[list[_Entry]]:
    """Validate scores and drop repeated ids (keeping the first occurrence)."""
    prepared: list[list[_Entry]] = []
    for list_index, hits in enumerate(lists):
        seen: set[str] = set()
        entries: list[_Entry] = []
        for position, hit in enumerate(hits):
            score = float(hit.score)
            if not math.isfinite(score):
                raise ValueError(f"non-finite score {score!r} in list {list_index} for id {hit.id!r}")
            if hit.id in seen:
                continue
            seen.add(hit.id)
            entries.append((hit.id, score, position + 1))
        prepared.append(entries)
    return prepared


def _check_weights(weights: Sequence[float] | None, n_lists: int) -> list[float]:
    """Return the weights as floats (default 1.0 each) after validation."""
    if weights is None:
        return [1.0] * n_lists
    if len(weights) != n_lists:
        raise ValueError(
            f"got {len(weights)} weights for {n_lists} lists; the number of weights must equal the number of lists"
        )
    checked = [float(w) for w in weights]
    for index, weight in enumerate(checked):
        if not math.isfinite(weight):
            raise ValueError(f"weight {index} is not finite: {weight!r}")
    return checked


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit!r}")


def _order(prepared: list[list[_Entry]], totals: dict[str, float], limit: int | None) -> list[tuple[str, float]]:
    """``(id, fused score)`` for every id in ``totals``, sorted: fused score descending, then best
    (smallest) rank ascending, then id ascending; at most ``limit``."""
    best: dict[str, int] = {}
    for entries in prepared:
        for doc_id, _score, rank in entries:
            if rank < best.get(doc_id, rank + 1):
                best[doc_id] = rank
    order = sorted(totals.items(), key=lambda item: (-item[1], best[item[0]], item[0]))
    return order if limit is None else order[:limit]


def _assemble(
    prepared: list[list[_Entry]],
    contributions: dict[str, float],
    limit: int | None,
) -> list[Fused]:
    """Build :class:`Fused` rows for every id in ``contributions``, sorted as :func:`_order` sorts.

    Only the rows within ``limit`` are built.
    """
    order = _order(prepared, contributions, limit)
    n_lists = len(prepared)
    scores: dict[str, list[float | None]] = {doc_id: [None] * n_lists for doc_id, _total in order}
    ranks: dict[str, list[int | None]] = {doc_id: [None] * n_lists for doc_id, _total in order}
    for list_index, entries in enumerate(prepared):
        for doc_id, score, rank in entries:
            doc_scores = scores.get(doc_id)
            if doc_scores is not None:
                doc_scores[list_index] = score
                ranks[doc_id][list_index] = rank
    return [Fused(doc_id, total, tuple(scores[doc_id]), tuple(ranks[doc_id])) for doc_id, total in order]


# --------------------------------------------------------------------------- #
# Reciprocal Rank Fusion
# --------------------------------------------------------------------------- #


def qdrant_rrf_k(k: float) -> int:
    """Return the Qdrant ``ranking_constant_k`` / ``Rrf.k`` equivalent to our ``k``.

    Qdrant scores a hit at 0-based position ``pos`` with weight ``w`` as
    ``1 / ((pos + 1) / w + K - 1)``; ours is ``1 / (rank / w + k)`` with
    ``rank = pos + 1``, so the two are identical when ``K = k + 1``.  Qdrant's
    constant is an integer, so ``k`` must be a non-negative whole number.

    Raises:
        ValueError: if ``k`` is negative, not finite, or not integral.
    """
    k = float(k)
    if not math.isfinite(k) or k < 0:
        raise ValueError(f"RRF k must be a finite number >= 0, got {k!r}")
    if not k.is_integer():
        raise ValueError(f"Qdrant's RRF k is an integer; k={k!r} has no exact equivalent")
    return int(k) + 1


def rrf(
    lists: Sequence[Sequence[Ranked]],
    *,
    k: float = 60.0,
    weights: Sequence[float] | None = None,
    limit: int | None = None,
) -> list[Fused]:
    """Weighted Reciprocal Rank Fusion.

    Formula, for each document ``d``::

        score(d) = sum_i  1 / (rank_i(d) / w_i + k)

    summed over the input lists ``i`` containing ``d``; ``rank_i(d)`` is the
    1-based position of ``d`` in list ``i`` and ``w_i`` its weight (default
    1.0).  With ``w_i = 1`` this is the standard ``1 / (k + rank)`` of Cormack
    et al. (``k = 60`` by default).  Scores are ignored; only ranks matter.

    This is deliberately Qdrant's own weighted formula (qdrant-client
    ``qdrant_client.hybrid.fusion.reciprocal_rank_fusion`` and the server's
    ``Fusion.RRF``: ``1 / ((pos + 1) / w + K - 1)``) with ``K = k + 1``, so
    client-side fusion here and Qdrant-side RRF with
    ``k = qdrant_rrf_k(k)`` give the same scores (the server computes in
    ``f32``, so equal up to single precision) and, up to ties, the same order.

    A list whose weight is ``<= 0`` contributes nothing (as in Qdrant); its
    hits still appear in ``signal_scores`` / ``signal_ranks``, and documents
    found only in such lists are returned with fused score ``0.0``.

    Args:
        lists: Ranked lists, each best-first.
        k: Rank constant, ``>= 0`` (``0`` allowed).
        weights: One weight per list, or ``None`` for all ``1.0``.
        limit: Maximum number of results, ``None`` for all.

    Raises:
        ValueError: for ``k < 0`` or non-finite ``k``, a weights/lists length
            mismatch, non-finite weights or scores, or ``limit < 0``.
    """
    return _assemble(*_rrf_totals(lists, k, weights, limit), limit)


def _rrf_totals(
    lists: Sequence[Sequence[Ranked]], k: float, weights: Sequence[float] | None, limit: int | None
) -> tuple[list[list[_Entry]], dict[str, float]]:
    """The checked, de-duplicated lists and each document's RRF score (see :func:`rrf`)."""
    k = float(k)
    if not math.isfinite(k) or k < 0:
        raise ValueError(f"RRF k must be a finite number >= 0, got {k!r}")
    _check_limit(limit)
    w = _check_weights(weights, len(lists))
    prepared = _prepare(lists)

    totals: dict[str, float] = {}
    for list_index, entries in enumerate(prepared):
        weight = w[list_index]
        for doc_id, _score, rank in entries:
            contribution = 1.0 / (rank / weight + k) if weight > 0 else 0.0
            totals[doc_id] = totals.get(doc_id, 0.0) + contribution
    return prepared, totals


# --------------------------------------------------------------------------- #
# Score normalisation + linear combination
# --------------------------------------------------------------------------- #


def _norm_minmax(values: list[float]) -> list[float]:
    """``(s - min) / (max - min)``; all-equal (incl. one hit) -> 1.0 each."""
    lo, hi = min(values), max(values)
    if hi == lo:
        return [1.0] * len(values)
    span = hi - lo
    return [(s - lo) / span for s in values]


def _norm_zscore(values: list[float]) -> list[float]:
    """``(s - mean) / std`` with population std; std 0 -> 0.0 each."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((s - mean) ** 2 for s in values) / n)
    if std == 0:
        return [0.0] * n
    return [(s - mean) / std for s in values]


def _norm_dbsf(values: list[float]) -> list[float]:
    """Qdrant-client's DBSF normalisation, reproduced operation for operation.

    ``(s - low) / (high - low)`` with ``low/high = mean -/+ 3 * std`` and
    ``std`` the *sample* standard deviation (``n - 1``).  A single hit, or a
    list with zero variance, maps to ``0.5``.  Like qdrant-client no clipping
    is applied: for ``n >= 11`` an outlier can fall outside ``[0, 1]``.
    """
    n = len(values)
    if n == 1:
        return [0.5]
    mean = sum(values) / n
    variance = sum((s - mean) ** 2 for s in values) / (n - 1)
    if variance == 0:
        return [0.5] * n
    std_dev = variance**0.5
    low = mean - 3 * std_dev
    high = mean + 3 * std_dev
    return [(s - low) / (high - low) for s in values]


#: the score normalisations of linear fusion, by name (also used by ranking.py's explanations)
NORMALIZERS: dict[str, Callable[[list[float]], list[float]]] = {
    "minmax": _norm_minmax,
    "zscore": _norm_zscore,
    "dbsf": _norm_dbsf,
}


def linear(
    lists: Sequence[Sequence[Ranked]],
    *,
    weights: Sequence[float] | None = None,
    normalization: Normalization = "minmax",
    limit: int | None = None,
) -> list[Fused]:
    """Weighted sum of per-list normalised scores.

    Formula, for each document ``d``::

        score(d) = sum_i  w_i * norm_i(d)

    over the lists ``i`` containing ``d`` (an absent document contributes
    ``0`` from that list); weights default to ``1.0``.  Each list is
    normalised independently, over its de-duplicated hits:

    ``"minmax"``
        ``norm(s) = (s - min) / (max - min)``, in ``[0, 1]``.  If all scores in
        the list are equal (including a single hit) every hit gets ``1.0``:
        they are all the best of that list.

    ``"zscore"``
        ``norm(s) = (s - mean) / std`` with the population standard deviation;
        ``std == 0`` gives ``0.0`` for every hit.  Unbounded and centred on 0,
        so an *absent* document (contribution 0) beats a present document
        scoring below its list's mean.  Use ``"dbsf"`` for a bounded
        alternative without that effect.

    ``"dbsf"``
        Distribution-Based Score Fusion exactly as qdrant-client implements
        it: ``norm(s) = (s - (mean - 3σ)) / (6σ)`` with σ the *sample*
        standard deviation (``n - 1``); a single hit or zero variance gives
        ``0.5``; no clipping.  With all weights 1 the fused scores equal
        qdrant-client's ``distribution_based_score_fusion``.

    Args:
        lists: Ranked lists, each best-first (higher score = better).
        weights: One weight per list (finite; may be 0 or negative), or
            ``None`` for all ``1.0``.
        normalization: ``"minmax"`` (default), ``"zscore"`` or ``"dbsf"``.
        limit: Maximum number of results, ``None`` for all.

    Raises:
        ValueError: for an unknown normalisation, a weights/lists length
            mismatch, non-finite weights or scores, or ``limit < 0``.
    """
    return _assemble(*_linear_totals(lists, weights, normalization, limit), limit)


def _linear_totals(
    lists: Sequence[Sequence[Ranked]], weights: Sequence[float] | None, normalization: str, limit: int | None
) -> tuple[list[list[_Entry]], dict[str, float]]:
    """The checked, de-duplicated lists and each document's linear score (see :func:`linear`)."""
    normalizer = NORMALIZERS.get(normalization)
    if normalizer is None:
        raise ValueError(f"unknown normalization {normalization!r}; expected one of {sorted(NORMALIZERS)}")
    _check_limit(limit)
    w = _check_weights(weights, len(lists))
    prepared = _prepare(lists)

    totals: dict[str, float] = {}
    for list_index, entries in enumerate(prepared):
        if not entries:
            continue
        weight = w[list_index]
        normalised = normalizer([score for _id, score, _rank in entries])
        for (doc_id, _score, _rank), value in zip(entries, normalised, strict=True):
            totals[doc_id] = totals.get(doc_id, 0.0) + weight * value
    return prepared, totals


def dbsf(
    lists: Sequence[Sequence[Ranked]],
    *,
    weights: Sequence[float] | None = None,
    limit: int | None = None,
) -> list[Fused]:
    """Distribution-Based Score Fusion: ``linear(lists, normalization="dbsf")``.

    ``score(d) = sum_i w_i * (s_i(d) - (mean_i - 3σ_i)) / (6σ_i)``, σ the sample
    standard deviation; see :func:`linear` for the edge cases.
    """
    return linear(lists, weights=weights, normalization="dbsf", limit=limit)


def fuse(
    method: FusionMethod,
    lists: Sequence[Sequence[Ranked]],
    *,
    k: float = 60.0,
    weights: Sequence[float] | None = None,
    limit: int | None = None,
) -> list[Fused]:
    """Dispatch to a fusion method by name.

    ``"rrf"`` -> :func:`rrf` (uses ``k``); ``"linear"`` -> :func:`linear` with
    min-max normalisation; ``"zscore"`` -> :func:`linear` with z-score
    normalisation; ``"dbsf"`` -> :func:`dbsf`.  ``k`` is ignored by the
    score-based methods.

    Raises:
        ValueError: for an unknown method, or whatever the chosen method raises.
    """
    return _assemble(*_totals(method, lists, k, weights, limit), limit)


def fused_order(
    method: FusionMethod,
    lists: Sequence[Sequence[Ranked]],
    *,
    k: float = 60.0,
    weights: Sequence[float] | None = None,
    limit: int | None = None,
) -> list[tuple[str, float]]:
    """``(id, fused score)`` in the order :func:`fuse` returns, the same scores, without its per-list rows.

    For callers that only rank (the searcher keeps each signal's scores and ranks itself):
    building a :class:`Fused` per document was most of fusing a 300-document window.

    Raises:
        ValueError: as :func:`fuse`.
    """
    prepared, totals = _totals(method, lists, k, weights, limit)
    return _order(prepared, totals, limit)


def _totals(
    method: str, lists: Sequence[Sequence[Ranked]], k: float, weights: Sequence[float] | None, limit: int | None
) -> tuple[list[list[_Entry]], dict[str, float]]:
    if method == "rrf":
        return _rrf_totals(lists, k, weights, limit)
    normalization = _METHOD_NORMALIZATION.get(method)
    if normalization is None:
        raise ValueError(f"unknown fusion method {method!r}; expected one of 'rrf', 'linear', 'dbsf', 'zscore'")
    return _linear_totals(lists, weights, normalization, limit)


_METHOD_NORMALIZATION = {"linear": "minmax", "zscore": "zscore", "dbsf": "dbsf"}

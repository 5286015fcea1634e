"""Ranking metrics with graded relevance: pure functions, no I/O, standard library only.

Definitions follow ``trec_eval`` (and therefore pytrec_eval, ir-measures, ranx in
its trec mode), so figures here can be checked against those tools:

* **grade**: an integer per (query, document) from the qrels. ``grade >= 1`` is
  *relevant* (trec_eval's ``relevance_level`` 1); ``0`` or negative is judged not
  relevant; a document the qrels do not mention (an *unknown id*) counts as grade 0.
* ``recall@k`` = relevant documents in the top ``k`` / all relevant documents of the
  query (trec_eval ``recall_k``). With one relevant document per query (Flickr30K /
  MS-COCO text→image) it is the hit rate that open_clip reports as R@k.
* ``mrr@10`` = 1 / rank of the first relevant document within the top 10, else 0
  (trec_eval ``recip_rank`` on the ranking cut at 10).
* ``ndcg@10``: ``DCG = sum_{i<=10} gain_i / log2(i + 1)`` with ``gain = grade`` for
  positive grades (linear gain, as trec_eval; not ``2**grade - 1``), divided by the
  DCG of the ideal ordering of all the query's judged documents (trec_eval ``ndcg_cut_10``).
* ``map`` = mean over queries of average precision over the whole returned ranking
  (the run's depth): ``sum over relevant d retrieved at rank r of precision@r``,
  divided by all relevant documents of the query (trec_eval ``map``).

Edge cases, counted as trec_eval counts them (and reported by :class:`Coverage`):

* an **empty ranking** for a judged query scores 0 on every metric and is counted;
* a query whose qrels hold **no relevant document** (all grades <= 0) scores 0 on
  every metric and is counted (trec_eval's convention) unless
  ``no_relevant="skip"``, which leaves it out of the means;
* a query that was run but has **no qrels at all** is left out of the means (it
  cannot be scored), as trec_eval ignores run topics missing from the qrels;
* a query in the qrels that was **not run** is left out too (trec_eval without
  ``-c``); a runner that ran every query never produces this;
* a document repeated in one ranking counts once, at its first (best) position;
* **ties**: a ranking is a list, scored in the order given. :func:`ranking_from_scores`
  turns ``{doc: score}`` into trec_eval's order (score descending, then document id
  descending) so that scored runs with ties get the same figures as trec_eval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "METRICS",
    "Coverage",
    "Evaluation",
    "Qrels",
    "Run",
    "average_precision",
    "evaluate",
    "mean",
    "ndcg_at_k",
    "ranking_from_scores",
    "recall_at_k",
    "recall_curve",
    "reciprocal_rank",
]

#: query id -> {document id: grade}
Qrels = Mapping[str, Mapping[str, int]]
#: query id -> ranked document ids, best first
Run = Mapping[str, Sequence[str]]

#: the metrics :func:`evaluate` reports, in display order
METRICS: tuple[str, ...] = ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10", "map")


def _dedupe(ranking: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for doc in ranking:
        if doc not in seen:
            seen.add(doc)
            out.append(doc)
    return out


def _relevant(judgments: Mapping[str, int]) -> set[str]:
    return {doc for doc, grade in judgments.items() if grade >= 1}


def recall_at_k(ranking: Sequence[str], judgments: Mapping[str, int], k: int) -> float:
    """Share of the query's relevant documents found in the top ``k`` (0 when it has none)."""
    relevant = _relevant(judgments)
    if not relevant:
        return 0.0
    return len(relevant.intersection(_dedupe(ranking)[:k])) / len(relevant)


def reciprocal_rank(ranking: Sequence[str], judgments: Mapping[str, int], k: int | None = 10) -> float:
    """1 / rank of the first relevant document within the top ``k`` (``None``: the whole ranking), else 0."""
    relevant = _relevant(judgments)
    docs = _dedupe(ranking)
    for position, doc in enumerate(docs if k is None else docs[:k], start=1):
        if doc in relevant:
            return 1.0 / position
    return 0.0


def ndcg_at_k(ranking: Sequence[str], judgments: Mapping[str, int], k: int = 10) -> float:
    """Normalised DCG at ``k`` with linear gain = grade (trec_eval ``ndcg_cut_k``); 0 with no relevant document."""
    ideal_gains = sorted((g for g in judgments.values() if g > 0), reverse=True)[:k]
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(ideal_gains))
    if ideal <= 0:
        return 0.0
    dcg = 0.0
    for i, doc in enumerate(_dedupe(ranking)[:k]):
        grade = judgments.get(doc, 0)
        if grade > 0:
            dcg += grade / math.log2(i + 2)
    return dcg / ideal


def average_precision(ranking: Sequence[str], judgments: Mapping[str, int]) -> float:
    """Average precision over the whole ranking, divided by all relevant documents (0 with none)."""
    relevant = _relevant(judgments)
    if not relevant:
        return 0.0
    hits = 0
    total = 0.0
    for position, doc in enumerate(_dedupe(ranking), start=1):
        if doc in relevant:
            hits += 1
            total += hits / position
    return total / len(relevant)


def ranking_from_scores(scores: Mapping[str, float]) -> list[str]:
    """trec_eval's order for a scored run: score descending, ties by document id descending."""
    return [doc for doc, _ in sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def recall_curve(ranking: Sequence[str], judgments: Mapping[str, int], depth: int) -> list[float]:
    """``[recall@1, recall@2, ..., recall@depth]`` for one query."""
    relevant = _relevant(judgments)
    if not relevant:
        return [0.0] * depth
    found = 0
    curve: list[float] = []
    docs = _dedupe(ranking)
    for position in range(depth):
        if position < len(docs) and docs[position] in relevant:
            found += 1
        curve.append(found / len(relevant))
    return curve


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


@dataclass
class Coverage:
    """How the queries were counted (see the module docstring)."""

    #: queries scored and averaged
    evaluated: int = 0
    #: run queries without any qrels (not scored)
    no_qrels: list[str] = field(default_factory=list)
    #: judged queries that were not run (not scored)
    not_run: list[str] = field(default_factory=list)
    #: judged queries without any relevant document (scored 0 and counted, or skipped)
    no_relevant: list[str] = field(default_factory=list)
    #: scored queries whose ranking was empty (scored 0)
    empty_results: list[str] = field(default_factory=list)
    #: retrieved documents (over all scored queries, top of each ranking to its depth) absent from the qrels
    unjudged_retrieved: int = 0
    #: all retrieved documents over the scored queries
    retrieved: int = 0

    def notes(self) -> list[str]:
        """Human-readable lines for whatever was not plain."""
        lines = []
        if self.no_qrels:
            lines.append(f"{len(self.no_qrels)} queries have no qrels and were not scored (e.g. {self.no_qrels[0]!r})")
        if self.not_run:
            lines.append(f"{len(self.not_run)} judged queries were not run and not scored (e.g. {self.not_run[0]!r})")
        if self.no_relevant:
            lines.append(
                f"{len(self.no_relevant)} queries have no relevant document in the qrels (e.g. {self.no_relevant[0]!r})"
            )
        if self.empty_results:
            lines.append(f"{len(self.empty_results)} queries returned no results and score 0")
        return lines


@dataclass
class Evaluation:
    """Per-query and mean figures of one run."""

    per_query: dict[str, dict[str, float]]
    means: dict[str, float]
    #: mean recall@1..depth (for recall curves)
    recall_curve: list[float]
    coverage: Coverage


def evaluate(
    run: Run,
    qrels: Qrels,
    *,
    depth: int | None = None,
    no_relevant: Literal["zero", "skip"] = "zero",
) -> Evaluation:
    """Score ``run`` against ``qrels``: per-query figures, their means, and the coverage report.

    ``depth`` cuts every ranking (default: none); it is also the length of the recall curve
    (default: the longest ranking, at least 10).
    """
    if no_relevant not in ("zero", "skip"):
        raise ValueError(f"no_relevant must be 'zero' or 'skip', got {no_relevant!r}")
    coverage = Coverage()
    coverage.no_qrels = sorted(q for q in run if q not in qrels)
    coverage.not_run = sorted(q for q in qrels if q not in run)
    rankings = {q: _dedupe(r)[:depth] if depth is not None else _dedupe(r) for q, r in run.items() if q in qrels}
    curve_depth = depth if depth is not None else max([10, *(len(r) for r in rankings.values())])
    per_query: dict[str, dict[str, float]] = {}
    curve_sum = [0.0] * curve_depth
    for query_id in sorted(rankings):
        ranking, judgments = rankings[query_id], qrels[query_id]
        if not _relevant(judgments):
            coverage.no_relevant.append(query_id)
            if no_relevant == "skip":
                continue
        if not ranking:
            coverage.empty_results.append(query_id)
        coverage.retrieved += len(ranking)
        coverage.unjudged_retrieved += sum(1 for doc in ranking if doc not in judgments)
        per_query[query_id] = {
            "recall@1": recall_at_k(ranking, judgments, 1),
            "recall@5": recall_at_k(ranking, judgments, 5),
            "recall@10": recall_at_k(ranking, judgments, 10),
            "mrr@10": reciprocal_rank(ranking, judgments, 10),
            "ndcg@10": ndcg_at_k(ranking, judgments, 10),
            "map": average_precision(ranking, judgments),
        }
        for i, value in enumerate(recall_curve(ranking, judgments, curve_depth)):
            curve_sum[i] += value
    coverage.evaluated = len(per_query)
    means = {name: mean([figures[name] for figures in per_query.values()]) for name in METRICS}
    curve = [value / coverage.evaluated for value in curve_sum] if coverage.evaluated else curve_sum
    return Evaluation(per_query=per_query, means=means, recall_curve=curve, coverage=coverage)
